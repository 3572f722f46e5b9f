"""Host synchronizations per training step, counted at the Python level (benchmarks/_syncs.py).

Targets: on the default's accelerator route (the static path, forced here with
``static_shapes=True``) none in every kind, validation on (the checks stay on the device);
on its CPU route (present classes) at most one per step in every kind (the class set and the
value checks come back in one transfer); none for the diagonal, shared and identity kinds
with ``validate=False``, nor for any kind with ``validate=False, static_shapes=True``. The
low-rank update's ``torch.linalg.eigh`` is counted apart (``linalg``): on CUDA it reads its
error flags back.
"""

import os
import sys

import pytest
import torch
from torch import nn

import torch_isda
from torch_isda import ISDALoss, SegmentationISDALoss
from torch_isda.layouts import KINDS
from torch_isda.semi.loss import SemiISDALoss

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks"))
from _syncs import count_syncs  # noqa: E402

MODES = {
    "default": ({}, {k: 1 for k in KINDS}),  # the CPU route of static_shapes="auto"
    "accelerator route": ({"static_shapes": True}, {k: 0 for k in KINDS}),
    "validate=False": ({"validate": False}, {"full": 1, "lowrank": 1, "diagonal": 0, "shared": 0, "identity": 0}),
    "static": ({"validate": False, "static_shapes": True}, {k: 0 for k in KINDS}),
}


def _batch(N=24, A=6, C=5, ignored=0, g=None):
    x = torch.randn(N, A, generator=g)
    y = torch.randint(0, C, (N,), generator=g)
    y[:ignored] = -100
    return x, y


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("kind", KINDS)
def test_isda_loss_step(kind, mode):
    opts, target = MODES[mode]
    g = torch.Generator().manual_seed(0)
    crit = ISDALoss(6, 5, 0.5, kind, constant_lambda=True, rank=3, **opts)
    W = torch.randn(5, 6, requires_grad=True)
    for ignored in (0, 3):  # ignore_index is handled by masks, at no extra synchronization
        x, y = _batch(ignored=ignored, g=g)

        def step():
            crit(x, x @ W.T, y, W).backward()

        step()
        counter = count_syncs(step)
        assert counter.total == target[kind], dict(counter.counts)
        assert counter.counts.get("linalg", 0) == (1 if kind == "lowrank" else 0)


def test_auto_takes_the_static_route_on_an_accelerator_and_the_present_one_on_the_cpu():
    from torch_isda.layouts import AUTO_STATIC_MAX_ELEMENTS, get_layout

    for kind in KINDS:
        layout = get_layout(kind)
        assert layout.static_path(True, "auto", "cuda", 100, 640)  # CIFAR shapes
        assert not layout.static_path(True, "auto", "cpu", 100, 640)
        assert layout.static_path(False, "auto", "cpu", 100, 640) == layout.cheap_static_update
    big = (1000, 2048)  # ImageNet: C A^2 = 4.2e9 > AUTO_STATIC_MAX_ELEMENTS
    assert 1000 * 2048**2 > AUTO_STATIC_MAX_ELEMENTS
    assert not get_layout("full").static_path(True, "auto", "cuda", *big)
    assert get_layout("diagonal").static_path(True, "auto", "cuda", *big)
    pixels = 8 * 128 * 256  # a segmentation batch: the C x N x A static block would take 10 GB
    assert not get_layout("full").static_path(True, "auto", "cuda", 19, 512, pixels)
    assert get_layout("full").static_path(True, "auto", "cuda", 100, 640, 128)
    assert get_layout("diagonal").static_path(True, "auto", "cuda", 19, 512, pixels)
    assert ISDALoss(6, 5).static_shapes == "auto" and not ISDALoss(6, 5).static_path  # CPU statistics
    with pytest.raises(ValueError, match="static_shapes must be True, False or 'auto'"):
        ISDALoss(6, 5, static_shapes="always")


def test_old_code_paths_would_be_counted():
    """The counter sees what the old implementation did (bool(), unique, boolean masks)."""
    y = torch.tensor([0, 1, -100])
    counter = count_syncs(lambda: (bool((y != -100).all()), torch.unique(y), y[y != -100], y.tolist(), int(y[0])))
    assert dict(counter.counts) == {"bool()": 1, "unique": 1, "boolean mask": 1, "tolist()": 1, "int()": 1}


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("kind", ["diagonal", "full", "lowrank"])
def test_segmentation_step(kind, mode):
    opts, target = MODES[mode]
    seg = SegmentationISDALoss(4, 3, lambda0=1.0, kind=kind, constant_lambda=True, rank=2, **opts)
    conv = nn.Conv2d(4, 3, 1)
    f = torch.randn(2, 4, 5, 5)
    t = torch.randint(0, 3, (2, 10, 10))
    t[:, :2] = 255

    def step():
        seg(f, conv(f), t, conv.weight).backward()

    step()
    assert count_syncs(step).total == target[kind]


@pytest.mark.parametrize("mode", list(MODES))
def test_attach_step(mode):
    opts, target = MODES[mode]
    model = nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 4))
    crit = torch_isda.attach(model, 0.5, "diagonal", constant_lambda=True, **opts)
    x, y = torch.randn(8, 5), torch.randint(0, 4, (8,))

    def step():
        crit(model(x), y).backward()

    step()
    assert count_syncs(step).total == target["diagonal"]


@pytest.mark.parametrize("kind", ["diagonal", "full"])
def test_semi_step(kind):
    """Supervised term: as ISDALoss; the consistency term finds its pseudo-labels' classes
    (one more transfer) unless static_shapes=True."""
    A, C = 5, 4
    W = torch.randn(C, A, requires_grad=True)
    x, y = torch.randn(8, A), torch.arange(8) % C
    zu, pu = torch.randn(6, C, requires_grad=True), torch.softmax(torch.randn(6, C), 1)
    for opts, expected in (({}, 2), ({"validate": False, "static_shapes": True}, 0)):
        crit = SemiISDALoss(A, C, kind=kind, constant_lambda=True, **opts)

        def step():
            crit(x, x @ W.T, y, W, zu, pu, mask=torch.ones(6, dtype=torch.bool)).loss.backward()

        step()
        assert count_syncs(step).total == expected


@pytest.mark.parametrize("opts", [{"validate": False, "static_shapes": True}, {"static_shapes": True}])
@pytest.mark.parametrize("kind", ["full", "diagonal"])
def test_distributed_static_path_reads_nothing_back_with_ignored_labels(kind, opts, monkeypatch):
    """Issue 24 item 13: under DDP the static path sends every row (ignored ones as label -1)
    instead of counting the valid rows on the host. The collectives are stubbed out (one
    process); only the estimator's own reads are counted, and the validating route's
    per-step read of its record (all ranks raise at the same step) is the one expected."""
    from torch_isda import distributed as isda_dist

    monkeypatch.setattr(isda_dist, "is_distributed", lambda: True)
    monkeypatch.setattr(isda_dist, "all_gather_batch", lambda features, labels, problems: (features, labels))
    monkeypatch.setattr(isda_dist, "any_rank", lambda flags: flags)
    crit = ISDALoss(6, 5, 0.5, kind, constant_lambda=True, **opts)
    W = torch.randn(5, 6, requires_grad=True)
    x, y = _batch(ignored=3, g=torch.Generator().manual_seed(0))

    def step():
        crit(x, x @ W.T, y, W).backward()

    step()
    counter = count_syncs(step)
    assert counter.total == (1 if opts.get("validate", True) else 0), dict(counter.counts)
    assert int(crit.estimator.count.sum()) == 2 * (24 - 3)
