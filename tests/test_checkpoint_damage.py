"""Damaged checkpoints (truncated, bit-flipped, from another configuration) are reported at
load with one clear line; a run keeps its previous checkpoint and ``--resume auto`` falls
back to it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from torch_isda.cli import main
from torch_isda.train.checkpoint import (
    CHECKPOINT_NAME,
    INTEGRITY_KEY,
    KEPT_CHECKPOINTS,
    PREVIOUS_CHECKPOINT_NAME,
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
)

TINY = ["--model-kwargs", "width=4", "--loss", "isda", "--device", "cpu", "--threads", "1",
        "--quiet"]


def _train(out: Path, *extra: str) -> int:
    return main(["train", "--epochs", "3", "--out", str(out), *TINY, *extra])


@pytest.fixture(scope="module")
def two_epochs(tmp_path_factory) -> Path:
    """An unfinished run after 2 of 3 epochs: checkpoint.pt (epoch 2) and checkpoint.prev.pt."""
    out = tmp_path_factory.mktemp("runs") / "run"
    assert _train(out, "--stop-after", "1") == 0
    assert not (out / PREVIOUS_CHECKPOINT_NAME).exists()
    assert _train(out, "--resume", "--stop-after", "1") == 0
    return out


def _copy(run: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(run, dst)
    return dst


def test_a_run_keeps_its_previous_checkpoint(two_epochs):
    assert KEPT_CHECKPOINTS == 2
    assert load_checkpoint(two_epochs / CHECKPOINT_NAME)["epoch"] == 2
    assert load_checkpoint(two_epochs / PREVIOUS_CHECKPOINT_NAME)["epoch"] == 1


def _flip_inside_a_tensor(path: Path) -> None:
    """Flip one bit inside the bytes of the largest weight (not in the zip's structure)."""
    state = torch.load(path, weights_only=True)
    largest = max(state["model"].values(), key=lambda t: t.numel())
    needle = largest.contiguous().view(-1).view(torch.uint8).numpy().tobytes()[:64]
    raw = bytearray(path.read_bytes())
    at = raw.find(needle)
    assert at > 0
    raw[at + 5] ^= 0x10
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("damage", ["truncated", "bit-flipped", "empty", "not-a-checkpoint"])
def test_damaged_checkpoint_is_reported_at_load(tmp_path, damage):
    path = tmp_path / CHECKPOINT_NAME
    save_checkpoint({"epoch": 3, "model": {"w": torch.randn(64, 64)}, "rows": [1.5, "a"]}, path)
    assert load_checkpoint(path)["epoch"] == 3 and INTEGRITY_KEY not in load_checkpoint(path)
    raw = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(raw[: len(raw) // 2])
    elif damage == "bit-flipped":
        _flip_inside_a_tensor(path)
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        torch.save(torch.zeros(3), path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    want = {"truncated": "damaged: it cannot be read", "empty": "damaged: it cannot be read",
            "bit-flipped": "do not match the SHA-256", "not-a-checkpoint": "is not a checkpoint"}
    assert want[damage] in message


def test_explicit_resume_of_a_damaged_checkpoint_is_one_line_naming_the_fallback(
        two_epochs, tmp_path, capsys):
    run = _copy(two_epochs, tmp_path)
    raw = (run / CHECKPOINT_NAME).read_bytes()
    (run / CHECKPOINT_NAME).write_bytes(raw[: len(raw) // 3])
    before = sorted(p.name for p in run.iterdir())
    assert _train(run, "--resume") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is damaged" in err[0] and "--resume auto continues from it" in err[0]
    assert sorted(p.name for p in run.iterdir()) == before
    assert (run / CHECKPOINT_NAME).read_bytes() == raw[: len(raw) // 3]


def test_resume_auto_falls_back_to_the_previous_checkpoint(two_epochs, tmp_path, capsys):
    run = _copy(two_epochs, tmp_path)
    _flip_inside_a_tensor(run / CHECKPOINT_NAME)
    logged = []
    from torch_isda.train import TrainConfig, train

    cfg = TrainConfig.load(run / "config.json").replace(out=str(run))
    result = train(cfg, resume="auto", log=logged.append, epoch_log=False)
    assert result["status"] == "trained" and result["epochs_done"] == 3
    warning = [line for line in logged if line.startswith("warning:")]
    assert len(warning) == 1 and "do not match the SHA-256" in warning[0]
    assert f"resuming from the previous checkpoint '{run / PREVIOUS_CHECKPOINT_NAME}' (epoch 1)" \
        in warning[0]
    resolved = json.loads((run / "config.json").read_text())["resolved"]
    assert resolved["resumed_from_previous_checkpoint"] is True
    # the damaged file was replaced, never kept as the previous checkpoint
    assert load_checkpoint(run / CHECKPOINT_NAME)["epoch"] == 3
    assert load_checkpoint(run / PREVIOUS_CHECKPOINT_NAME)["epoch"] == 2
    metrics = json.loads((run / "metrics.json").read_text())
    assert [row["epoch"] for row in metrics] == [1, 2, 3]


def test_both_checkpoints_damaged_is_one_line(two_epochs, tmp_path, capsys):
    run = _copy(two_epochs, tmp_path)
    for name in (CHECKPOINT_NAME, PREVIOUS_CHECKPOINT_NAME):
        (run / name).write_bytes(b"PK\x03\x04 not really")
    assert _train(run, "--resume", "auto") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "the previous one is damaged too" in err[0]


def test_checkpoint_of_another_configuration_is_reported(two_epochs, tmp_path, capsys):
    run = _copy(two_epochs, tmp_path)
    other = tmp_path / "other"
    assert main(["train", "--epochs", "3", "--stop-after", "1", "--out", str(other),
                 "--model-kwargs", "width=6", "--loss", "isda", "--device", "cpu",
                 "--threads", "1", "--quiet"]) == 0
    shutil.copy(other / CHECKPOINT_NAME, run / CHECKPOINT_NAME)
    assert _train(run, "--resume") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "it was written by another configuration" in err[0], err
    assert str(run / CHECKPOINT_NAME) in err[0]
