"""The GAN training loop shared by the WGAN-GP and the class-conditional GANs
(torch_isda.visualize.adversarial_loop): named steps, periodic samples and checkpoints, and
an interrupted run that resumes exactly as an uninterrupted one."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

pytest.importorskip("matplotlib")

from torch_isda.visualize.adversarial_loop import LOG_NAME, AdversarialLoop  # noqa: E402
from torch_isda.visualize.conditional_gan import (  # noqa: E402
    ConditionalGANLoop,
    load_conditional_checkpoint,
    train_conditional_gan,
)
from torch_isda.visualize.gan import WGANGPLoop, load_gan_checkpoint, train_gan  # noqa: E402


def _tiny_images(n: int = 40) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, 1, 8, 8), dtype=torch.uint8, generator=g)


def _without_elapsed(value):
    """A checkpoint or log record with the wall-clock fields dropped."""
    if isinstance(value, dict):
        return {k: _without_elapsed(v) for k, v in value.items() if k != "elapsed_s"}
    if isinstance(value, list):
        return [_without_elapsed(v) for v in value]
    return value


def _assert_same_state(a, b, path="state"):
    """Two checkpoints hold the same entries: tensors exactly equal (dtype included)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype, path
        assert torch.equal(a, b), path
    elif isinstance(a, dict):
        assert list(a) == list(b), path
        for key in a:
            _assert_same_state(a[key], b[key], f"{path}/{key}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same_state(x, y, f"{path}[{i}]")
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def _log_lines(out: Path) -> list[dict]:
    return [_without_elapsed(json.loads(line)) for line in (out / LOG_NAME).read_text().splitlines()]


def _interrupt_at(monkeypatch, loop_class, iteration: int) -> None:
    """Make ``loop_class.train_step`` raise KeyboardInterrupt when it reaches ``iteration``."""
    original = loop_class.train_step

    def step(self, it):
        if it == iteration:
            raise KeyboardInterrupt
        return original(self, it)

    monkeypatch.setattr(loop_class, "train_step", step)


def test_interrupted_wgan_gp_resumes_as_an_uninterrupted_run(tmp_path, monkeypatch):
    kw = dict(batch_size=8, z_dim=8, dim=16, seed=5, progress=False, lr_decay=True,
              log_every=1, sample_every=2, checkpoint_every=2)
    data = _tiny_images()
    train_gan(data, tmp_path / "straight", iterations=6, **kw)
    _interrupt_at(monkeypatch, WGANGPLoop, 3)  # after 3 iterations; the last checkpoint is at 2
    with pytest.raises(KeyboardInterrupt):
        train_gan(data, tmp_path / "resumed", iterations=6, **kw)
    assert load_gan_checkpoint(tmp_path / "resumed")["iteration"] == 2
    assert [r["iteration"] for r in _log_lines(tmp_path / "resumed")] == [1, 2, 3]
    monkeypatch.undo()
    train_gan(data, tmp_path / "resumed", iterations=6, **kw)

    straight = load_gan_checkpoint(tmp_path / "straight")
    resumed = load_gan_checkpoint(tmp_path / "resumed")
    assert resumed["iteration"] == 6
    _assert_same_state(_without_elapsed(straight), _without_elapsed(resumed))
    # the log holds every iteration once (not iteration 3 twice), with the same losses
    assert _log_lines(tmp_path / "resumed") == _log_lines(tmp_path / "straight")
    assert [r["iteration"] for r in _log_lines(tmp_path / "resumed")] == [1, 2, 3, 4, 5, 6]
    assert (tmp_path / "resumed" / "samples.png").read_bytes() == \
        (tmp_path / "straight" / "samples.png").read_bytes()


def test_interrupted_conditional_gan_resumes_as_an_uninterrupted_run(tmp_path, monkeypatch):
    from torch_isda.data import create_dataset

    data = create_dataset("digits")
    kw = dict(iterations=5, batch_size=8, z_dim=8, dim=16, seed=2, progress=False, log_every=1,
              checkpoint_every=2)
    train_conditional_gan(data, tmp_path / "straight", "infogan", **kw)
    _interrupt_at(monkeypatch, ConditionalGANLoop, 3)
    with pytest.raises(KeyboardInterrupt):
        train_conditional_gan(data, tmp_path / "resumed", "infogan", **kw)
    assert load_conditional_checkpoint(tmp_path / "resumed")["iteration"] == 2
    monkeypatch.undo()
    train_conditional_gan(data, tmp_path / "resumed", "infogan", **kw)

    straight = load_conditional_checkpoint(tmp_path / "straight")
    resumed = load_conditional_checkpoint(tmp_path / "resumed")
    assert resumed["iteration"] == 5
    _assert_same_state(_without_elapsed(straight), _without_elapsed(resumed))
    assert _log_lines(tmp_path / "resumed") == _log_lines(tmp_path / "straight")
    assert (tmp_path / "resumed" / "samples.png").read_bytes() == \
        (tmp_path / "straight" / "samples.png").read_bytes()


class _CountingLoop(AdversarialLoop):
    """A loop whose step is a counter: records when each named step runs."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.events: list[tuple[str, int]] = []
        self.value = torch.zeros(())

    def train_step(self, iteration):
        self.events.append(("step", iteration))
        self.value = self.value + 1
        return {"loss_d": self.value * 2, "loss_g": -self.value}

    def checkpoint_state(self, iteration):
        self.events.append(("checkpoint", iteration))
        return {"iteration": iteration, "value": self.value, "history": self.history}

    def write_samples(self, iteration):
        self.events.append(("samples", iteration))


def test_loop_runs_the_named_steps_on_schedule(tmp_path, capsys):
    loop = _CountingLoop(out=tmp_path, checkpoint_path=tmp_path / "ck.pt", start=0, iterations=5,
                         history=[], log_every=2, sample_every=2, checkpoint_every=3)
    assert loop.pending and loop.run() is True
    steps = [("step", i) for i in range(5)]
    assert [e for e in loop.events if e[0] != "step"] == [
        ("samples", 2), ("checkpoint", 3), ("samples", 4), ("checkpoint", 5)]
    assert [e for e in loop.events if e[0] == "step"] == steps
    # logged at every log_every-th iteration and the last one, losses read as floats
    assert [_without_elapsed(r) for r in loop.history] == [
        {"iteration": 2, "loss_d": 4.0, "loss_g": -2.0},
        {"iteration": 4, "loss_d": 8.0, "loss_g": -4.0},
        {"iteration": 5, "loss_d": 10.0, "loss_g": -5.0}]
    assert _log_lines(tmp_path) == [_without_elapsed(r) for r in loop.history]
    assert capsys.readouterr().err.splitlines()[-1] == "[gan] it 5/5  loss_d 10.0000  loss_g -5.0000"
    saved = torch.load(tmp_path / "ck.pt", weights_only=True)
    assert saved["iteration"] == 5 and float(saved["value"]) == 5.0
    assert sorted(os.listdir(tmp_path)) == ["ck.pt", LOG_NAME]  # no temporary files left
    # a finished run that is saved trains nothing and writes nothing
    again = _CountingLoop(out=tmp_path, checkpoint_path=tmp_path / "ck.pt", start=5,
                          iterations=5, history=loop.history, log_every=2, progress=False)
    assert not again.pending and again.run() is False and again.events == []


def test_gan_checkpoint_gets_the_umask_mode(tmp_path):
    old = os.umask(0o027)
    try:
        train_gan(_tiny_images(), tmp_path, iterations=1, batch_size=4, z_dim=8, dim=8,
                  progress=False, sample_every=0)
    finally:
        os.umask(old)
    assert (tmp_path / "gan.pt").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "samples.png").stat().st_mode & 0o777 == 0o640
