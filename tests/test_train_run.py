"""End-to-end ``isda train``: outputs, exact resume, atomic checkpoints, run-directory rules."""

from __future__ import annotations

import json
import os
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from torch_isda.cli import main
from torch_isda.train import TrainConfig, train
from torch_isda.train.checkpoint import atomic_write_text, load_checkpoint, save_checkpoint
from torch_isda.train.criteria import CriterionModifier, register_criterion, unregister_criterion
from torch_isda.train.metrics import final_error, summarize
from torch_isda.train.seeding import get_rng_state, set_rng_state

FAST = ["--threads", "1", "--quiet"]


class _FeatureDropout(CriterionModifier):
    """Uses the global torch RNG, so an exact resume needs its state restored."""

    def __init__(self, p: float = 0.2) -> None:
        super().__init__()
        self.p = p

    def transform_features(self, features):
        return F.dropout(features, self.p, self.training)


@pytest.fixture
def feature_dropout():
    register_criterion("t_fdrop")(_FeatureDropout)
    yield
    unregister_criterion("t_fdrop")


def _metrics(run):
    rows = json.loads((run / "metrics.json").read_text())
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


def test_train_end_to_end_writes_outputs(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--epochs", "2", "--out", str(out), "--seed", "3", *FAST]) == 0
    assert "final test error" in capsys.readouterr().out
    for name in ("metrics.csv", "metrics.json", "result.json", "checkpoint.pt", "config.json"):
        assert (out / name).is_file(), name
    rows = json.loads((out / "metrics.json").read_text())
    assert [r["epoch"] for r in rows] == [1, 2]
    header = (out / "metrics.csv").read_text().splitlines()[0]
    assert header == "epoch,train_loss,train_error,test_loss,test_error,lr,lambda,seconds"
    assert rows[0]["lr"] == 0.05 and 0 < rows[1]["lambda"] < 0.5
    result = json.loads((out / "result.json").read_text())
    # 2 epochs: the final-error window is 1 epoch (at most a tenth of the run, at least 1)
    assert result["final_error"] == pytest.approx(rows[-1]["test_error"])
    assert result["final_error_epochs"] == 1
    assert result["best_error"] == min(r["test_error"] for r in rows)
    saved = json.loads((out / "config.json").read_text())
    assert saved["torch_isda_version"] and saved["config"]["preset"] == "small_cnn"
    assert saved["config"]["epochs"] == 2 and saved["resolved"]["device"] == "cpu"
    ckpt = load_checkpoint(out / "checkpoint.pt")
    assert ckpt["epoch"] == 2 and "isda.estimator.covariance" in ckpt["criterion"]
    assert {"torch", "python", "numpy", "generators"} <= set(ckpt["rng"])
    # finished: not retrained
    mtime = (out / "metrics.json").stat().st_mtime_ns
    assert main(["train", "--epochs", "2", "--out", str(out), "--seed", "3", *FAST]) == 0
    assert (out / "metrics.json").stat().st_mtime_ns == mtime
    # a different config for a finished run is an error unless --force
    assert main(["train", "--epochs", "3", "--out", str(out), *FAST]) == 2
    assert "different configuration" in capsys.readouterr().err


def test_resume_equals_uninterrupted_run(tmp_path, feature_dropout):
    loss = ["--loss", "isda+t_fdrop"]
    a, b = tmp_path / "straight", tmp_path / "resumed"
    assert main(["train", "--epochs", "4", "--out", str(a), *loss, *FAST]) == 0
    assert main(["train", "--epochs", "4", "--out", str(b), *loss, "--stop-after", "2", *FAST]) == 0
    assert not (b / "result.json").exists() and len(_metrics(b)) == 2
    # scramble every global RNG between the two processes' worth of work
    torch.manual_seed(999)
    random.seed(999)
    np.random.seed(999)
    assert main(["train", "--out", str(b), "--resume", *FAST]) == 0  # config from the run dir
    assert _metrics(a) == _metrics(b)
    ca, cb = load_checkpoint(a / "checkpoint.pt"), load_checkpoint(b / "checkpoint.pt")
    for part in ("model", "criterion"):
        assert ca[part].keys() == cb[part].keys()
        for key in ca[part]:
            assert torch.equal(ca[part][key], cb[part][key]), (part, key)
    for sa, sb in zip(ca["optimizer"]["state"].values(), cb["optimizer"]["state"].values()):
        assert torch.equal(sa["momentum_buffer"], sb["momentum_buffer"])
    ra = json.loads((a / "result.json").read_text())
    rb = json.loads((b / "result.json").read_text())
    assert ra["final_error"] == rb["final_error"]


def test_checkpoint_write_failure_keeps_previous(tmp_path, monkeypatch):
    cfg = TrainConfig(epochs=2, out=str(tmp_path), threads=1)
    train(cfg, quiet=True, stop_after=1)
    ckpt = tmp_path / "checkpoint.pt"
    before = ckpt.read_bytes()

    def broken_save(obj, f, *args, **kwargs):
        f.write(b"partial garbage")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        train(cfg, quiet=True, resume=True)
    monkeypatch.undo()
    assert ckpt.read_bytes() == before
    assert load_checkpoint(ckpt)["epoch"] == 1
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]
    # the interrupted run still resumes
    assert train(cfg, quiet=True, resume=True)["status"] == "trained"


def test_atomic_text_and_checkpoint_helpers(tmp_path):
    path = tmp_path / "a.json"
    atomic_write_text(path, "one")
    with pytest.raises(RuntimeError):
        from torch_isda.train.checkpoint import atomic_write

        with atomic_write(path, "w") as f:
            f.write("two")
            raise RuntimeError("boom")
    assert path.read_text() == "one" and os.listdir(tmp_path) == ["a.json"]
    save_checkpoint({"x": torch.arange(3)}, tmp_path / "c.pt")
    assert torch.equal(load_checkpoint(tmp_path / "c.pt")["x"], torch.arange(3))
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")


def test_rng_state_round_trip():
    gen = torch.Generator().manual_seed(5)
    state = get_rng_state({"data": gen})
    draws = (torch.rand(3), random.random(), np.random.rand(), torch.rand(2, generator=gen))
    set_rng_state(state, {"data": gen})
    again = (torch.rand(3), random.random(), np.random.rand(), torch.rand(2, generator=gen))
    assert torch.equal(draws[0], again[0]) and draws[1:3] == again[1:3]
    assert torch.equal(draws[3], again[3])


def test_paper_reporting_rule():
    assert final_error(list(range(20))) == pytest.approx(np.mean(range(10, 20)))
    assert final_error([3.0, 1.0]) == 2.0
    rows = [{"epoch": i + 1, "test_error": e, "seconds": 1.0} for i, e in enumerate([5, 2, 3])]
    s = summarize(rows)
    assert (s["best_error"], s["best_epoch"], s["final_error_epochs"]) == (2, 2, 3)


def test_run_directory_errors(tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["train", "--out", str(out), "--resume", *FAST]) == 2
    assert "cannot resume: no checkpoint.pt" in capsys.readouterr().err
    assert main(["train", "--epochs", "2", "--stop-after", "1", "--out", str(out), *FAST]) == 0
    assert main(["train", "--epochs", "2", "--out", str(out), *FAST]) == 2
    assert "unfinished run" in capsys.readouterr().err
    assert main(["train", "--epochs", "2", "--out", str(out), "--force", *FAST]) == 0
    assert json.loads((out / "result.json").read_text())["epochs_done"] == 2


def test_cifar_archive_and_imagefolder_paths(tmp_path):
    from data_fixtures import make_cifar10_archive, make_imagefolder

    make_cifar10_archive(tmp_path / "cifar", per_batch=4)
    out = tmp_path / "c10"
    assert main(["train", "--dataset", "cifar10", "--data-dir", str(tmp_path / "cifar"),
                 "--model", "resnet20", "--epochs", "1", "--batch-size", "8", "--loss", "ce",
                 "--out", str(out), *FAST]) == 0
    saved = json.loads((out / "config.json").read_text())
    assert saved["resolved"]["augment"] == "crop_flip" and saved["config"]["preset"] == "resnet"
    assert saved["config"]["weight_decay"] == 1e-4 and saved["config"]["milestones"] == [80, 120]

    root = make_imagefolder(tmp_path / "folder", n_train=4)
    out = tmp_path / "folder-run"
    assert main(["train", "--dataset", "imagefolder", "--data-dir", str(root), "--dataset-kwargs",
                 "image_size=16", "--model", "digits_cnn", "--preset", "small_cnn", "--epochs",
                 "2", "--batch-size", "4", "--workers", "0", "--out", str(out), *FAST]) == 0
    rows = json.loads((out / "metrics.json").read_text())
    assert len(rows) == 2 and all(0 <= r["test_error"] <= 100 for r in rows)
    assert json.loads((out / "config.json").read_text())["resolved"]["num_classes"] == 3
