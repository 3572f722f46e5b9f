"""Tests of the model zoo: registry, architecture sizes, interface, gradients."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from torch import nn

from torch_isda.models import (
    CifarResNet,
    CifarResNeXt,
    DenseNetBC,
    ISDANet,
    ShakeShake,
    ShakeShakeResNet,
    WideResNet,
    count_macs,
    count_parameters,
    create_model,
    is_model,
    list_models,
    model_entrypoint,
    register_model,
)

EXPECTED_MODELS = [
    "densenet_bc_100_12",
    "digits_cnn",
    "resnet110",
    "resnet20",
    "resnet32",
    "resnet44",
    "resnet56",
    "resnet8",
    "resnext29_8x64d",
    "se_resnet110",
    "shake_shake_26_2x112d",
    "shake_shake_26_2x32d",
    "wrn16_8",
    "wrn28_10",
]

# Every registered name, across all model files (CIFAR zoo above; ImageNet, CNN-13 and
# segmentation models have their own test files).
ALL_MODELS = sorted(
    EXPECTED_MODELS
    + ["cnn13", "deeplabv3_resnet", "pspnet_resnet"]
    + ["densenet121", "densenet265", "resnet50", "resnet101", "resnet152", "resnext50_32x4d", "resnext101_32x8d"]
)

FAMILIES = {
    "resnet",
    "se_resnet",
    "wide_resnet",
    "resnext",
    "densenet",
    "shake_shake",
    "small_cnn",
}

# Parameter counts (millions) for 10 classes: Table 2 of the ISDA paper, and
# He et al. 2016 (Table 6) for the ResNets the ISDA paper does not list.
# ResNet-32 is 0.46M in He et al.; the ISDA paper rounds it to 0.5M.
PAPER_PARAMS_M = {
    "resnet8": 0.075,  # in neither table: He et al.'s counting rule for n = 1 (option A)
    "resnet20": 0.27,
    "resnet32": 0.46,
    "resnet44": 0.66,
    "resnet56": 0.85,
    "resnet110": 1.7,
    "se_resnet110": 1.7,
    "wrn16_8": 11.0,
    "wrn28_10": 36.5,
    "resnext29_8x64d": 34.4,
    "densenet_bc_100_12": 0.8,
    "shake_shake_26_2x32d": 3.0,
    "shake_shake_26_2x112d": 36.4,
}

# "Standard FLOPs" (multiply-accumulates, millions) of Table 3 of the ISDA paper.
PAPER_MACS_M = {
    "resnet32": 69.43,
    "resnet110": 254.20,
    "se_resnet110": 254.73,
    "wrn16_8": 1550.0,
    "wrn28_10": 5250.0,
    "resnext29_8x64d": 5390.0,
    "densenet_bc_100_12": 292.38,
    "shake_shake_26_2x32d": 426.69,
    "shake_shake_26_2x112d": 5130.0,
}

CIFAR_MODELS = sorted(PAPER_PARAMS_M)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


# --------------------------------------------------------------------------- registry


def test_list_models_is_sorted_and_complete() -> None:
    assert list_models() == ALL_MODELS


def test_list_models_pattern() -> None:
    assert list_models("resnet*") == [
        "resnet101", "resnet110", "resnet152", "resnet20", "resnet32", "resnet44", "resnet50", "resnet56",
        "resnet8",
    ]
    assert list_models("nothing*") == []


def test_is_model_and_entrypoint() -> None:
    assert is_model("wrn28_10")
    assert not is_model("wrn28_11")
    assert model_entrypoint("resnet32").__name__ == "resnet32"


def test_unknown_model_error_lists_models_and_suggests() -> None:
    with pytest.raises(ValueError) as excinfo:
        create_model("resnet33", num_classes=10)
    message = str(excinfo.value)
    assert "'resnet33'" in message
    assert "Did you mean 'resnet32'?" in message
    for name in EXPECTED_MODELS:
        assert name in message


def test_unknown_kwarg_raises_type_error() -> None:
    with pytest.raises(TypeError):
        create_model("resnext29_8x64d", num_classes=10, dropout=0.1)


def test_register_model_rejects_conflicts() -> None:
    def resnet20(num_classes: int) -> nn.Module:  # same name, different function
        return nn.Linear(1, num_classes)

    with pytest.raises(ValueError, match="already registered"):
        register_model(resnet20)

    def UpperCase(num_classes: int) -> nn.Module:  # noqa: N802
        return nn.Linear(1, num_classes)

    with pytest.raises(ValueError, match="lower-case"):
        register_model(UpperCase)
    assert list_models() == ALL_MODELS


# ------------------------------------------------------------------ sizes and compute


def test_every_cifar_model_has_a_reference_size() -> None:
    assert set(CIFAR_MODELS) == set(EXPECTED_MODELS) - {"digits_cnn"}


@pytest.mark.parametrize("name", CIFAR_MODELS)
def test_parameter_count_matches_paper(name: str) -> None:
    n_params = count_parameters(create_model(name, num_classes=10))
    expected = PAPER_PARAMS_M[name] * 1e6
    assert abs(n_params - expected) / expected < 0.05, f"{name}: {n_params / 1e6:.3f}M"


@pytest.mark.parametrize("name", sorted(PAPER_MACS_M))
def test_macs_match_paper(name: str) -> None:
    macs = count_macs(create_model(name, num_classes=10))
    expected = PAPER_MACS_M[name] * 1e6
    assert abs(macs - expected) / expected < 0.03, f"{name}: {macs / 1e6:.2f}M"


def test_count_macs_resnet32_and_restores_mode() -> None:
    model = create_model("resnet32", num_classes=10).train()
    macs = count_macs(model, (3, 32, 32))
    assert macs == pytest.approx(69.43e6, rel=0.01)
    assert model.training
    assert all(m.training for m in model.modules())


def test_count_parameters_trainable_only() -> None:
    model = create_model("digits_cnn", num_classes=10)
    total = count_parameters(model)
    model.fc.requires_grad_(False)
    assert count_parameters(model, trainable_only=True) == total - 64 * 10 - 10


# -------------------------------------------------------------------------- interface


@pytest.mark.parametrize("name", EXPECTED_MODELS)
def test_model_interface(name: str) -> None:
    model = create_model(name, num_classes=7)
    assert isinstance(model, ISDANet)
    assert model.family in FAMILIES
    assert isinstance(model.num_features, int)
    assert isinstance(model.fc, nn.Linear)
    assert model.get_classifier() is model.fc
    assert (model.fc.in_features, model.fc.out_features) == (model.num_features, 7)

    # Deterministic initialisation rules.
    assert torch.all(model.fc.bias == 0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)

    # Big models are evaluated on small images to keep the test fast.
    channels, height, width = model.default_input_size
    size = min(height, 8) if name != "digits_cnn" else height
    x = torch.randn(2, channels, size, min(width, size))
    model.eval()
    with torch.no_grad():
        features = model.forward_features(x)
        logits = model(x)
    assert features.shape == (2, model.num_features)
    assert torch.allclose(logits, model.fc(features))


def test_feature_dimensions() -> None:
    expected = {
        "resnet32": 64,
        "se_resnet110": 64,
        "wrn16_8": 512,
        "wrn28_10": 640,
        "resnext29_8x64d": 1024,
        "densenet_bc_100_12": 342,
        "shake_shake_26_2x32d": 128,
        "shake_shake_26_2x112d": 448,
        "digits_cnn": 64,
    }
    for name, dim in expected.items():
        assert create_model(name, num_classes=10).num_features == dim, name


def test_default_input_size_and_in_channels() -> None:
    assert create_model("resnet32", num_classes=10).default_input_size == (3, 32, 32)
    assert create_model("digits_cnn", num_classes=10).default_input_size == (1, 8, 8)
    model = create_model("resnet20", num_classes=10, in_channels=1)
    assert model.default_input_size == (1, 32, 32)
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("name", ["resnet110", "se_resnet110", "wrn16_8", "densenet_bc_100_12"])
def test_dropout_kwarg(name: str) -> None:
    with_dropout = create_model(name, num_classes=10, dropout=0.3)
    without = create_model(name, num_classes=10)
    assert any(isinstance(m, nn.Dropout) and m.p == 0.3 for m in with_dropout.modules())
    assert not any(isinstance(m, nn.Dropout) for m in without.modules())
    assert count_parameters(with_dropout) == count_parameters(without)


@pytest.mark.parametrize(
    "build",
    [
        lambda: CifarResNet(7, 10),
        lambda: WideResNet(12, 2, 10),
        lambda: CifarResNeXt(12, 2, 4, 10),
        lambda: DenseNetBC(99, 12, 10),
        lambda: ShakeShakeResNet(25, 8, 10),
        lambda: CifarResNet(20, 0),
    ],
)
def test_invalid_architecture_arguments(build: Callable[[], nn.Module]) -> None:
    with pytest.raises(ValueError):
        build()


# -------------------------------------------------------------------------- gradients

# Every family at a size that runs in well under a second at batch 2.
GRADIENT_CASES: dict[str, Callable[[], ISDANet]] = {
    "resnet20": lambda: create_model("resnet20", num_classes=10),
    "se_resnet110": lambda: create_model("se_resnet110", num_classes=10),
    "wrn10_2_dropout": lambda: WideResNet(10, 2, num_classes=10, dropout=0.3),
    "resnext11_2x4d": lambda: CifarResNeXt(11, 2, 4, num_classes=10),
    "densenet_bc_100_12": lambda: create_model("densenet_bc_100_12", num_classes=10),
    "shake_shake_26_2x32d": lambda: create_model("shake_shake_26_2x32d", num_classes=10),
    "digits_cnn": lambda: create_model("digits_cnn", num_classes=10),
}


def test_gradient_cases_cover_every_family() -> None:
    assert {build().family for build in GRADIENT_CASES.values()} == FAMILIES


@pytest.mark.parametrize("case", sorted(GRADIENT_CASES))
def test_forward_backward_gives_finite_gradients(case: str) -> None:
    model = GRADIENT_CASES[case]().train()
    x = torch.randn(2, *model.default_input_size)
    target = torch.tensor([1, 3])
    logits = model(x)
    assert logits.shape == (2, 10)
    nn.functional.cross_entropy(logits, target).backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name


# ------------------------------------------------------------------------ shake-shake


def test_shake_shake_eval_is_deterministic_and_train_is_not() -> None:
    model = ShakeShakeResNet(8, 8, num_classes=10)
    x = torch.randn(4, 3, 16, 16)
    model.eval()
    with torch.no_grad():
        first = model(x)
        torch.manual_seed(123)
        second = model(x)
    assert torch.equal(first, second)

    model.train()
    with torch.no_grad():
        assert not torch.allclose(model(x), model(x))


def test_shake_shake_function_training() -> None:
    x1 = torch.randn(5, 3, 4, 4, requires_grad=True)
    x2 = torch.randn(5, 3, 4, 4, requires_grad=True)
    out = ShakeShake.apply(x1, x2, True)

    # Forward: a per-sample convex combination.
    alpha = ((out - x2) / (x1 - x2)).detach()
    assert torch.all((alpha >= 0) & (alpha <= 1))
    per_sample = alpha.flatten(1)
    assert torch.allclose(per_sample, per_sample[:, :1].expand_as(per_sample), atol=1e-4)

    # Backward: an independent per-sample split of the incoming gradient.
    grad = torch.randn_like(out)
    out.backward(grad)
    assert torch.allclose(x1.grad + x2.grad, grad, atol=1e-6)
    beta = (x1.grad / grad).flatten(1)
    assert torch.all((beta >= 0) & (beta <= 1))
    assert torch.allclose(beta, beta[:, :1].expand_as(beta), atol=1e-4)
    assert not torch.allclose(beta[:, 0], per_sample[:, 0])


def test_shake_shake_function_eval_is_exact_average() -> None:
    x1 = torch.randn(3, 2, 2, 2, dtype=torch.double, requires_grad=True)
    x2 = torch.randn(3, 2, 2, 2, dtype=torch.double, requires_grad=True)
    out = ShakeShake.apply(x1, x2, False)
    assert torch.allclose(out, (x1 + x2) / 2)
    assert torch.autograd.gradcheck(lambda a, b: ShakeShake.apply(a, b, False), (x1, x2))


def test_kaiming_initialisation_scale() -> None:
    model = create_model("wrn16_8", num_classes=10)
    conv = model.block2[1].conv1
    fan_out = conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1]
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2.0 / fan_out), rel=0.05)
