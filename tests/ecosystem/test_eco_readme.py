"""The README's torchvision / timm example, executed, with one ISDA training step per model.
Ecosystem environment only."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

torchvision = pytest.importorskip("torchvision")
timm = pytest.importorskip("timm")

pytestmark = pytest.mark.ecosystem

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_torchvision_timm_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    found = [b for b in blocks if "torchvision.models" in b and "timm.create_model" in b]
    assert len(found) == 1
    torch.manual_seed(0)
    ns: dict = {}
    exec(compile(found[0], str(README), "exec"), ns)
    resnet, convnext = ns["resnet"], ns["convnext"]
    pairs = [(resnet, ns["resnet_criterion"], resnet.fc, 1000, "diagonal"),
             (convnext, ns["convnext_criterion"], convnext.head.fc, 100, "full")]
    for model, criterion, layer, classes, kind in pairs:
        assert criterion.layer is layer and criterion.estimator.kind == kind
        model.train()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
        x, y = torch.randn(4, 3, 64, 64), torch.tensor([0, 1, 0, 1]) % classes
        criterion.set_progress(0.5)
        loss = criterion(model(x), y)
        assert torch.isfinite(loss) and int(criterion.estimator.count.sum()) == 4
        weight = layer.weight.detach().clone()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        assert not torch.equal(layer.weight, weight)
