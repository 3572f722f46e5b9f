"""The engine's run control: divergence handling, ``--resume auto``, callbacks and
``isda list`` / the criteria named in ``--loss`` help."""

from __future__ import annotations

import json

import pytest
import torch

from torch_isda.cli import main
from torch_isda.train import Callback, DivergenceError, TrainConfig, run_comparison, train
from torch_isda.train.checkpoint import load_checkpoint
from torch_isda.train.criteria import CriterionModifier, register_criterion, unregister_criterion

FAST = dict(epochs=3, threads=1)


class _NaNAfter(CriterionModifier):
    """Adds NaN to the loss from training progress ``at`` on (a diverging run)."""

    def __init__(self, at: float = 0.5) -> None:
        super().__init__()
        self.at, self.t = float(at), 0.0

    def set_progress(self, t_over_T: float) -> None:
        self.t = t_over_T

    def forward(self, features, logits, target, model):
        return logits.sum() * float("nan") if self.t >= self.at else None


@pytest.fixture
def nan_after():
    register_criterion("nan_after")(_NaNAfter)
    yield "ce+nan_after(at=0.5)"
    unregister_criterion("nan_after")


def _rows(run):
    return [{k: v for k, v in r.items() if k != "seconds"}
            for r in json.loads((run / "metrics.json").read_text())]


def test_divergence_stops_with_a_clear_error_and_keeps_the_last_checkpoint(tmp_path, nan_after,
                                                                          capsys):
    out = tmp_path / "run"
    with pytest.raises(DivergenceError) as info:
        train(TrainConfig(loss=nan_after, out=str(out), **FAST), quiet=True)
    err = info.value
    # 3 epochs of 20 steps: progress 0.5 is step 30, in epoch 2
    assert (err.epoch, err.step) == (2, 30) and err.value != err.value
    message = str(err)
    assert "at epoch 2, step 30: the training loss became nan" in message and "--lr" in message
    assert "--lambda0" in message and "checkpoint of epoch 1" in message
    assert load_checkpoint(out / "checkpoint.pt")["epoch"] == 1  # the last good one
    assert len(_rows(out)) == 1 and not (out / "result.json").exists()
    # the command exits non-zero with the message
    assert main(["train", "--loss", nan_after, "--epochs", "3", "--threads", "1", "--quiet",
                 "--out", str(tmp_path / "cli")]) != 0
    assert "training diverged" in capsys.readouterr().err


def test_diverging_isda_features_are_reported_as_divergence(tmp_path):
    """With ISDA the estimator sees the NaN features before the loss is formed."""
    with pytest.raises(DivergenceError, match="at epoch 1, step .*: the deep features became"):
        train(TrainConfig(lr=1e4, epochs=2, threads=1, out=str(tmp_path / "run")), quiet=True)


def test_compare_marks_a_diverged_run_failed_and_goes_on(tmp_path, nan_after):
    result = run_comparison(TrainConfig(**FAST), f"ce,{nan_after}", 1, tmp_path, quiet=True)
    assert result.trained == 1 and list(result.failed) == ["ce+nan_after_at=0.5 seed 0"]
    md = (tmp_path / "table.md").read_text()
    assert "failed" in md and "seed 0 failed (diverged)" in md
    assert (tmp_path / "ce" / "seed0" / "result.json").is_file()
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_resume_auto_starts_fresh_then_resumes_exactly(tmp_path):
    straight, auto = tmp_path / "straight", tmp_path / "auto"
    train(TrainConfig(out=str(straight), **FAST), quiet=True)
    argv = ["train", "--out", str(auto), "--epochs", "3", "--threads", "1", "--quiet",
            "--resume", "auto"]
    assert main([*argv, "--stop-after", "1"]) == 0  # no checkpoint yet: a fresh start
    assert len(_rows(auto)) == 1
    torch.manual_seed(7)  # scramble the global RNG between the two "processes"
    assert main(argv) == 0  # a checkpoint: resumed
    assert _rows(auto) == _rows(straight)
    assert main(argv) == 0  # finished: reused
    with pytest.raises(FileNotFoundError, match="--resume auto"):
        train(TrainConfig(out=str(tmp_path / "none"), **FAST), resume=True, quiet=True)


def test_callbacks_get_named_events_in_order(tmp_path):
    class Recorder(Callback):
        def __init__(self):
            self.events = []

        def on_step_start(self, engine, step):
            self.events.append(("start", step))

        def on_step(self, engine, step, features, logits, target):
            self.events.append(("loss", step))

        def on_after_backward(self, engine, step):
            grads = [p.grad for p in engine.task.model.parameters() if p.grad is not None]
            self.events.append(("backward", step, bool(grads)))

        def on_epoch_end(self, engine, epoch, row):
            self.events.append(("epoch", epoch, row["epoch"]))

    rec = Recorder()
    train(TrainConfig(epochs=1, threads=1, out=str(tmp_path / "run")), quiet=True,
          callbacks=[rec])
    assert rec.events[:3] == [("start", 0), ("loss", 0), ("backward", 0, True)]
    assert rec.events[-1] == ("epoch", 1, 1) and len(rec.events) == 3 * 20 + 1


def test_isda_list_and_loss_help_name_the_entries(capsys):
    assert main(["list", "criteria"]) == 0
    out = capsys.readouterr().out
    for name in ("ce", "isda", "lsoftmax", "disturb_label", "dropout"):
        assert f"\n  {name} " in out, name
    assert "[primary loss]" in out and "[modifier]" in out and "options: lambda0=" in out
    for category, name in (("models", "resnet110"), ("datasets", "digits"),
                           ("augmentations", "cutout"), ("presets", "small_cnn"),
                           ("semi", "mean-teacher")):
        assert main(["list", category]) == 0
        assert f"\n  {name} " in capsys.readouterr().out, (category, name)
    with pytest.raises(SystemExit):
        main(["list", "nonsense"])
    from torch_isda.cli import build_parser

    helps = build_parser()._subparsers._group_actions[0].choices
    for command, option in (("train", "--loss"), ("compare", "--losses")):
        action = next(a for a in helps[command]._actions if option in a.option_strings)
        assert "lsoftmax" in action.help and "disturb_label" in action.help
