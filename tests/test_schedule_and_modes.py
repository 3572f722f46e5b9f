"""The lambda schedule advancing by itself, the warning when it never moves, and the modes.

* ``total_steps`` / ``epochs`` + ``steps_per_epoch`` advance ``t / T`` on each training call;
* without them and without ``set_progress``, a warning once lambda stayed 0 for an epoch's
  worth of training calls;
* the statistics are updated only in training mode with grad mode on; evaluation mode
  returns the plain cross-entropy; an attached criterion follows the model's mode.
"""

import os
import sys
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import torch_isda
from torch_isda import ISDALoss, ISDAOptions, SegmentationISDALoss
from torch_isda import functional as isda_f
from torch_isda import options as options_module
from torch_isda.semi.loss import SemiISDALoss

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks"))
from _syncs import count_syncs  # noqa: E402

A, C = 6, 4


def _batch(seed=0, N=16):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, A, generator=g)
    return x, torch.arange(N) % C


def _step(crit, W, seed=0):
    x, y = _batch(seed)
    return crit(x, x @ W.T, y, W)


# ---------------------------------------------------------------------- schedule


def test_total_steps_advances_lambda_each_training_call():
    crit = ISDALoss(A, C, 0.5, total_steps=4)
    W = torch.randn(C, A, requires_grad=True)
    seen = []
    for k in range(6):
        seen.append(crit.ratio)
        _step(crit, W, k)
    assert seen == pytest.approx([0.5 * min(k / 4, 1.0) for k in range(6)])


def test_epochs_advance_lambda_once_per_epoch_as_the_paper():
    crit = ISDALoss(A, C, 0.8, epochs=3, steps_per_epoch=2)
    W = torch.randn(C, A, requires_grad=True)
    seen = []
    for k in range(8):
        seen.append(crit.ratio)
        _step(crit, W, k)
    assert seen == pytest.approx([0.8 * min((k // 2) / 3, 1.0) for k in range(8)])


def test_calls_that_do_not_train_do_not_advance():
    crit = ISDALoss(A, C, 0.5, total_steps=4)
    W = torch.randn(C, A, requires_grad=True)
    with torch.no_grad():
        _step(crit, W)
    crit.eval()
    _step(crit, W)
    assert crit.ratio == 0.0


def test_advancing_schedule_survives_a_state_dict_round_trip_and_set_progress():
    crit = ISDALoss(A, C, 0.5, total_steps=10)
    W = torch.randn(C, A, requires_grad=True)
    for k in range(3):
        _step(crit, W, k)
    state = crit.state_dict()
    assert float(state["progress"]) == pytest.approx(0.3)  # the host value, written when saved
    fresh = ISDALoss(A, C, 0.5, total_steps=10)
    fresh.load_state_dict(state)
    assert fresh.ratio == pytest.approx(0.15)
    _step(fresh, W, 3)
    assert fresh.ratio == pytest.approx(0.2)
    fresh.set_progress(0.5)  # the loop may still drive it; advancing goes on from there
    _step(fresh, W, 4)
    assert fresh.ratio == pytest.approx(0.5 * 0.6)


def test_attach_takes_the_schedule():
    model = nn.Sequential(nn.Linear(3, A), nn.ReLU(), nn.Linear(A, C))
    crit = torch_isda.attach(model, 0.5, total_steps=2)
    x, y = torch.randn(8, 3), torch.arange(8) % C
    ratios = []
    for _ in range(3):
        ratios.append(crit.ratio)
        crit(model(x), y).backward()
    assert ratios == pytest.approx([0.0, 0.25, 0.5])


@pytest.mark.parametrize(
    "opts, match",
    [
        (dict(epochs=3), "epochs and steps_per_epoch go together"),
        (dict(total_steps=5, epochs=2, steps_per_epoch=3), "total_steps or epochs with steps_per_epoch, not both"),
        (dict(total_steps=0), "total_steps must be a positive integer; got 0"),
        (dict(total_steps=2.5), "total_steps must be a positive integer; got 2.5"),
        (dict(total_steps=5, constant_lambda=True), "constant_lambda uses lambda0 from the first step"),
    ],
)
def test_schedule_option_errors(opts, match):
    with pytest.raises(ValueError, match=match):
        ISDALoss(A, C, **opts)


def test_advancing_adds_no_host_synchronization():
    W = torch.randn(C, A, requires_grad=True)
    x, y = _batch()
    for kind, opts, expected in (("full", {}, 1), ("diagonal", {"validate": False}, 0)):
        crit = ISDALoss(A, C, 0.5, kind, total_steps=100, **opts)

        def step():
            crit(x, x @ W.T, y, W).backward()

        step()
        assert count_syncs(step).total == expected


# ---------------------------------------------------------------------- warning


def _warnings_after(crit, calls, W, **kwargs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for k in range(calls):
            x, y = _batch(k % 3)
            crit(x, x @ W.T, y, W, **kwargs)
    return [w for w in caught if "set_progress was never called" in str(w.message)]


def test_warns_once_when_lambda_stays_zero_past_an_epoch(monkeypatch):
    monkeypatch.setattr(options_module, "DEFAULT_STEPS_BEFORE_WARNING", 5)
    W = torch.randn(C, A, requires_grad=True)
    crit = ISDALoss(A, C, 0.5)
    assert _warnings_after(crit, 5, W) == []  # an epoch's worth: not yet
    caught = _warnings_after(crit, 10, W)
    assert len(caught) == 1 and "plain cross-entropy" in str(caught[0].message)


def test_default_epoch_worth_is_documented_value():
    assert ISDAOptions().steps_before_warning == options_module.DEFAULT_STEPS_BEFORE_WARNING == 1000


@pytest.mark.parametrize("case", ["set_progress", "constant", "lambda0=0", "ratio", "total_steps", "eval"])
def test_no_warning_when_lambda_is_driven(monkeypatch, case):
    monkeypatch.setattr(options_module, "DEFAULT_STEPS_BEFORE_WARNING", 2)
    W = torch.randn(C, A, requires_grad=True)
    opts = {"constant": {"constant_lambda": True}, "lambda0=0": {"lambda0": 0.0},
            "total_steps": {"total_steps": 100}}.get(case, {})
    crit = ISDALoss(A, C, **opts)
    if case == "set_progress":
        crit.set_progress(0.0)  # the loop drives it (lambda 0 in the first epoch is the schedule)
    if case == "eval":
        crit.eval()
    kwargs = {"ratio": 0.0} if case == "ratio" else {}
    assert _warnings_after(crit, 6, W, **kwargs) == []


# ---------------------------------------------------------------------- modes


def test_no_grad_in_training_mode_gives_the_bound_without_updating():
    crit = ISDALoss(A, C, 0.5, constant_lambda=True)
    W = torch.randn(C, A)
    _step(crit, W, 0)
    before = {k: v.clone() for k, v in crit.state_dict().items()}
    x, y = _batch(1)
    with torch.no_grad():
        loss = crit(x, x @ W.T, y, W)
    for k, v in crit.state_dict().items():
        assert torch.equal(v, before[k]), k
    expected = isda_f.isda_cross_entropy(x @ W.T, W, y, crit.estimator.functional_covariance(), 0.5, "full")
    torch.testing.assert_close(loss, expected)
    with torch.inference_mode():
        crit(x, x @ W.T, y, W)
    assert torch.equal(crit.estimator.count, before["estimator.count"])


def test_eval_mode_returns_plain_cross_entropy_without_updating():
    crit = ISDALoss(A, C, 0.5, constant_lambda=True, label_smoothing=0.1)
    W = torch.randn(C, A)
    _step(crit, W, 0)
    count = crit.estimator.count.clone()
    crit.eval()
    x, y = _batch(1)
    assert torch.equal(crit(x, x @ W.T, y, W), F.cross_entropy(x @ W.T, y, label_smoothing=0.1))
    assert torch.equal(crit.estimator.count, count)
    crit.train()
    assert not torch.equal(crit(x, x @ W.T, y, W), F.cross_entropy(x @ W.T, y, label_smoothing=0.1))


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, A), nn.Dropout(0.0), nn.Linear(A, C))


def test_attached_criterion_follows_the_model_mode():
    model = _model()
    crit = torch_isda.attach(model, 0.5, constant_lambda=True)
    x, y = torch.randn(8, 3), torch.arange(8) % C
    crit(model(x), y)
    count = crit.estimator.count.clone()
    model.eval()
    logits = model(x)
    assert torch.equal(crit(logits, y), F.cross_entropy(logits, y))
    assert torch.equal(crit.estimator.count, count)
    model.train()
    logits = model(x)
    assert not torch.equal(crit(logits, y), F.cross_entropy(logits, y))
    assert int(crit.estimator.count.sum()) == 2 * int(count.sum())


def test_criterion_eval_gives_a_validation_loss_while_the_model_trains():
    model = _model()
    crit = torch_isda.attach(model, 0.5, constant_lambda=True)
    x, y = torch.randn(8, 3), torch.arange(8) % C
    crit(model(x), y)
    count = crit.estimator.count.clone()
    crit.eval()
    logits = model(x)
    assert torch.equal(crit(logits, y), F.cross_entropy(logits, y))
    assert torch.equal(crit.estimator.count, count)
    crit.train()
    crit(model(x), y)
    assert not torch.equal(crit.estimator.count, count)


def test_discovered_classifier_follows_the_model_mode():
    class Custom(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Linear(3, A)
            self.out = nn.Linear(A, C)

        def forward(self, x):
            return self.out(torch.relu(self.body(x)))

    model = Custom()
    crit = torch_isda.attach(model, 0.5, constant_lambda=True)
    x, y = torch.randn(8, 3), torch.arange(8) % C
    model.eval()
    logits = model(x)
    assert torch.equal(crit(logits, y), F.cross_entropy(logits, y))
    assert int(crit.estimator.count.sum()) == 0


def test_segmentation_modes():
    B, h, w = 2, 3, 4
    seg = SegmentationISDALoss(A, C, constant_lambda=True)
    f = torch.randn(B, A, h, w)
    conv = nn.Conv2d(A, C, 1)
    t = torch.randint(0, C, (B, 2 * h, 2 * w))
    t[0, :2] = 255
    seg(f, conv(f), t, conv)
    count = seg.estimator.count.clone()
    with torch.no_grad():
        seg(f, conv(f), t, conv)
    assert torch.equal(seg.estimator.count, count)
    seg.eval()
    z = conv(f)
    small = t[:, ::2, ::2]  # nearest-neighbour resize by 2
    assert torch.equal(seg.estimator.count, count)
    torch.testing.assert_close(seg(f, z, t, conv), F.cross_entropy(z, small, ignore_index=255))
    assert seg.augmented_logits(f, z, t, conv) is z
    assert torch.equal(seg.estimator.count, count)


def test_semi_eval_supervised_term_is_plain_cross_entropy():
    crit = SemiISDALoss(A, C, 0.5, constant_lambda=True)
    W = torch.randn(C, A)
    x, y = _batch()
    crit.eval()
    torch.testing.assert_close(crit.supervised(x, x @ W.T, y, W), F.cross_entropy(x @ W.T, y))
    assert int(crit.isda.estimator.count.sum()) == 0


# ---------------------------------------------------------------------- torch.compile


def _compiled_steps(crit, fullgraph, steps=5):
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    W = torch.randn(C, A, requires_grad=True)
    compiled = torch.compile(lambda x, y: crit(x, x @ W.T, y, W), backend=backend, fullgraph=fullgraph)
    for k in range(steps):
        x, y = _batch(k)
        compiled(x, y).backward()
    return graphs


def test_counting_training_calls_causes_no_recompilation():
    """The static path traced whole: the host counter is not traced (one graph for all steps)."""
    crit = ISDALoss(A, C, 0.5, "diagonal", validate=False)
    crit.set_progress(0.5)
    assert len(_compiled_steps(crit, fullgraph=True)) == 1


def test_self_advancing_schedule_under_torch_compile():
    crit = ISDALoss(A, C, 0.5, "diagonal", validate=False, total_steps=4)
    with pytest.raises(Exception, match="drive lambda with set_progress"):
        _compiled_steps(crit, fullgraph=True, steps=1)
    crit = ISDALoss(A, C, 0.5, "diagonal", validate=False, total_steps=4)
    _compiled_steps(crit, fullgraph=False, steps=3)  # the loss runs eagerly and counts
    assert crit.ratio == pytest.approx(0.5 * 3 / 4)
    crit = ISDALoss(A, C, 0.5, "full", total_steps=4)  # the default path is eager under compile
    _compiled_steps(crit, fullgraph=False, steps=2)
    assert crit.ratio == pytest.approx(0.25)
