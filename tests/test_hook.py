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
        torch_isda.attach(nn.Sequential(nn.Linear(2, 2)))
    crit2 = torch_isda.attach(nn.Sequential(nn.Linear(2, 2)), layer=nn.Linear(2, 2))
    assert crit2.isda.num_classes == 2
