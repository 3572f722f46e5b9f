"""``torch_isda.attach`` on real torchvision and timm architectures, one ISDA training step each.

Runs in the ecosystem environment (``bash tools/ecosystem_env.sh``, then
``.venv-eco/bin/python -m pytest -q tests/ecosystem``); skipped where torchvision or timm is
not installed (the main environment). Small variants, 32x32 inputs and 3 classes keep the
CPU time low.

Each test checks, independently of the package, that the features ISDA used are the input
of the layer that produced the logits: a hook of the test's own on the expected classifier
records them, and a fresh :class:`torch_isda.ISDALoss` fed with them gives the same loss.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

torchvision = pytest.importorskip("torchvision")
timm = pytest.importorskip("timm")

import torch_isda  # noqa: E402

pytestmark = pytest.mark.ecosystem

C = 3  # classes
N = 6  # batch: two images per class, so every class covariance is non-zero


def _tv(name):
    from torchvision import models as tvm
    from torchvision.models.convnext import CNBlockConfig

    return {
        "resnet18": lambda: (m := tvm.resnet18(num_classes=C), m.fc),
        "mobilenet_v3_small": lambda: (m := tvm.mobilenet_v3_small(num_classes=C), m.classifier[-1]),
        "efficientnet_b0": lambda: (m := tvm.efficientnet_b0(num_classes=C), m.classifier[-1]),
        "convnext": lambda: (m := tvm.ConvNeXt([CNBlockConfig(16, 32, 1), CNBlockConfig(32, None, 1)],
                                              num_classes=C), m.classifier[-1]),
        "densenet": lambda: (m := tvm.DenseNet(growth_rate=8, block_config=(2, 2),
                                              num_init_features=16, num_classes=C), m.classifier),
        "swin": lambda: (m := tvm.SwinTransformer([4, 4], 16, [1, 1], [1, 2], [2, 2],
                                                  num_classes=C), m.head),
        "vit": lambda: (m := tvm.VisionTransformer(32, 8, 2, 2, 32, 64, num_classes=C),
                        m.heads.head),
    }[name]()


def _timm(name):
    kwargs = {"vit_tiny_patch16_224": {"img_size": 32, "depth": 2}}.get(name, {})
    model = timm.create_model(name, pretrained=False, num_classes=C, **kwargs)
    return model, model.get_classifier()


ARCHITECTURES = [
    *(pytest.param(_tv, n, id=f"torchvision-{n}") for n in
      ("resnet18", "mobilenet_v3_small", "efficientnet_b0", "convnext", "densenet", "swin", "vit")),
    *(pytest.param(_timm, n, id=f"timm-{n}") for n in
      ("resnet18", "vit_tiny_patch16_224", "convnext_atto", "regnetx_002", "efficientnet_b0")),
]


@pytest.mark.parametrize("build, name", ARCHITECTURES)
def test_attach_trains_a_step_with_isda(build, name):
    torch.manual_seed(0)
    model, classifier = build(name)
    assert isinstance(classifier, torch.nn.Linear)
    with torch.no_grad():  # torchvision's ViT zero-initialises its head: then sigma^2 = 0
        classifier.weight.normal_(0.0, 0.05)
    model.train()
    criterion = torch_isda.attach(model, lambda0=0.5, kind="full")
    criterion.set_progress(1.0)
    seen = {}
    handle = classifier.register_forward_hook(
        lambda module, inputs, output: seen.update(features=inputs[0], logits=output))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    first = next(model.parameters())  # the stem (or the class token): the gradient went through
    before = first.detach().clone(), classifier.weight.detach().clone()
    x = torch.randn(N, 3, 32, 32)
    y = torch.arange(N) % C

    logits = model(x)
    loss = criterion(logits, y)
    handle.remove()
    assert criterion.layer is classifier and seen["logits"] is logits
    assert int(criterion.estimator.count.sum()) == N
    reference = torch_isda.ISDALoss(classifier.in_features, C, lambda0=0.5, kind="full")
    reference.set_progress(1.0)
    expected = reference(seen["features"], logits, y, classifier.weight)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    assert torch.isfinite(loss) and loss > F.cross_entropy(logits, y)  # the bound adds sigma^2 >= 0
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    assert not torch.equal(first, before[0]) and not torch.equal(classifier.weight, before[1])


def test_models_whose_logits_are_not_one_linear_give_the_clear_error():
    # no nn.Linear at all: SqueezeNet's classifier is a 1x1 convolution
    with pytest.raises(ValueError, match="could not find the final nn.Linear of SqueezeNet"):
        torch_isda.attach(torchvision.models.squeezenet1_1(num_classes=C))
    # DeiT-distilled averages two heads: the logits are no Linear's unchanged output
    model = timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False, num_classes=C,
                              img_size=32, depth=1)
    criterion = torch_isda.attach(model)
    x, y = torch.randn(N, 3, 32, 32), torch.arange(N) % C
    with pytest.raises((RuntimeError, ValueError), match="not the (unchanged )?output of"):
        criterion(model(x), y)
