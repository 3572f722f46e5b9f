"""``isda export`` into torchvision and timm themselves (Tables 11-12): exact round trips and a
torchvision Faster R-CNN built on the exported backbone. Ecosystem environment only."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

torchvision = pytest.importorskip("torchvision")
timm = pytest.importorskip("timm")

from torch_isda.cli import main  # noqa: E402
from torch_isda.models import create_model  # noqa: E402
from torch_isda.train.checkpoint import save_checkpoint  # noqa: E402

pytestmark = pytest.mark.ecosystem

PAGE = Path(__file__).resolve().parents[2] / "docs" / "reproduce" / "table11-12-detection.md"


def _trained_like(name, num_classes):
    """A model of ours with non-trivial batch-norm statistics (as after training)."""
    torch.manual_seed(0)
    model = create_model(name, num_classes=num_classes)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
                m.num_batches_tracked.fill_(7)
    return model.eval()


def _export(tmp_path, model, fmt, *extra):
    run = tmp_path / "run"
    save_checkpoint({"epoch": 1, "model": model.state_dict()}, run / "checkpoint.pt")
    out = tmp_path / f"{fmt}.pth"
    assert main(["export", str(run), "--format", fmt, "--out", str(out), *extra]) == 0
    return torch.load(out, weights_only=True)


@pytest.mark.parametrize("name", ["resnet50", "resnext50_32x4d"])
def test_round_trip_into_torchvision_and_timm_gives_identical_outputs(tmp_path, name):
    ours = _trained_like(name, num_classes=10)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = ours(x)
    targets = {"torchvision": getattr(torchvision.models, name)(num_classes=10),
               "timm": timm.create_model(name, pretrained=False, num_classes=10)}
    for fmt, target in targets.items():
        target.load_state_dict(_export(tmp_path, ours, fmt))  # strict: every key, every shape
        with torch.no_grad():
            assert torch.equal(target.eval()(x), expected), fmt


def _detection_example() -> str:
    """The page's torchvision example (the one python block that builds the detector)."""
    blocks = re.findall(r"```python\n(.*?)```", PAGE.read_text(encoding="utf-8"), re.S)
    found = [b for b in blocks if "fasterrcnn_resnet50_fpn" in b]
    assert len(found) == 1
    return found[0]


def test_faster_rcnn_on_the_exported_backbone_trains_a_step(tmp_path, monkeypatch):
    ours = _trained_like("resnet50", num_classes=10)
    backbone = _export(tmp_path, ours, "torchvision", "--no-classifier")
    assert not any(k.startswith("fc.") for k in backbone)
    monkeypatch.chdir(tmp_path)
    torch.save(backbone, "resnet50_isda_backbone.pth")
    namespace: dict = {}
    exec(compile(_detection_example(), str(PAGE), "exec"), namespace)  # the documented recipe
    detector = namespace["detector"]
    body = detector.backbone.body.state_dict()
    for key, value in backbone.items():  # every backbone tensor arrived
        if key in body:
            assert torch.equal(body[key], value), key
    assert set(backbone) - set(body) <= {k for k in backbone if k.endswith("num_batches_tracked")}
    # one training step on a synthetic detection batch (small images for the CPU)
    detector.transform.min_size, detector.transform.max_size = (96,), 96
    torch.manual_seed(0)
    images = [torch.rand(3, 96, 96), torch.rand(3, 80, 96)]
    targets = [{"boxes": torch.tensor([[10.0, 12.0, 50.0, 60.0]]), "labels": torch.tensor([1])},
               {"boxes": torch.tensor([[5.0, 5.0, 40.0, 30.0], [30.0, 20.0, 90.0, 70.0]]),
                "labels": torch.tensor([2, 1])}]
    detector.train()
    trainable = [p for p in detector.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in trainable]
    optimizer = torch.optim.SGD(trainable, lr=0.01, momentum=0.9)
    losses = detector(images, targets)
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    total = sum(losses.values())
    assert torch.isfinite(total)
    optimizer.zero_grad()
    total.backward()
    optimizer.step()
    assert sum(not torch.equal(p, b) for p, b in zip(trainable, before)) > len(trainable) // 2
