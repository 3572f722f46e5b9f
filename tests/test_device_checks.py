"""Device-side checks of the default's accelerator route (torch_isda.checks).

A bad batch (labels out of range, NaN/Inf features) on the static path with validation is
masked out on the device: the statistics stay those of the step before; the error is
raised, naming the failing step, at the next training call (at once on the CPU, where the
record is host memory), at ``check()`` or at ``state_dict()``. Wrong shapes raise at once.
"""

import os
import re
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from torch_isda import ISDALoss
from torch_isda.layouts import KINDS

from test_distributed import free_port, init_gloo

C, A = 5, 6


def _crit(kind, **opts):
    opts.setdefault("static_shapes", True)  # the accelerator route of static_shapes="auto"
    opts.setdefault("constant_lambda", True)
    return ISDALoss(A, C, 0.5, kind, rank=3, dtype=torch.float64, **opts)


def _batch(g, N=12):
    x = torch.randn(N, A, generator=g, dtype=torch.float64)
    y = torch.randint(0, C, (N,), generator=g)
    y[0] = -100
    return x, y


def _stats(crit):
    return {k: v.clone() for k, v in crit.estimator.named_buffers() if not k.startswith("checks.")}


def _same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


def _step(crit, W, x, y):
    crit(x, x @ W.T, y, W).backward()


def _spoil(x, y, how):
    x, y = x.clone(), y.clone()
    if how == "label":
        y[3] = C  # out of range
    elif how == "negative label":
        y[3] = -1
    elif how == "nan":
        x[4, 2] = float("nan")
    else:
        x[5, 0] = float("inf")
    return x, y


BAD = {"label": "labels must lie in [0, 5)", "negative label": "labels must lie in [0, 5)",
       "nan": "NaN or Inf", "inf": "NaN or Inf"}


@pytest.mark.parametrize("how", list(BAD))
@pytest.mark.parametrize("kind", KINDS)
def test_bad_batch_is_masked_and_raised_at_the_next_step_with_its_number(kind, how):
    g = torch.Generator().manual_seed(0)
    crit = _crit(kind)
    W = torch.randn(C, A, dtype=torch.float64, requires_grad=True)
    for _ in range(2):
        _step(crit, W, *_batch(g))
    before = _stats(crit)
    _step(crit, W, *_spoil(*_batch(g), how))  # step 3: deferred, no error yet, loss finite
    assert _same(before, _stats(crit)), "the rejected batch changed the statistics"
    with pytest.raises(ValueError, match=rf"step 3: .*{re.escape(BAD[how])}.*statistics are those from before step 3"):
        _step(crit, W, *_batch(g))  # step 4 raises before touching anything
    assert _same(before, _stats(crit))
    _step(crit, W, *_batch(g))  # raised once: later good batches are folded in again
    assert not _same(before, _stats(crit))


def test_batches_after_a_rejected_one_are_held_until_the_error_is_raised():
    g = torch.Generator().manual_seed(1)
    crit = _crit("full")
    W = torch.randn(C, A, dtype=torch.float64, requires_grad=True)
    _step(crit, W, *_batch(g))
    before = _stats(crit)
    _step(crit, W, *_spoil(*_batch(g), "label"))  # step 2 fails
    torch.testing.assert_close(crit.estimator.checks.record, torch.tensor([True, False]))
    with pytest.raises(ValueError, match=r"step 2: labels must lie in"):
        crit.check()
    assert _same(before, _stats(crit))
    crit.check()  # raised once
    _step(crit, W, *_spoil(*_batch(g), "nan"))
    with pytest.raises(ValueError, match="step 3: features contain NaN or Inf"):
        crit.state_dict()  # a checkpoint is never written over a pending failure
    crit.state_dict()


def test_the_loss_of_a_rejected_batch_is_finite_and_ignores_the_bad_labels():
    g = torch.Generator().manual_seed(2)
    crit = _crit("diagonal")
    W = torch.randn(C, A, dtype=torch.float64, requires_grad=True)
    x, y = _spoil(*_batch(g), "label")
    loss = crit(x, x @ W.T, y, W)
    keep = (y >= 0) & (y < C)
    plain = torch.nn.functional.cross_entropy(x[keep] @ W.T, y[keep])  # failed step: no augmentation
    torch.testing.assert_close(loss, plain)
    with pytest.raises(ValueError, match="step 1"):
        crit.check()


@pytest.mark.parametrize("kind", ["full", "diagonal"])
def test_wrong_shapes_raise_at_once_on_the_static_route(kind):
    g = torch.Generator().manual_seed(3)
    crit = _crit(kind)
    W = torch.randn(C, A, dtype=torch.float64, requires_grad=True)
    _step(crit, W, *_batch(g))
    before = _stats(crit)
    x, y = _batch(g)
    with pytest.raises(ValueError, match=r"features must be N x A = \(12, 6\)"):
        crit(x[:, :4], x @ W.T, y, W)
    with pytest.raises(ValueError, match="target must be a 1-D tensor of N=12"):
        crit(x, x @ W.T, y[:5], W)
    with pytest.raises(ValueError, match="target must hold integer class indices"):
        crit(x, x @ W.T, y.double(), W)
    assert _same(before, _stats(crit))
    crit.check()  # nothing was recorded


@pytest.mark.parametrize("kind", ["full", "diagonal"])
def test_cpu_route_of_the_default_raises_at_once(kind):
    g = torch.Generator().manual_seed(4)
    crit = _crit(kind, static_shapes="auto")
    assert not crit.static_path
    W = torch.randn(C, A, dtype=torch.float64, requires_grad=True)
    _step(crit, W, *_batch(g))
    before = _stats(crit)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 5\) or equal ignore_index=-100; got values in"):
        _step(crit, W, *_spoil(*_batch(g), "label"))
    assert _same(before, _stats(crit))


# --------------------------------------------------------------------------- two ranks


def _worker(rank, world, port, outdir):
    init_gloo(rank, world, port)
    try:
        out = {}
        for kind in ("full", "diagonal"):
            g = torch.Generator().manual_seed(10 + rank)
            crit = _crit(kind)
            W = torch.randn(C, A, dtype=torch.float64, generator=torch.Generator().manual_seed(0),
                            requires_grad=True)
            for _ in range(2):
                _step(crit, W, *_batch(g, N=8 + rank))
            before = _stats(crit)
            x, y = _batch(g, N=8 + rank)
            if rank == 1:
                x, y = _spoil(x, y, "label")
            _step(crit, W, x, y)  # step 3: rejected on every rank
            after_bad = _stats(crit)
            try:
                _step(crit, W, *_batch(g, N=8 + rank))
                raised = ""
            except ValueError as err:
                raised = str(err)
            out[kind] = {"before": before, "after_bad": after_bad, "final": _stats(crit), "raised": raised}
        torch.save(out, os.path.join(outdir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_two_ranks_both_raise_and_keep_identical_statistics():
    with tempfile.TemporaryDirectory() as outdir:
        mp.start_processes(_worker, args=(2, free_port(), outdir), nprocs=2, join=True, start_method="spawn")
        r0, r1 = (torch.load(os.path.join(outdir, f"rank{r}.pt")) for r in (0, 1))
    for kind in ("full", "diagonal"):
        for r in (r0, r1):
            assert "step 3: labels must lie in [0, 5)" in r[kind]["raised"], r[kind]["raised"]
            assert _same(r[kind]["before"], r[kind]["after_bad"])
            assert _same(r[kind]["before"], r[kind]["final"])
        assert _same(r0[kind]["final"], r1[kind]["final"])
        assert int(r0[kind]["final"]["count"].sum()) == 2 * (8 + 9 - 2)  # two good global steps
