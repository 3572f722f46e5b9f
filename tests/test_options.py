"""One ISDAOptions object, checked once, shared by ISDALoss, attach, SegmentationISDALoss and
SemiISDALoss; the keyword arguments and their error messages are unchanged."""

import dataclasses

import pytest
import torch
from torch import nn

import torch_isda
from torch_isda import ISDALoss, ISDAOptions, SegmentationISDALoss
from torch_isda.semi.loss import SemiISDALoss


class _Custom(nn.Module):  # no classifier under a known name: attach discovers it later
    def __init__(self):
        super().__init__()
        self.body, self.out = nn.Linear(3, 4), nn.Linear(4, 2)

    def forward(self, x):
        return self.out(self.body(x))


class _WithFc(nn.Module):  # found by name
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)


BUILDERS = {
    "ISDALoss": lambda **kw: ISDALoss(4, 2, **kw),
    "SegmentationISDALoss": lambda **kw: SegmentationISDALoss(4, 2, **kw),
    "SemiISDALoss": lambda **kw: SemiISDALoss(4, 2, **kw),
    "attach": lambda **kw: torch_isda.attach(_WithFc(), **kw),
    "attach (discovered)": lambda **kw: torch_isda.attach(_Custom(), **kw),
}


@pytest.mark.parametrize("build", list(BUILDERS))
@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"lambda0": -1.0}, ValueError, r"^lambda0 must be non-negative; got -1.0$"),
        ({"lambda0": float("nan")}, ValueError, r"^lambda0 must be non-negative; got nan$"),
        ({"label_smoothing": 1.5}, ValueError, r"^label_smoothing must lie in \[0, 1\]; got 1.5$"),
        ({"kind": "banana"}, ValueError, r"^unknown covariance kind 'banana'; expected one of"),
        ({"total_steps": -2}, ValueError, r"^total_steps must be a positive integer; got -2$"),
        ({"lambda_0": 0.5}, TypeError, r"unexpected ISDA option\(s\) lambda_0; known:"),
    ],
)
def test_every_loss_checks_its_options_when_built(build, kwargs, error, match):
    with pytest.raises(error, match=match):
        BUILDERS[build](**kwargs)


def test_reduction_message_unchanged():
    with pytest.raises(ValueError, match=r"^reduction must be 'mean', 'sum' or 'none'; got 'avg'$"):
        ISDALoss(4, 2, reduction="avg")
    with pytest.raises(ValueError, match="SemiISDALoss averages its terms: reduction must be 'mean'"):
        SemiISDALoss(4, 2, reduction="sum")


def test_an_options_object_equals_the_keywords():
    opts = ISDAOptions(lambda0=0.3, kind="diagonal", constant_lambda=True, label_smoothing=0.1, rank=4)
    a = ISDALoss(5, 3, options=opts)
    b = ISDALoss(5, 3, 0.3, "diagonal", constant_lambda=True, label_smoothing=0.1, rank=4)
    assert a.options == b.options == opts
    assert (a.lambda0, a.kind, a.constant_lambda, a.label_smoothing) == (0.3, "diagonal", True, 0.1)
    # keyword arguments override the object; the object is not changed
    c = ISDALoss(5, 3, 0.9, options=opts, reduction="sum")
    assert (c.lambda0, c.kind, c.reduction) == (0.9, "diagonal", "sum") and opts.reduction == "mean"
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.lambda0 = 1.0
    with pytest.raises(TypeError, match="options must be an ISDAOptions"):
        ISDALoss(5, 3, options={"lambda0": 0.3})


def test_segmentation_defaults_and_shared_options():
    seg = SegmentationISDALoss(5, 3)
    assert (seg.lambda0, seg.kind, seg.ignore_index) == (7.5, "diagonal", 255)
    opts = ISDAOptions(lambda0=0.5, kind="full")
    seg = SegmentationISDALoss(5, 3, options=opts.replace(ignore_index=255))
    assert (seg.lambda0, seg.kind, seg.ignore_index) == (0.5, "full", 255)
    semi = SemiISDALoss(5, 3, options=opts, eta1=2.0)
    assert semi.isda.options == opts and semi.eta1 == 2.0
    model = nn.Sequential(nn.Linear(2, 5), nn.Linear(5, 3))
    crit = torch_isda.attach(model, layer=model[1], options=opts, constant_lambda=True)
    assert crit.isda.options == opts.replace(constant_lambda=True) and crit.ratio == 0.5


def test_options_are_normalised():
    opts = ISDAOptions(lambda0=1, label_smoothing=0, ignore_index=255.0, validate=0, class_prior=torch.ones(3))
    assert type(opts.lambda0) is float and type(opts.label_smoothing) is float
    assert opts.ignore_index == 255 and type(opts.ignore_index) is int and opts.validate is False
    assert opts.class_prior == (1.0, 1.0, 1.0)
    assert ISDAOptions(class_prior=[1, 2]) == ISDAOptions(class_prior=(1.0, 2.0))  # comparable, hashable
    hash(ISDAOptions(class_prior=[1, 2]))
