"""``isda export`` / torch_isda.cli.export_backbone: torchvision-layout ResNet state dicts (Tables 11-12).

The round trip into torchvision and timm themselves is in tests/ecosystem/."""

from __future__ import annotations

import pytest
import torch

from torch_isda.cli import main
from torch_isda.cli.export_backbone import export_backbone, resnet_architecture, resnet_state_dict
from torch_isda.models import create_model
from torch_isda.models.resnet_imagenet import ImageNetResNet
from torch_isda.train.checkpoint import save_checkpoint


def _tiny(num_classes=5, **kwargs):
    torch.manual_seed(0)
    return ImageNetResNet((1, 2, 1, 1), num_classes, **kwargs)


def _bruteforce_keys(layers, downsample_blocks):
    """The torchvision ResNet key list, written out by hand for a bottleneck network."""
    bn = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    keys = ["conv1.weight"] + [f"bn1.{p}" for p in bn]
    for s, n in enumerate(layers, start=1):
        for j in range(n):
            for c in (1, 2, 3):
                keys += [f"layer{s}.{j}.conv{c}.weight"] + [f"layer{s}.{j}.bn{c}.{p}" for p in bn]
            if (s, j) in downsample_blocks:
                keys += [f"layer{s}.{j}.downsample.0.weight"]
                keys += [f"layer{s}.{j}.downsample.1.{p}" for p in bn]
    return keys + ["fc.weight", "fc.bias"]


def test_state_dict_has_the_torchvision_layout_and_values():
    model = _tiny()
    state = resnet_state_dict(model)
    expected = _bruteforce_keys((1, 2, 1, 1), {(1, 0), (2, 0), (3, 0), (4, 0)})
    assert sorted(state) == sorted(expected)
    for key, value in model.state_dict().items():
        assert torch.equal(state[key], value) and state[key].data_ptr() != value.data_ptr()
    info = resnet_architecture(state)
    assert info == {"block": "bottleneck", "layers": (1, 2, 1, 1), "groups": 1,
                    "width_per_group": 64, "num_classes": 5, "name": None}
    backbone = resnet_state_dict(model, "timm", classifier=False)
    assert set(backbone) == set(expected) - {"fc.weight", "fc.bias"}
    assert resnet_architecture(backbone)["num_classes"] is None


@pytest.mark.parametrize("model, name, groups, width", [
    ("resnet50", "resnet50", 1, 64), ("resnet101", "resnet101", 1, 64),
    ("resnext50_32x4d", "resnext50_32x4d", 32, 4), ("resnext101_32x8d", "resnext101_32x8d", 32, 8),
])
def test_registry_models_are_named(model, name, groups, width):
    with torch.device("meta"):
        state = create_model(model, num_classes=7).state_dict()
    info = resnet_architecture(state)
    assert (info["name"], info["groups"], info["width_per_group"], info["num_classes"]) == (
        name, groups, width, 7)


def test_official_and_wrapped_checkpoints_export_the_same_weights():
    model = _tiny()
    ours = resnet_state_dict(model)
    official = {"epoch": 3, "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}
    compiled = {"model": {f"_orig_mod.{k}": v for k, v in model.state_dict().items()}}
    for source in (official, compiled):
        other = resnet_state_dict(source)
        assert other.keys() == ours.keys()
        assert all(torch.equal(other[k], ours[k]) for k in ours)


def test_bad_weights_are_named():
    with pytest.raises(ValueError, match="unknown export format 'onnx'"):
        resnet_state_dict(_tiny(), "onnx")
    cifar = create_model("resnet20", num_classes=10)
    with pytest.raises(ValueError, match="not a torchvision/timm-layout ImageNet ResNet"):
        resnet_state_dict(cifar)
    state = _tiny().state_dict()
    missing = {k: v for k, v in state.items() if k != "layer2.1.bn2.running_var"}
    with pytest.raises(ValueError, match=r"missing keys: layer2\.1\.bn2\.running_var"):
        resnet_state_dict(missing)
    extra = {**state, "layer3.0.se.fc.weight": torch.zeros(1)}
    with pytest.raises(ValueError, match=r"unexpected keys: layer3\.0\.se\.fc\.weight"):
        resnet_state_dict(extra)
    gap = {k: v for k, v in state.items() if not k.startswith("layer2.0.")}
    with pytest.raises(ValueError, match="blocks of layer2 are not numbered"):
        resnet_state_dict(gap)
    with pytest.raises(ValueError, match="classifier needs both"):
        resnet_state_dict({k: v for k, v in state.items() if k != "fc.bias"})


def test_isda_export_command(tmp_path, capsys):
    model = _tiny(num_classes=4)
    run = tmp_path / "run"
    save_checkpoint({"epoch": 1, "model": model.state_dict(), "optimizer": {}}, run / "checkpoint.pt")
    out = tmp_path / "backbone.pth"
    assert main(["export", str(run), "--format", "torchvision", "--out", str(out)]) == 0
    assert "fc: 4 classes" in capsys.readouterr().out
    state = torch.load(out, weights_only=True)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    # not a ResNet: clear error, nothing written
    bad = tmp_path / "cifar.pt"
    torch.save(create_model("resnet20", num_classes=10).state_dict(), bad)
    assert main(["export", str(bad), "--out", str(tmp_path / "x.pth")]) == 2
    assert "not a torchvision/timm-layout" in capsys.readouterr().err
    assert not (tmp_path / "x.pth").exists()
    # pickled objects (an official checkpoint as saved): the message says what to do
    pickled = tmp_path / "official.pth.tar"
    torch.save({"state_dict": model.state_dict(), "criterion": torch.nn.Identity()}, pickled)
    assert main(["export", str(pickled), "--out", str(tmp_path / "y.pth")]) == 2
    assert "save checkpoint['state_dict'] alone" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "nothing"), "--out", str(tmp_path / "z.pth")]) == 2


def test_export_backbone_from_a_model(tmp_path):
    info = export_backbone(_tiny(), tmp_path / "b.pth", "timm", classifier=False)
    assert info["format"] == "timm" and info["num_classes"] is None
    assert info["keys"] == len(torch.load(tmp_path / "b.pth", weights_only=True))
