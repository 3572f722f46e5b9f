"""torch.compile of a training step equals eager; the static all-class path equals the default.

Compiled with the ``aot_eager`` backend (dynamo + AOTAutograd, the parts that decide graph
breaks and trace the hand-written backward passes) to keep the tests fast on a CPU.
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from torch_isda import ISDALoss, SegmentationISDALoss
from torch_isda import functional as isda_f
from torch_isda.layouts import KINDS

torch._dynamo.config.recompile_limit = 64  # one cache per parametrized module class


def _steps(C=5, A=6, N=24, steps=3, ignored=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(N, A, generator=g, dtype=torch.float64)
        y = torch.randint(0, C, (N,), generator=g)
        y[:ignored] = -100
        yield x, y


def _run(crit, forward, C=5, A=6):
    """Losses and weight gradients of a few steps; ``forward(crit, x, logits, y, W)``."""
    W = torch.randn(C, A, dtype=torch.float64, generator=torch.Generator().manual_seed(1), requires_grad=True)
    out = []
    for x, y in _steps(C, A):
        loss = forward(crit, x, x @ W.T, y, W)
        (grad,) = torch.autograd.grad(loss, [W])
        out.append((loss.detach(), grad))
    return out


def _eager(crit, x, z, y, W):
    return crit(x, z, y, W)


def _assert_same(a, b, crit_a, crit_b):
    for (la, ga), (lb, gb) in zip(a, b):
        torch.testing.assert_close(la, lb, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(ga, gb, rtol=1e-10, atol=1e-12)
    for (name, va), vb in zip(crit_a.state_dict().items(), crit_b.state_dict().values()):
        torch.testing.assert_close(va, vb, rtol=1e-10, atol=1e-12, msg=name)


def _loss(kind, **opts):
    return ISDALoss(6, 5, 0.5, kind, constant_lambda=True, rank=3, dtype=torch.float64, **opts)


@pytest.mark.parametrize("kind", ["diagonal", "shared", "identity"])
def test_fullgraph_compile_with_validate_false_equals_eager(kind):
    compiled = torch.compile(_eager, backend="aot_eager", fullgraph=True)
    a, b = _loss(kind, validate=False), _loss(kind, validate=False)
    _assert_same(_run(a, compiled), _run(b, _eager), a, b)


@pytest.mark.parametrize("kind", ["full", "lowrank"])
def test_fullgraph_compile_with_static_shapes_equals_eager(kind):
    compiled = torch.compile(_eager, backend="aot_eager", fullgraph=True)
    a, b = _loss(kind, validate=False, static_shapes=True), _loss(kind, validate=False, static_shapes=True)
    _assert_same(_run(a, compiled), _run(b, _eager), a, b)


@pytest.mark.parametrize("kind", KINDS)
def test_plain_compile_of_the_default_equals_eager(kind):
    compiled = torch.compile(_eager, backend="aot_eager")
    a, b = _loss(kind), _loss(kind)
    _assert_same(_run(a, compiled), _run(b, _eager), a, b)


def test_segmentation_fullgraph_compile_equals_eager():
    def forward(seg, f, conv, t):
        return seg(f, conv(f), t, conv.weight)

    compiled = torch.compile(forward, backend="aot_eager", fullgraph=True)
    conv = nn.Conv2d(4, 3, 1).double()
    results = []
    for fn in (compiled, forward):
        seg = SegmentationISDALoss(4, 3, 1.0, "diagonal", constant_lambda=True, dtype=torch.float64, validate=False)
        g = torch.Generator().manual_seed(0)
        out = []
        for _ in range(2):
            f = torch.randn(2, 4, 5, 5, dtype=torch.float64, generator=g)
            t = torch.randint(0, 3, (2, 5, 5), generator=g)
            t[0, :2] = 255
            loss = fn(seg, f, conv, t)
            out.append((loss.detach(), torch.autograd.grad(loss, [conv.weight])[0]))
        results.append((out, seg))
    _assert_same(results[0][0], results[1][0], results[0][1], results[1][1])


# --------------------------------------------------------------------------- static == present


@pytest.mark.parametrize("kind", KINDS)
def test_static_all_class_path_equals_the_present_class_path(kind):
    """Same statistics, losses and gradients (absent classes unchanged, ignored samples masked)."""
    a, b = _loss(kind), _loss(kind, validate=False, static_shapes=True)
    _assert_same(_run(a, _eager), _run(b, _eager), a, b)


@pytest.mark.parametrize("kind", ["diagonal", "full", "lowrank"])
def test_segmentation_static_path_equals_default(kind):
    conv = nn.Conv2d(4, 3, 1).double()
    results = []
    for opts in ({}, {"validate": False, "static_shapes": True}):
        seg = SegmentationISDALoss(4, 3, 1.0, kind, constant_lambda=True, dtype=torch.float64, rank=2,
                                   label_smoothing=0.1, **opts)
        g = torch.Generator().manual_seed(0)
        out = []
        for step in range(3):
            f = torch.randn(2, 4, 5, 5, dtype=torch.float64, generator=g)
            t = torch.randint(0, 3, (2, 5, 5), generator=g)
            t[0, :2] = 255
            if step == 2:
                t[:] = 255  # no valid pixel: 0, not nan, on both paths
            loss = seg(f, conv(f), t, conv.weight)
            out.append((loss.detach(), torch.autograd.grad(loss, [conv.weight])[0]))
        assert out[2][0] == 0
        results.append((out, seg))
    _assert_same(results[0][0], results[1][0], results[0][1], results[1][1])


def test_functional_static_path_equals_present_path():
    g = torch.Generator().manual_seed(3)
    W = torch.randn(7, 4, dtype=torch.float64, generator=g, requires_grad=True)
    cov = torch.rand(7, 4, dtype=torch.float64, generator=g)
    z = torch.randn(9, 7, dtype=torch.float64, generator=g)
    y = torch.tensor([0, 3, 3, -100, 6, 0, 2, 2, 3])
    a = isda_f.isda_cross_entropy(z, W, y, cov, 0.7, label_smoothing=0.2)
    b = isda_f.isda_cross_entropy(z, W, y, cov, 0.7, label_smoothing=0.2, validate=False)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    logits = torch.randn(5, 7, dtype=torch.float64, generator=g)
    probs = F.softmax(torch.randn(5, 7, dtype=torch.float64, generator=g), 1)
    for covariance in (cov, torch.diag_embed(cov)):
        a = isda_f.isda_consistency_loss(logits, W, probs, covariance, 0.7)
        b = isda_f.isda_consistency_loss(logits, W, probs, covariance, 0.7, static_shapes=True)
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_compiled_default_path_does_not_recompile_as_the_classes_change():
    """The present-class path runs eagerly under torch.compile (one graph break), so new
    class sets do not trigger recompilation; the functional API's compiled remainder gets
    dynamic shapes after the first change."""
    graphs = []

    def counting_backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()

    def step(crit, x, y, W):
        return crit(x, x @ W.T, y, W) * 2.0

    compiled = torch.compile(step, backend=counting_backend)
    a, b = _loss("full"), _loss("full")
    W = torch.randn(5, 6, dtype=torch.float64, requires_grad=True)
    g = torch.Generator().manual_seed(0)
    for n in range(10):
        x = torch.randn(24, 6, dtype=torch.float64, generator=g)
        y = torch.randint(0, 2 + n % 4, (24,), generator=g)  # 2 to 5 classes present
        torch.testing.assert_close(compiled(a, x, y, W), step(b, x, y, W))
    torch.testing.assert_close(a.estimator.covariance, b.estimator.covariance)
    assert len(graphs) <= 4, len(graphs)

    graphs.clear()
    cov = torch.rand(5, 6, dtype=torch.float64)

    def functional_step(z, y):
        return isda_f.isda_cross_entropy(z, W, y, cov, 0.5, "diagonal")

    compiled = torch.compile(functional_step, backend=counting_backend)
    for n in range(10):
        z = torch.randn(24, 5, dtype=torch.float64, generator=g)
        y = torch.randint(0, 2 + n % 4, (24,), generator=g)
        torch.testing.assert_close(compiled(z, y), functional_step(z, y))
    assert len(graphs) <= 6, len(graphs)


# --------------------------------------------------------------------------- whole training step


def _whole_step_parts(kind):
    from torch_isda.models.resnet_cifar import resnet8

    torch.manual_seed(0)
    model = resnet8(10).double()
    crit = ISDALoss(64, 10, 0.5, kind, static_shapes=True, rank=4, dtype=torch.float64)  # the accelerator route
    params = list(model.parameters())
    return model, crit, params, [torch.zeros_like(p) for p in params]


def _whole_step(model, crit, params, momenta, x, y, lr):
    """Forward, ISDA criterion, backward and an SGD-with-momentum step: what docs/core.md's
    recipe compiles whole."""
    features = model.forward_features(x)
    loss = crit(features, model.fc(features), y, model.fc.weight)
    grads = torch.autograd.grad(loss, params)
    with torch.no_grad():
        torch._foreach_mul_(momenta, 0.9)
        torch._foreach_add_(momenta, grads)
        torch._foreach_add_(params, momenta, alpha=-lr)
    return loss.detach()


def _three_steps(step, compiled_parts, eager_parts):
    g = torch.Generator().manual_seed(1)
    for t in range(3):
        for parts in (compiled_parts, eager_parts):
            parts[1].set_progress(t / 3)  # a device buffer under compile: no recompilation
        x = torch.randn(8, 3, 32, 32, generator=g, dtype=torch.float64)
        y = torch.randint(0, 10, (8,), generator=g)
        y[0] = -100  # an ignored sample
        torch.testing.assert_close(step(*compiled_parts, x, y, 0.1), _whole_step(*eager_parts, x, y, 0.1))


@pytest.mark.parametrize("kind", KINDS)
def test_whole_step_of_a_resnet_compiles_fullgraph_and_equals_eager(kind):
    """resnet8 + ISDA (validation on, static path), backward and optimizer step in one
    ``fullgraph=True`` graph: no graph break, no recompilation as the progress moves, and
    3 steps equal to eager (losses, parameters, statistics)."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    compiled_parts, eager_parts = _whole_step_parts(kind), _whole_step_parts(kind)
    step = torch.compile(_whole_step, backend="aot_eager", fullgraph=True)
    with torch._dynamo.config.patch(trace_autograd_ops=True):  # torch.autograd.grad inside the graph
        _three_steps(step, compiled_parts, eager_parts)
    for a, b in zip(compiled_parts[0].parameters(), eager_parts[0].parameters()):
        torch.testing.assert_close(a, b)
    for (name, a), b in zip(compiled_parts[1].state_dict().items(), eager_parts[1].state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)
    assert not counters["graph_break"], dict(counters["graph_break"])
    assert counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])


def test_the_whole_step_recipe_of_docs_core_runs():
    """docs/core.md's recipe (a user's loop compiled whole) runs as written (backend
    aot_eager here, to keep the test fast): no graph break, every step folded in."""
    import pathlib
    import re

    text = (pathlib.Path(__file__).parent.parent / "docs" / "core.md").read_text()
    section = text[text.index("### Compiling a whole training step"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert "fullgraph=True" in code and "criterion.check()" in code
    code = code.replace("torch.compile(train_step, fullgraph=True)",
                        "torch.compile(train_step, fullgraph=True, backend='aot_eager')")
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    scope = {}
    exec(compile(code, "docs/core.md", "exec"), scope)
    assert torch.isfinite(scope["loss"])
    assert int(scope["criterion"].estimator.count.sum()) == 2 * 3 * 16
    assert not counters["graph_break"], dict(counters["graph_break"])


@pytest.mark.parametrize("kind", ["full", "diagonal"])
@pytest.mark.parametrize("tensor_ratio", [False, True])
def test_fused_static_kernels_gradcheck_and_match_the_brute_force(kind, tensor_ratio):
    """kernels.FullAugment / DiagonalAugment: logits + r * onehot @ sigma2, gradients into the
    logits and the weight, against the float64 brute force of Eq. (7) and by gradcheck."""
    from torch_isda.kernels import DiagonalAugment, FullAugment

    g = torch.Generator().manual_seed(5)
    N, C, A = 7, 4, 3
    W = torch.randn(C, A, dtype=torch.float64, generator=g, requires_grad=True)
    z = torch.randn(N, C, dtype=torch.float64, generator=g, requires_grad=True)
    y = torch.tensor([0, 2, 2, -100, 3, 1, 0])
    onehot = F.one_hot(y.clamp_min(0), C).double() * (y >= 0).double().unsqueeze(1)
    if kind == "full":
        B = torch.randn(C, A, A, dtype=torch.float64, generator=g)
        cov, fn = B @ B.transpose(1, 2), FullAugment
        dense = cov
    else:
        cov, fn = torch.rand(C, A, dtype=torch.float64, generator=g), DiagonalAugment
        dense = torch.diag_embed(cov)
    r = torch.tensor(0.35, dtype=torch.float64) if tensor_ratio else 0.35
    out = fn.apply(z, W, cov, onehot, r)
    expected = z.clone()
    for i in range(N):
        if y[i] >= 0:
            V = W - W[y[i]]
            expected[i] = z[i] + 0.35 * torch.einsum("ja,ab,jb->j", V, dense[y[i]], V)
    torch.testing.assert_close(out, expected)
    torch.autograd.gradcheck(lambda z_, W_: fn.apply(z_, W_, cov, onehot, r), (z, W))
