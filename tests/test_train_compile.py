"""``isda train --compile``: the whole training step (forward, ISDA, backward, SGD update) as
one ``torch.compile`` graph (train/compiled_step.py).

The graph-break and resume tests compile with the ``aot_eager`` backend (dynamo and
AOTAutograd decide graph breaks and trace the backward; inductor's code generation is slow on
a small CPU); one test runs ``isda train --compile`` with the default backend (inductor).
Digits has 1257 training images = 3 x 419: with ``--batch-size 419`` no batch is dropped, so
the compiled run and the eager run see the same batches.
"""

from __future__ import annotations

import json

import pytest
import torch

from torch_isda.cli import main
from torch_isda.train import TrainConfig, train
from torch_isda.train import compiled_step
from torch_isda.train.checkpoint import load_checkpoint
from torch_isda.train.compiled_step import sgd_update
from torch_isda.train.criteria import CriterionModifier, register_criterion, unregister_criterion

torch._dynamo.config.recompile_limit = 64  # one cache entry per engine of this module

RUN = dict(epochs=2, threads=1, batch_size=419, lr=0.05)


def _rows(run):
    return [{k: v for k, v in r.items() if k != "seconds"}
            for r in json.loads((run / "metrics.json").read_text())]


def _model(run):
    return load_checkpoint(run / "checkpoint.pt")["model"]


@pytest.fixture
def aot_eager(monkeypatch):
    """Compile with ``aot_eager``; count graphs and graph breaks from a fresh dynamo."""
    from torch._dynamo.utils import counters

    monkeypatch.setattr(compiled_step, "COMPILE_BACKEND", "aot_eager")
    torch._dynamo.reset()
    counters.clear()
    return counters


@pytest.mark.parametrize("nesterov", [True, False])
def test_sgd_update_equals_torch_optim_sgd(nesterov):
    """Momentum, Nesterov, weight decay, two groups with their own lr, a tensor lr that moves."""
    g = torch.Generator().manual_seed(0)
    ours = [torch.randn(5, 3, generator=g), torch.randn(4, generator=g), torch.randn(2, 2, generator=g)]
    ref = [p.clone().requires_grad_() for p in ours]
    opt = torch.optim.SGD([{"params": ref[:2]}, {"params": ref[2:], "lr": 0.3, "weight_decay": 0.0}],
                          lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=nesterov)
    momenta = [torch.zeros_like(p) for p in ours]
    lrs = [torch.tensor(0.1), torch.tensor(0.3)]
    for step in range(4):
        grads = [torch.randn(p.shape, generator=g) for p in ours]
        for p, grad in zip(ref, grads):
            p.grad = grad.clone()
        opt.step()
        sgd_update(ours[:2], grads[:2], momenta[:2], lrs[0], momentum=0.9, weight_decay=5e-4,
                   nesterov=nesterov)
        sgd_update(ours[2:], grads[2:], momenta[2:], lrs[1], momentum=0.9, weight_decay=0.0,
                   nesterov=nesterov)
        for a, b in zip(ours, ref):
            torch.testing.assert_close(a, b.detach(), rtol=1e-6, atol=1e-7)
        for group, lr in zip(opt.param_groups, lrs):  # a schedule step
            group["lr"] *= 0.5
            lr.fill_(group["lr"])
    for m, p in zip(momenta, ref):
        torch.testing.assert_close(m, opt.state[p]["momentum_buffer"], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("kind", ["full", "diagonal"])
def test_compiled_step_is_one_graph_and_matches_eager(tmp_path, aot_eager, kind):
    """fullgraph=True over 2 epochs (6 steps, lambda and the cosine lr moving): one graph, no
    graph break, and the run equals the eager one (CPU: present-class path, torch.optim.SGD)."""
    compiled, eager = tmp_path / "compiled", tmp_path / "eager"
    train(TrainConfig(out=str(compiled), compile=True, kind=kind, **RUN), quiet=True)
    assert not aot_eager["graph_break"], dict(aot_eager["graph_break"])
    assert aot_eager["stats"]["unique_graphs"] == 1, dict(aot_eager["stats"])
    train(TrainConfig(out=str(eager), kind=kind, **RUN), quiet=True)
    a, b = _rows(compiled), _rows(eager)
    assert len(a) == len(b) == 2 and a[0]["lr"] != a[1]["lr"] and a[1]["lambda"] > 0
    for ra, rb in zip(a, b):
        for key in ("train_loss", "test_loss", "lr", "lambda"):
            assert ra[key] == pytest.approx(rb[key], rel=1e-4), key
        assert abs(ra["test_error"] - rb["test_error"]) <= 100 / 540 + 1e-9  # one image at most
    for name, value in _model(eager).items():
        torch.testing.assert_close(_model(compiled)[name], value, rtol=1e-3, atol=1e-4, msg=name)
    config = json.loads((compiled / "config.json").read_text())
    assert config["config"]["compile"] is True


@pytest.mark.parametrize("kind", ["lowrank", "shared", "identity"])
def test_compiled_step_of_the_other_kinds_is_one_graph(tmp_path, aot_eager, kind):
    result = train(TrainConfig(out=str(tmp_path / "run"), compile=True, kind=kind, epochs=1,
                               threads=1, batch_size=419), quiet=True)
    assert result["status"] == "trained"
    assert not aot_eager["graph_break"], dict(aot_eager["graph_break"])
    assert aot_eager["stats"]["unique_graphs"] == 1, dict(aot_eager["stats"])


class _BadLabel(CriterionModifier):
    """Puts a label out of range into the first sample of every batch."""

    def transform_target(self, target):
        return torch.cat([torch.full_like(target[:1], 10), target[1:]])


def test_a_rejected_batch_raises_at_the_end_of_the_epoch(tmp_path, aot_eager):
    """Under --compile the ISDA input checks stay on the device: the engine raises the first
    rejected batch's error, naming its step, when the epoch ends (no checkpoint written)."""
    register_criterion("bad_label")(_BadLabel)
    try:
        with pytest.raises(ValueError, match=r"step 1: labels must lie in \[0, 10\)"):
            train(TrainConfig(out=str(tmp_path / "run"), loss="isda+bad_label", compile=True,
                              kind="diagonal", epochs=1, threads=1, batch_size=419), quiet=True)
    finally:
        unregister_criterion("bad_label")
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


class _HostRead(CriterionModifier):
    """Reads a device value on the host in its loss term (a graph break)."""

    def forward(self, features, logits, target, model):
        return logits.sum() * 0.0 if bool((logits > 1e9).any()) else None


def test_a_step_that_breaks_the_graph_is_refused_in_one_line(tmp_path, aot_eager):
    register_criterion("host_read")(_HostRead)
    try:
        with pytest.raises(ValueError, match=r"^--compile: the training step does not compile "
                                             r"as one graph \(.+\); run without --compile$"):
            train(TrainConfig(out=str(tmp_path / "run"), loss="isda+host_read", compile=True,
                              kind="diagonal", epochs=1, threads=1, batch_size=419), quiet=True)
    finally:
        unregister_criterion("host_read")


@pytest.mark.parametrize("loss, name", [("metasaug", "metasaug's meta step"),
                                        ("ldam_drw+dropout", None),
                                        ("risda+dropout", "risda's Stage II")])
def test_criteria_whose_step_cannot_compile_are_refused_before_training(tmp_path, aot_eager,
                                                                        loss, name):
    """MetaSAug and RISDA (also inside a composite) are refused in one line before the first
    step; before, their later phase failed after hours, with a traceback."""
    cfg = TrainConfig(out=str(tmp_path / "run"), loss=loss, compile=True, epochs=1, threads=1,
                      batch_size=419, dataset_kwargs={"imbalance": 10, "val_per_class": 5})
    if name is None:  # the long-tailed losses of the logits compile
        assert train(cfg, quiet=True)["status"] == "trained"
        return
    with pytest.raises(ValueError, match=rf"^--compile: {name} .* does not fit one compiled "
                                         r"graph; run without --compile$"):
        train(cfg, quiet=True)
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_compiled_run_resumes_exactly(tmp_path, aot_eager):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    cfg = dict(compile=True, kind="diagonal", **RUN)
    train(TrainConfig(out=str(straight), **cfg), quiet=True)
    stopped = train(TrainConfig(out=str(resumed), **cfg), quiet=True, stop_after=1)
    assert stopped["status"] == "stopped"
    torch.manual_seed(3)  # scramble the global RNG between the two "processes"
    train(TrainConfig(out=str(resumed), **cfg), quiet=True, resume=True)
    assert _rows(resumed) == _rows(straight)
    for name, value in _model(straight).items():
        assert torch.equal(_model(resumed)[name], value), name
    assert not aot_eager["graph_break"]


def test_a_full_compile_cache_is_reset_with_a_note_and_the_run_trains(tmp_path, aot_eager):
    """More configurations in one process (``isda compare``) than dynamo's recompile limit:
    without the reset the third run's first step fails (``FailOnRecompileLimitHit``)."""
    notes: list[str] = []
    runs = {}
    with torch._dynamo.config.patch(recompile_limit=2):
        for loss in ("ce", "isda(kind=diagonal)", "isda(kind=diagonal,lambda0=0.25)"):
            runs[loss] = train(TrainConfig(out=str(tmp_path / loss), loss=loss, compile=True,
                                           epochs=1, threads=1, batch_size=419),
                               log=notes.append, epoch_log=False)
        assert all(r["status"] == "trained" for r in runs.values())
        resets = [n for n in notes if "dynamo's caches were reset" in n]
        assert len(resets) == 1 and "for 2 other configurations" in resets[0]
        # the same configuration again reuses its entry: no further reset
        train(TrainConfig(out=str(tmp_path / "again"), loss="isda(kind=diagonal,lambda0=0.25)",
                          compile=True, epochs=1, threads=1, batch_size=419),
              log=notes.append, epoch_log=False)
    assert len([n for n in notes if "dynamo's caches were reset" in n]) == 1


def test_compile_drops_the_last_incomplete_batch(tmp_path, aot_eager):
    """Batches of 64: 19 full ones and 41 images dropped (one batch shape, one graph)."""
    result = train(TrainConfig(out=str(tmp_path / "run"), compile=True, kind="diagonal",
                               epochs=1, threads=1, batch_size=64), quiet=True)
    assert result["status"] == "trained" and aot_eager["stats"]["unique_graphs"] == 1


def test_compile_options_that_cannot_work_are_refused_in_one_line(tmp_path, capsys):
    cases = ((["--cuda-graphs"], "--cuda-graphs captures the compiled training step: add --compile"),
             (["--compile", "--cuda-graphs"], "--cuda-graphs needs a CUDA device; this run is on cpu"),
             (["--compile", "--amp", "fp16"], "--compile does not support --amp fp16"))
    for extra, message in cases:
        out = tmp_path / "x"
        assert main(["train", "--device", "cpu", "--epochs", "1", "--quiet", "--out", str(out),
                     *extra]) != 0
        err = capsys.readouterr().err
        errors = [line for line in err.splitlines() if not line.startswith("note:")]
        assert message in err and len(errors) == 1, err  # notes (e.g. fp16 on a CPU) aside
        assert not out.exists()


def test_isda_train_compile_with_inductor_matches_eager(tmp_path, capsys):
    """The command as a user runs it (default backend: inductor), one epoch of 3 steps."""
    torch._dynamo.reset()
    argv = ["train", "--device", "cpu", "--epochs", "1", "--batch-size", "419", "--lr", "0.05",
            "--kind", "diagonal", "--threads", "1"]
    assert main([*argv, "--compile", "--out", str(tmp_path / "compiled")]) == 0
    printed = capsys.readouterr().out
    assert "ISDA takes the static all-class path on cpu" in printed
    assert main([*argv, "--quiet", "--out", str(tmp_path / "eager")]) == 0
    (a,), (b,) = _rows(tmp_path / "compiled"), _rows(tmp_path / "eager")
    for key in ("train_loss", "test_loss"):
        assert a[key] == pytest.approx(b[key], rel=1e-4), key
    assert abs(a["test_error"] - b["test_error"]) <= 100 / 540 + 1e-9


def test_a_compiled_engine_step_reads_nothing_back(aot_eager, tmp_path):
    """No host synchronization in a step of the engine under --compile (the eager glue:
    batch, progress, lr tensors; the graph itself cannot hold one with fullgraph=True),
    counted at the Python level as tests/test_syncs.py does."""
    import os
    import sys

    from torch_isda.train.engine import Engine
    from torch_isda.train.resolve import resolve_config

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks"))
    from _syncs import count_syncs

    counts = {}
    for compile in (True, False):
        engine = Engine(resolve_config(TrainConfig(out=str(tmp_path / "run"), compile=compile,
                                                   kind="full", **RUN)), quiet=True)
        engine.build()
        engine.emit("on_epoch_start", 0)
        first, second, _ = list(engine.task.train_batches)
        engine._step(first, 0, 0.1)
        engine.scheduler.step()  # the lr tensor is refreshed in the counted step
        counts[compile] = count_syncs(lambda: engine._step(second, 1, 0.2)).total
        lr = engine.optimizer.param_groups[0]["lr"]
        assert lr < RUN["lr"]
        if compile:
            assert float(engine.compiled_step.lrs[0]) == pytest.approx(lr)
    assert counts == {True: 0, False: 1}  # eager: the CPU route's one read of the class set
