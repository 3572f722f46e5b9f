"""Drop-in use: a forward hook on the final Linear feeds the features."""

import pytest
import torch
from torch import nn

import torch_isda
from torch_isda import ISDALoss


class TorchvisionStyle(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Linear(5, 8), nn.ReLU())
        self.classifier = nn.Sequential(nn.Dropout(0.0), nn.Linear(8, 3))

    def forward(self, x):
        return self.classifier(self.features(x))


class ResNetStyle(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(5, 8)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.body(x)))


@pytest.mark.parametrize("model_cls", [TorchvisionStyle, ResNetStyle])
def test_attach_equals_explicit_loss(model_cls):
    torch.manual_seed(0)
    model = model_cls()
    crit = torch_isda.attach(model, lambda0=0.5, constant_lambda=True)
    layer = torch_isda.find_classifier(model)
    assert crit.layer is layer and crit.isda.num_features == 8 and crit.isda.num_classes == 3
    ref = ISDALoss(8, 3, lambda0=0.5, constant_lambda=True)
    for _ in range(3):
        x, y = torch.randn(10, 5), torch.randint(0, 3, (10,))
        feats = {}
        h = layer.register_forward_hook(lambda m, i, o: feats.update(a=i[0]))
        logits = model(x)
        h.remove()
        loss = crit(logits, y)
        expected = ref(feats["a"], logits, y, layer.weight)
        torch.testing.assert_close(loss, expected)
        loss.backward()
    assert layer.weight.grad is not None
    # state_dict holds only the ISDA state
    assert all(k.startswith("isda.") for k in crit.state_dict())


def test_errors_are_clear():
    model = ResNetStyle()
    crit = torch_isda.attach(model)
    with pytest.raises(RuntimeError, match="no features captured"):
        crit(torch.randn(2, 3), torch.tensor([0, 1]))
    logits = model(torch.randn(2, 5))
    with pytest.raises(RuntimeError, match="not the output of the hooked classifier"):
        crit(logits * 2, torch.tensor([0, 1]))
    crit.remove()
    with pytest.raises(ValueError, match="could not find the final nn.Linear"):
        torch_isda.attach(nn.Sequential(nn.ReLU()))
    crit2 = torch_isda.attach(nn.Sequential(nn.Linear(2, 2)), layer=nn.Linear(2, 2))
    assert crit2.isda.num_classes == 2


# --------------------------------------------------------------------------- discovery of the classifier


class _Block(nn.Module):
    """Transformer-like block: Linear layers with 3-D (token) outputs."""

    def __init__(self, d):
        super().__init__()
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(3 * d, d)

    def forward(self, x):
        return x + self.proj(torch.relu(self.qkv(x)))


class ViTStyle(nn.Module):
    """torchvision VisionTransformer layout: tokens through Linear blocks, classifier ``heads.head``."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(5, 8)
        self.encoder = nn.Sequential(_Block(8), _Block(8))
        self.heads = nn.Sequential()
        self.heads.add_module("head", nn.Linear(8, 3))

    def forward(self, x):  # x: N x tokens x 5
        tokens = self.encoder(self.embed(x))
        return self.heads(tokens[:, 0])


class TimmStyle(nn.Module):
    """timm layout: ``head.fc`` after a 2-D pre-logits Linear."""

    def __init__(self):
        super().__init__()
        self.body = nn.Linear(5, 8)
        self.head = nn.Module()
        self.head.pre_logits = nn.Linear(8, 8)
        self.head.fc = nn.Linear(8, 3)

    def forward(self, x):
        return self.head.fc(torch.tanh(self.head.pre_logits(torch.relu(self.body(x)))))


class MobileNetStyle(nn.Module):
    """torchvision MobileNetV3 layout: ``classifier[-1]`` behind Linear, Hardswish and Dropout."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Linear(5, 6), nn.ReLU())
        self.classifier = nn.Sequential(nn.Linear(6, 8), nn.Hardswish(), nn.Dropout(0.0), nn.Linear(8, 3))

    def forward(self, x):
        return self.classifier(self.features(x))


class CustomName(nn.Module):
    """A classifier under an unusual attribute name, with a 2-D Linear before it."""

    def __init__(self):
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU())
        self.my_logits_layer = nn.Linear(8, 3)

    def forward(self, x):
        return self.my_logits_layer(self.trunk(x))


def _inputs(model_cls, n=10):
    return torch.randn(n, 4, 5) if model_cls is ViTStyle else torch.randn(n, 5)


def _classifier(model):
    return {ViTStyle: lambda m: m.heads.head, TimmStyle: lambda m: m.head.fc,
            MobileNetStyle: lambda m: m.classifier[-1], CustomName: lambda m: m.my_logits_layer}[type(model)](model)


@pytest.mark.parametrize("model_cls", [ViTStyle, TimmStyle, MobileNetStyle, CustomName])
def test_attach_finds_any_linear_head(model_cls):
    torch.manual_seed(0)
    model = model_cls()
    head = _classifier(model)
    crit = torch_isda.attach(model, lambda0=0.5, constant_lambda=True)
    ref = ISDALoss(8, 3, lambda0=0.5, constant_lambda=True)
    for step in range(3):
        x, y = _inputs(model_cls), torch.randint(0, 3, (10,))
        feats = {}
        h = head.register_forward_hook(lambda m, i, o: feats.update(a=i[0]))
        logits = model(x)
        h.remove()
        loss = crit(logits, y)
        torch.testing.assert_close(loss, ref(feats["a"], logits, y, head.weight))
        loss.backward()
        assert crit.layer is head
    torch.testing.assert_close(crit.estimator.covariance, ref.estimator.covariance)
    # only the classifier keeps a hook: the other Linear layers carry none
    hooked = [m for m in model.modules() if isinstance(m, nn.Linear) and m._forward_hooks]
    assert hooked == [head]


def test_discovery_applies_progress_and_checkpoint_given_before_the_first_call():
    torch.manual_seed(0)
    trained = CustomName()
    crit = torch_isda.attach(trained, lambda0=0.5)
    crit.set_progress(0.5)
    y = torch.randint(0, 3, (10,))
    crit(trained(torch.randn(10, 5)), y)
    assert crit.ratio == pytest.approx(0.25)
    state = crit.state_dict()
    fresh = CustomName()
    crit2 = torch_isda.attach(fresh, lambda0=0.5)
    with pytest.raises(RuntimeError, match="first loss call"):
        crit2.estimator
    crit2.load_state_dict(state)
    crit2.set_progress(0.5)
    assert crit2.ratio == pytest.approx(0.25)
    crit2(fresh(torch.randn(10, 5)), y)
    assert crit2.layer is fresh.my_logits_layer
    assert int(crit2.estimator.count.sum()) == 20  # 10 from the checkpoint + 10 now


def test_discovery_errors_are_clear():
    class Scaled(CustomName):
        def forward(self, x):
            return super().forward(x) * 2.0  # logits are not a Linear's output

    model = Scaled()
    crit = torch_isda.attach(model)
    with pytest.raises(RuntimeError, match="no features captured"):
        crit(torch.randn(2, 3), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="could not find the final nn.Linear of Scaled"):
        crit(model(torch.randn(2, 5)), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="could not find the final nn.Linear"):
        torch_isda.attach(nn.Sequential(nn.Conv2d(3, 4, 1), nn.Flatten()))


@pytest.mark.parametrize("constant", [False, True])
def test_discovery_schedule_and_progress_check_match_isdaloss_before_and_after_the_first_call(constant):
    model = CustomName()
    crit = torch_isda.attach(model, lambda0=0.8, constant_lambda=constant)
    direct = ISDALoss(8, 3, 0.8, constant_lambda=constant)
    assert crit.ratio == direct.ratio == (0.8 if constant else 0.0)  # no progress set yet
    for bad in (-0.1, 1.5, float("nan")):
        for loss in (crit, direct):
            with pytest.raises(ValueError, match=r"progress t/T must lie in \[0, 1\]"):
                loss.set_progress(bad)
    assert crit.ratio == direct.ratio  # rejected values left the schedule unchanged
    crit.set_progress(0.25)
    direct.set_progress(0.25)
    assert crit.ratio == direct.ratio == (0.8 if constant else 0.8 * 0.25)
    crit(model(torch.randn(6, 5)), torch.randint(0, 3, (6,)))  # the classifier is found here
    assert crit.ratio == direct.ratio
    crit.set_progress(1.0)
    direct.set_progress(1.0)
    assert crit.ratio == direct.ratio == pytest.approx(0.8)
