"""Semi-supervised ``isda train --semi`` / ``isda compare --semi`` (Section 5, Table 6)."""

from __future__ import annotations

import csv
import json
import statistics

import pytest
import torch

from torch_isda.cli import main
from torch_isda.semi import PAPER_TABLE6, SemiBatchSampler, labeled_split
from torch_isda.train import TrainConfig
from torch_isda.train.checkpoint import load_checkpoint
from torch_isda.train import Trainer, resolve_config
from torch_isda.train.tasks.semi.config import method_kwargs

# 5 steps of 32 labeled + 256 unlabeled samples per epoch on the 1,257 digits
FAST = ["--threads", "1", "--quiet", "--labels", "100", "--unlabeled-batch-size", "256",
        "--labeled-batch-size", "32"]


def _rows(run):
    return [{k: v for k, v in r.items() if k != "seconds"}
            for r in json.loads((run / "metrics.json").read_text())]


@pytest.mark.parametrize("method", ["pi", "temporal-ensembling", "mean-teacher", "vat"])
def test_one_epoch_with_isda_writes_metrics_and_estimator_sees_labeled_only(method, tmp_path,
                                                                          capsys):
    out = tmp_path / method
    extra = ["--val-fraction", "0.25"] if method == "pi" else []
    assert main(["train", "--semi", method, "--epochs", "1", "--out", str(out), "--seed", "2",
                 *FAST, *extra]) == 0
    assert "final test error" in capsys.readouterr().out
    for name in ("metrics.csv", "metrics.json", "result.json", "checkpoint.pt", "config.json"):
        assert (out / name).is_file(), name
    (row,) = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= row["test_error"] <= 100.0 and row["lambda"] is not None
    assert row["consistency_loss"] > 0 and row["regularizer"] >= 0 and row["eta1"] == 1.0
    assert (row.get("val_error") is not None) == (method == "pi")
    assert ("student_test_error" in row) == (method == "mean-teacher")
    header = (out / "metrics.csv").read_text().splitlines()[0].split(",")
    assert header[:8] == ["epoch", "train_loss", "train_error", "test_loss", "test_error", "lr",
                          "lambda", "seconds"] and "consistency_loss" in header
    result = json.loads((out / "result.json").read_text())
    assert result["semi"] == method and result["isda"] is True and result["labels"] == 100
    resolved = json.loads((out / "config.json").read_text())["resolved"]["semi"]
    labeled = 70 if method == "pi" else 100  # 25% of the 10 labels per class held out: 3
    assert result["labeled"] == resolved["labeled"] == labeled
    assert resolved["unlabeled_pool"] == 1257 - (30 if method == "pi" else 0)
    steps = resolved["steps_per_epoch"]
    assert steps == -(-resolved["unlabeled_pool"] // 256)

    # the covariance estimator was fed the labeled batches, and only them
    ckpt = load_checkpoint(out / "checkpoint.pt")
    count = ckpt["criterion"]["isda.estimator.count"]
    assert int(count.sum()) == ckpt["semi"]["labeled_seen"] == row["labeled_seen"] == steps * 32
    from torch_isda.data import create_dataset

    labels = create_dataset("digits").train_labels
    split = labeled_split(labels, 100, 10, 2, 0.25 if method == "pi" else 0.0)
    pool = torch.cat([split.labeled, split.unlabeled]).sort().values
    sampler = SemiBatchSampler(split.labeled, pool, 32, 256, seed=2)
    drawn = torch.cat([sampler.next_batch()[0] for _ in range(steps)])
    assert set(drawn.tolist()) <= set(split.labeled.tolist())
    assert torch.equal(count, torch.bincount(labels[drawn], minlength=10))


def test_base_method_alone_has_no_isda_terms(tmp_path):
    out = tmp_path / "vat-ce"
    assert main(["train", "--semi", "vat", "--loss", "ce", "--epochs", "1", "--out", str(out),
                 *FAST]) == 0
    (row,) = json.loads((out / "metrics.json").read_text())
    assert row["lambda"] is None and row["consistency_loss"] == 0.0 and row["eta1"] == 0.0
    assert row["regularizer"] > 0
    ckpt = load_checkpoint(out / "checkpoint.pt")
    assert not any("estimator" in k for k in ckpt["criterion"])
    assert json.loads((out / "result.json").read_text())["isda"] is False


@pytest.mark.parametrize("method,extra", [("temporal-ensembling", []),
                                          ("mean-teacher", []),
                                          ("vat", ["--zca"])])
def test_resume_equals_uninterrupted_run(method, extra, tmp_path):
    a, b = tmp_path / "straight", tmp_path / "resumed"
    args = ["--semi", method, "--epochs", "3", *FAST, *extra]
    assert main(["train", "--out", str(a), *args]) == 0
    assert main(["train", "--out", str(b), *args, "--stop-after", "1"]) == 0
    assert not (b / "result.json").exists() and len(_rows(b)) == 1
    torch.manual_seed(123)  # scramble the global RNG between the two "processes"
    assert main(["train", "--out", str(b), "--resume", "--threads", "1", "--quiet"]) == 0
    assert _rows(a) == _rows(b)
    ca, cb = load_checkpoint(a / "checkpoint.pt"), load_checkpoint(b / "checkpoint.pt")
    for part in ("model", "criterion"):
        for key in ca[part]:
            assert torch.equal(ca[part][key], cb[part][key]), (part, key)
    for key, value in ca["semi"]["method"].items():  # ensemble / teacher
        assert torch.equal(value, cb["semi"]["method"][key]), key
    assert (ca["semi"]["zca"] is not None) == ("--zca" in extra)
    for stream in ("labeled", "unlabeled"):
        sa, sb = ca["semi"]["sampler"][stream], cb["semi"]["sampler"][stream]
        assert sa["pos"] == sb["pos"] and torch.equal(sa["order"], sb["order"])
    for sa, sb in zip(ca["optimizer"]["state"].values(), cb["optimizer"]["state"].values()):
        assert torch.equal(sa["momentum_buffer"], sb["momentum_buffer"])


def test_compare_semi_writes_table6_and_reuses_runs(tmp_path, monkeypatch, capsys):
    out = tmp_path / "cmp"
    argv = ["compare", "--semi", "vat,pi", "--seeds", "2", "--epochs", "1", "--out", str(out),
            *FAST]
    assert main(argv) == 0
    md = (out / "table.md").read_text()
    assert "| Method | without ISDA | with ISDA | Δ (with − without, paired by seed) |" in md
    assert "| VAT |" in md and "| Π-model |" in md and "±" in md
    rows = list(csv.DictReader((out / "table.csv").open()))
    assert [(r["method"], r["loss"]) for r in rows] == [
        ("vat", "ce"), ("vat", "isda"), ("pi", "ce"), ("pi", "isda")]
    for r in rows:
        finals = [json.loads((out / r["method"] / r["loss"] / f"seed{s}" / "result.json")
                             .read_text())["final_error"] for s in (0, 1)]
        assert r["n_seeds"] == "2" and float(r["final_error_mean"]) == pytest.approx(
            sum(finals) / 2, abs=1e-4)
    assert json.loads((out / "vat" / "isda" / "seed1" / "result.json").read_text())["isda"]
    finals = {loss: [json.loads((out / "vat" / loss / f"seed{s}" / "result.json").read_text())
                     ["final_error"] for s in (0, 1)] for loss in ("ce", "isda")}
    diffs = [b - a for a, b in zip(finals["ce"], finals["isda"])]  # paired by seed
    assert f"{statistics.fmean(diffs):+.2f} ± {statistics.stdev(diffs):.2f} |" in md
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    def no_training(self, *args, **kwargs):
        raise AssertionError("a finished run was retrained")

    monkeypatch.setattr(Trainer, "fit", no_training)
    capsys.readouterr()
    assert main(argv) == 0
    assert "| VAT |" in capsys.readouterr().out
    # --isda off: one column
    assert main(["compare", "--semi", "vat", "--isda", "off", "--seeds", "2", "--epochs", "1",
                 "--out", str(out), *FAST]) == 0
    assert "| Method | without ISDA |\n" in (out / "table.md").read_text()


@pytest.mark.parametrize("argv,message", [
    (["train", "--semi", "vat", "--labels", "105"], "multiple of num_classes"),
    (["train", "--semi", "fixmatch"], "unknown semi-supervised method 'fixmatch'"),
    (["compare", "--semi", "vat,fixmatch"], "unknown semi-supervised method 'fixmatch'"),
    (["train", "--labels", "100"], "--labels only apply to semi-supervised training"),
    (["train", "--semi", "vat", "--loss", "isda+dropout(p=0.3)"], "not supported with --semi"),
    (["train", "--semi", "pi", "--semi-kwargs", "epsilon=2"], "unknown option(s) epsilon for pi"),
    (["train", "--semi", "vat", "--augment", "crop"], "--augment does not apply with --semi"),
    (["compare", "--semi", "vat", "--losses", "ce,focal"], "chosen by --isda"),
])
def test_clear_errors(argv, message, tmp_path, capsys):
    assert main([*argv, "--out", str(tmp_path / "run"), "--epochs", "1", "--threads", "1",
                 "--quiet"]) == 2
    assert message in capsys.readouterr().err


def test_resolved_defaults_and_method_options():
    cfg = resolve_config(TrainConfig(semi="mt", out="x"))
    assert (cfg.semi, cfg.labels, cfg.zca, cfg.epochs) == ("mean-teacher", 100, False, 30)
    assert (cfg.unlabeled_batch_size, cfg.labeled_batch_size) == (128, 32)
    kw = method_kwargs(cfg, steps_per_epoch=10)
    # 80-epoch ramp-up scaled to 30/400 of it; EMA decay switches after the ramp-up
    assert kw["rampup_epochs"] == pytest.approx(6.0) and kw["rampup_steps"] == 60
    assert kw["alpha"] == 0.99  # digits default (600-step runs)
    # Appendix B: CNN-13 on CIFAR-10, 400 epochs, batch 128 -> 32 labeled + 128 unlabeled, ZCA
    c10 = resolve_config(TrainConfig(dataset="cifar10", model="cnn13", semi="vat", out="x"))
    assert (c10.preset, c10.epochs, c10.lr, c10.lr_schedule) == ("cnn13", 400, 0.1, "cosine")
    assert (c10.labels, c10.zca, c10.labeled_batch_size, c10.unlabeled_batch_size) == (
        4000, True, 32, 128)
    assert method_kwargs(c10, 391) == {"epsilon": 8.0}
    # SVHN: 500 labels, the count whose Mean Teacher result (4.18 %) Table 6 reports
    svhn = resolve_config(TrainConfig(dataset="svhn", model="cnn13", semi="mt", out="x"))
    assert (svhn.labels, svhn.zca) == (500, False)
    assert PAPER_TABLE6[("mean-teacher", "svhn", 500)][0] == (4.18, 0.27)
    assert not any(key[1] == "svhn" and key[2] != 500 for key in PAPER_TABLE6)
    pi = resolve_config(TrainConfig(dataset="cifar10", model="cnn13", semi="pi", out="x"))
    assert method_kwargs(pi, 391) == {"rampup_epochs": 80.0}
    # --eta2 replaces the peak weight (no M/N scaling); --semi-kwargs win over everything
    kw = method_kwargs(pi.replace(eta2=10.0, semi_kwargs={"rampup_epochs": 5}), 391)
    assert kw == {"rampup_epochs": 5, "max_weight": 10.0, "scale_by_labeled_fraction": False}
    out = resolve_config(TrainConfig(semi="vat")).out
    assert out == "runs/digits-digits_cnn-vat-isda-100labels-seed0"
    with pytest.raises(ValueError, match="--eta2 or max_weight"):
        method_kwargs(pi.replace(eta2=1.0, semi_kwargs={"max_weight": 2.0}), 391)
