"""The cosine classifier of LDAM (Cao et al. 2019, Sec. 3.2): ``z_j = cos(a, w_j)``, for
``ldam_drw(s=30)`` as in the LDAM-DRW paper (issue 23), and its refusal by the criteria that
read the classifier's weights (the ISDA family)."""

import json
import math

import pytest
import torch
from torch import nn

import torch_isda
from torch_isda.models import create_model
from torch_isda.models.cosine_classifier import CosineClassifier, build_classifier
from torch_isda.train import TrainConfig
from torch_isda.train.criteria import check_classifier, create_criterion
from torch_isda.train.resolve import resolve_config

CIFAR_RESNETS = ["resnet8", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110"]


def _cosine(u, v):
    dot = sum(a * b for a, b in zip(u, v))
    return dot / (math.sqrt(sum(a * a for a in u)) * math.sqrt(sum(b * b for b in v)))


def test_logits_are_the_cosines_between_feature_and_class_weight():
    torch.manual_seed(0)
    layer = CosineClassifier(6, 4).double()
    with torch.no_grad():
        layer.weight.mul_(torch.rand(4, 1, dtype=torch.float64) * 5)  # rows of any norm
    a = torch.randn(3, 6, dtype=torch.float64)
    z = layer(a)
    brute = [[_cosine(a[i].tolist(), layer.weight[j].tolist()) for j in range(4)]
             for i in range(3)]
    assert torch.allclose(z, torch.tensor(brute, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(layer(7.5 * a), z, atol=1e-12)  # scale of the feature is ignored
    assert z.abs().max() <= 1.0


def test_initial_rows_are_unit_vectors_and_the_layer_learns():
    layer = CosineClassifier(16, 5)
    assert torch.allclose(layer.weight.norm(dim=1), torch.ones(5), atol=1e-6)
    a = torch.randn(8, 16)
    loss = nn.functional.cross_entropy(30 * layer(a), torch.arange(8) % 5)
    loss.backward()
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name", CIFAR_RESNETS)
def test_cifar_resnets_take_classifier_cosine(name):
    model = create_model(name, 10, in_chans=1, classifier="cosine")
    assert isinstance(model.get_classifier(), CosineClassifier)
    out = model(torch.randn(2, 1, 28, 28))
    assert out.shape == (2, 10) and out.abs().max() <= 1.0 + 1e-6


def test_the_default_classifier_is_unchanged():
    torch.manual_seed(3)
    default = create_model("resnet8", 10)
    torch.manual_seed(3)
    linear = create_model("resnet8", 10, classifier="linear")
    assert type(default.fc) is nn.Linear
    for (k, v), (k2, v2) in zip(default.state_dict().items(), linear.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)


def test_an_unknown_classifier_kind_is_one_clear_error():
    with pytest.raises(ValueError, match="classifier must be one of linear, cosine; got 'cos'"):
        create_model("resnet8", 10, classifier="cos")
    with pytest.raises(ValueError, match="classifier must be one of"):
        build_classifier("Linear", 4, 2)


@pytest.mark.parametrize("loss", ["isda", "ldam_drw+center", "metasaug", "isda+dropout",
                                  "lsoftmax"])
def test_losses_that_read_the_weights_are_refused_when_resolving(loss):
    cfg = TrainConfig(dataset="digits", model="resnet8", loss=loss,
                      model_kwargs={"classifier": "cosine"},
                      dataset_kwargs={"imbalance": 10})
    needing = loss.split("+")[0] if loss != "ldam_drw+center" else None
    if needing is None:  # center reads the features only: accepted
        assert resolve_config(cfg).model_kwargs["classifier"] == "cosine"
        return
    with pytest.raises(ValueError, match=f"{needing} uses the classifier's weights"):
        resolve_config(cfg)


@pytest.mark.parametrize("loss", ["ce", "ldam_drw(s=30)", "balanced_softmax",
                                  "class_balanced", "focal", "ldam_drw(s=30)+dropout"])
def test_losses_of_the_logits_alone_accept_a_cosine_classifier(loss):
    cfg = TrainConfig(dataset="digits", model="resnet8", loss=loss,
                      model_kwargs={"classifier": "cosine"},
                      dataset_kwargs={"imbalance": 10})
    resolved = resolve_config(cfg)
    criterion = create_criterion(resolved.loss, 64, 10, resolved,
                                 class_counts=[100 - 9 * c for c in range(10)])
    check_classifier(criterion, CosineClassifier(64, 10), resolved.loss)  # no error


def test_the_built_criterion_check_names_loss_and_classifier():
    criterion = create_criterion("ce+dropout", 8, 3)
    check_classifier(criterion, CosineClassifier(8, 3), "ce+dropout")
    isda = create_criterion("dropout+isda", 8, 3)
    assert isda.needs_linear_classifier
    with pytest.raises(ValueError, match=r"--loss 'dropout\+isda' needs the model to end in an "
                                         r"nn.Linear .* CosineClassifier"):
        check_classifier(isda, CosineClassifier(8, 3), "dropout+isda")
    check_classifier(isda, nn.Linear(8, 3), "dropout+isda")


def test_attach_refuses_a_model_without_a_linear_classifier():
    model = create_model("resnet8", 10, classifier="cosine")
    with pytest.raises(ValueError, match="nn.Linear"):
        torch_isda.attach(model, lambda0=0.5)


def test_ldam_drw_with_s_30_on_a_cosine_classifier_trains_from_the_command_line(tmp_path):
    from torch_isda.cli import main

    out = tmp_path / "ldam"
    main(["train", "--model", "resnet8", "--model-kwargs", "classifier=cosine",
          "--dataset-kwargs", "imbalance=10", "--loss", "ldam_drw(s=30)", "--epochs", "2",
          "--threads", "1", "--quiet", "--device", "cpu", "--out", str(out)])
    config = json.loads((out / "config.json").read_text())
    assert config["config"]["model_kwargs"]["classifier"] == "cosine"
    rows = json.loads((out / "metrics.json").read_text())
    # it learns: the training error falls well below chance (90 %) in two epochs
    assert len(rows) == 2 and rows[-1]["train_error"] < 40.0 < rows[0]["train_error"]
    state = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=False)
    model_state = state["model"] if "model" in state else state
    assert any(k.endswith("fc.weight") for k in model_state)
    assert not any(k.endswith("fc.bias") for k in model_state)  # the cosine layer has none


def test_semi_supervised_isda_refuses_a_cosine_classifier():
    cfg = TrainConfig(dataset="digits", model="resnet8", loss="ce", semi="pi",
                      model_kwargs={"classifier": "cosine"})
    with pytest.raises(ValueError, match="--semi pi uses the classifier's weights"):
        resolve_config(cfg)
    from torch_isda.semi.loss import semi_supervised_loss  # the library function

    with pytest.raises(TypeError, match="needs a model ending in an nn.Linear"):
        semi_supervised_loss(create_model("resnet8", 10, classifier="cosine"), None, None,
                             torch.zeros(2, 3, 32, 32), torch.zeros(2, dtype=torch.long), [])


@pytest.mark.parametrize("classifier, spec, scale", [
    ("cosine", "ldam_drw", 30.0),             # Cao et al.'s scale on cosine logits
    ("linear", "ldam_drw", 1.0),              # the plain linear layer (as the MetaSAug code)
    ("cosine", "ldam_drw(s=5)", 5.0),         # an explicit s wins
    ("cosine", "ldam_drw+dropout", 30.0)])
def test_ldam_drw_scale_follows_the_classifier_unless_given(classifier, spec, scale):
    cfg = resolve_config(TrainConfig(dataset="digits", model="resnet8", loss=spec,
                                     model_kwargs={"classifier": classifier},
                                     dataset_kwargs={"imbalance": 10}))
    criterion = create_criterion(cfg.loss, 64, 10, cfg, class_counts=[50] * 5 + [5] * 5)
    ldam = next(m for m in criterion.modules() if hasattr(m, "drw_start"))
    assert ldam.s == scale
