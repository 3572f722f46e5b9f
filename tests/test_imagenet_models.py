"""ImageNet models of Table 1: registry, parameter counts, interface, gradients."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from torch_isda.models import ISDANet, count_parameters, create_model, list_models
from torch_isda.models.densenet_imagenet import ImageNetDenseNet
from torch_isda.models.resnet_imagenet import Bottleneck

# Table 1 of the ISDA paper (millions of parameters, 1000 classes) and the feature size.
TABLE1 = {
    "resnet50": (25.6, 2048, "resnet_imagenet"),
    "resnet101": (44.6, 2048, "resnet_imagenet"),
    "resnet152": (60.3, 2048, "resnet_imagenet"),
    "densenet121": (8.0, 1024, "densenet_imagenet"),
    "densenet265": (33.3, 2688, "densenet_imagenet"),
    "resnext50_32x4d": (25.0, 2048, "resnext_imagenet"),
    "resnext101_32x8d": (88.8, 2048, "resnext_imagenet"),
}
# torchvision's exact counts for the architectures it ships
TORCHVISION = {
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "resnet152": 60_192_808,
    "densenet121": 7_978_856,
    "resnext50_32x4d": 25_028_904,
    "resnext101_32x8d": 88_791_336,
}


def test_registered():
    assert set(TABLE1) <= set(list_models())


@pytest.mark.parametrize("name", sorted(TABLE1))
def test_parameter_count_and_interface(name):
    paper_m, features, family = TABLE1[name]
    model = create_model(name, num_classes=1000)
    n = count_parameters(model)
    assert abs(n - paper_m * 1e6) / (paper_m * 1e6) < 0.02, f"{name}: {n / 1e6:.2f}M vs {paper_m}M"
    if name in TORCHVISION:
        assert n == TORCHVISION[name]
    assert isinstance(model, ISDANet) and model.family == family
    assert model.default_input_size == (3, 224, 224)
    assert model.num_features == features
    assert model.get_classifier() is model.fc and isinstance(model.fc, nn.Linear)
    assert (model.fc.in_features, model.fc.out_features) == (features, 1000)


def test_forward_small_input():
    model = create_model("resnext50_32x4d", num_classes=5, in_channels=1).eval()
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        feats = model.forward_features(x)
        logits = model(x)
    assert feats.shape == (2, model.num_features)
    torch.testing.assert_close(logits, model.fc(feats))
    assert model.default_input_size == (1, 224, 224)


def test_resnet50_all_parameters_get_gradients():
    model = create_model("resnet50", num_classes=4).train()
    x = torch.randn(2, 3, 32, 32)  # batch 2: the last stage is 1x1 and batch norm needs 2 values
    model(x).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing


def test_zero_init_residual_and_memory_efficient_densenet():
    model = create_model("resnet50", num_classes=3, zero_init_residual=True)
    blocks = [m for m in model.modules() if isinstance(m, Bottleneck)]
    assert len(blocks) == 16
    assert all(torch.all(b.bn3.weight == 0) for b in blocks)
    assert all(torch.all(b.bn1.weight == 1) for b in blocks)
    plain = create_model("resnet50", num_classes=3)
    assert all(torch.all(m.bn3.weight == 1) for m in plain.modules() if isinstance(m, Bottleneck))
    # checkpointed dense layers compute the same thing (a small DenseNet, same code path)
    torch.manual_seed(0)
    a = ImageNetDenseNet((2, 3, 2, 2), 8, num_classes=3)
    b = ImageNetDenseNet((2, 3, 2, 2), 8, num_classes=3, memory_efficient=True)
    b.load_state_dict(a.state_dict())
    assert a.num_features == ((((16 + 16) // 2 + 24) // 2 + 16) // 2 + 16)
    x = torch.randn(2, 3, 64, 64)
    ya, yb = a(x), b(x)
    torch.testing.assert_close(ya, yb)
    torch.testing.assert_close(ya, a.fc(a.forward_features(x)))
    ya.sum().backward()
    yb.sum().backward()
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(pa.grad, pb.grad, rtol=1e-4, atol=1e-6, msg=name)
