"""The criterion registry and '+' composition."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from torch_isda import ISDALoss
from torch_isda.models import create_model
from torch_isda.train import TrainConfig
from torch_isda.train.criteria import (
    CompositeCriterion,
    CriterionModifier,
    CrossEntropyCriterion,
    ISDACriterion,
    TrainingCriterion,
    create_criterion,
    list_criteria,
    parse_criterion_spec,
    register_criterion,
    unregister_criterion,
)


class _Double(CriterionModifier):
    """Doubles the features, adds a constant term and a parameter group."""

    def __init__(self, term: float = 1.0, lr: float = 0.5) -> None:
        super().__init__()
        self.term, self.lr = term, lr
        self.centers = nn.Parameter(torch.zeros(3))

    def transform_features(self, features):
        return features * 2

    def forward(self, features, logits, target, model):
        return logits.new_tensor(self.term)

    def parameter_groups(self, config):
        return [{"params": [self.centers], "lr": self.lr}]

    def log_values(self):
        return {"double_term": self.term}


class _Shift(CriterionModifier):
    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes

    def transform_features(self, features):
        return features + 1

    def transform_target(self, target):
        return (target + 1) % self.num_classes


@pytest.fixture
def modifiers():
    register_criterion("t_double")(_Double)
    register_criterion("t_shift")(_Shift)
    yield
    unregister_criterion("t_double")
    unregister_criterion("t_shift")


def _batch(A=16, C=5, N=12):
    model = create_model("digits_cnn", C, width=A // 2)
    x = torch.randn(N, 1, 8, 8)
    y = torch.arange(N) % C
    return model, x, y


def test_builtins_registered_and_built_from_config():
    assert {"ce", "isda"} <= set(list_criteria("primary"))
    assert isinstance(create_criterion("ce", 8, 3), CrossEntropyCriterion)
    cfg = TrainConfig(lambda0=0.75, kind="diagonal", constant_lambda=True)
    crit = create_criterion("isda", 8, 3, cfg)
    assert isinstance(crit, ISDACriterion)
    assert (crit.isda.lambda0, crit.isda.kind, crit.isda.constant_lambda) == (0.75, "diagonal", True)
    crit = create_criterion("isda(lambda0=0.25, kind=shared)", 8, 3, cfg)  # spec args win
    assert (crit.isda.lambda0, crit.isda.kind) == (0.25, "shared")


def test_isda_criterion_matches_isda_loss():
    model, x, y = _batch()
    crit = create_criterion("isda", model.num_features, 5, TrainConfig(lambda0=1.0))
    ref = ISDALoss(model.num_features, 5, lambda0=1.0)
    for c in (crit, ref):
        c.set_progress(0.5)
    f = model.forward_features(x)
    logits = model.fc(f)
    a = crit(f, logits, y, model)
    b = ref(f, logits, y, model.fc.weight)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert crit.log_values() == {"lambda": 0.5}
    assert "isda.estimator.covariance" in crit.state_dict()


def test_composition_chains_hooks_and_sums_terms(modifiers):
    model, x, y = _batch()
    spec = "t_shift + isda(lambda0=0.5) + t_double(term=0.25)"
    crit = create_criterion(spec, model.num_features, 5, TrainConfig())
    assert isinstance(crit, CompositeCriterion)
    assert [type(c).__name__ for c in crit.components] == ["_Shift", "ISDACriterion", "_Double"]
    f = torch.randn(4, model.num_features)
    torch.testing.assert_close(crit.transform_features(f), (f + 1) * 2)  # spec order
    assert crit.transform_target(torch.tensor([0, 4])).tolist() == [1, 0]
    crit.set_progress(0.5)
    assert crit.log_values() == {"lambda": 0.25, "double_term": 0.25}
    feats = crit.transform_features(model.forward_features(x))
    logits = model.fc(feats)
    target = crit.transform_target(y)
    loss = crit(feats, logits, target, model)
    ref = ISDALoss(model.num_features, 5, lambda0=0.5)
    ref.set_progress(0.5)
    torch.testing.assert_close(loss, ref(feats, logits, target, model.fc.weight) + 0.25)
    groups = crit.parameter_groups(TrainConfig())
    assert len(groups) == 1 and groups[0]["lr"] == 0.5
    state = crit.state_dict()
    assert any(k.endswith("estimator.covariance") for k in state)
    assert any(k.endswith("centers") for k in state)


def test_spec_errors_list_available_criteria(modifiers):
    with pytest.raises(ValueError, match=r"Unknown criterion 'foo'.*primary losses: .*ce.*isda"):
        create_criterion("isda+foo", 8, 3)
    with pytest.raises(ValueError, match="no primary loss.*exactly one"):
        create_criterion("t_double", 8, 3)
    with pytest.raises(ValueError, match=r"2 primary losses \(ce, isda\)"):
        create_criterion("ce+isda", 8, 3)
    with pytest.raises(ValueError, match="twice"):
        create_criterion("isda+t_double+t_double", 8, 3)
    with pytest.raises(ValueError, match="bad arguments.*lambda_0.*accepts: lambda0"):
        create_criterion("isda(lambda_0=1)", 8, 3)
    with pytest.raises(ValueError, match="unbalanced"):
        parse_criterion_spec("isda(lambda0=1")
    assert parse_criterion_spec("isda(lambda0=1,kind=diagonal)+t_double") == [
        ("isda", {"lambda0": 1, "kind": "diagonal"}), ("t_double", {})]


def test_registry_rules():
    with pytest.raises(ValueError, match="already registered"):
        @register_criterion("ce")
        class Other(TrainingCriterion):
            def forward(self, features, logits, target, model):
                return F.cross_entropy(logits, target)

    @register_criterion("t_func", primary=False)
    def factory(num_features, num_classes, config, scale=1.0):
        mod = CriterionModifier()
        mod.scale = scale
        return mod

    try:
        assert "t_func" in list_criteria("modifier")
        crit = create_criterion("ce+t_func(scale=3)", 8, 3)
        assert crit.modifiers[0].scale == 3
    finally:
        unregister_criterion("t_func")
    with pytest.raises(ValueError, match="must match"):
        register_criterion("Bad-Name")(CrossEntropyCriterion)


def test_trainer_uses_criterion_parameter_groups(modifiers, tmp_path):
    from torch_isda.train import Trainer, resolve_config

    cfg = resolve_config(TrainConfig(loss="isda+t_double(lr=0.3)", out=str(tmp_path), epochs=1))
    trainer = Trainer(cfg, quiet=True)
    trainer.build()
    groups = trainer.optimizer.param_groups
    assert len(groups) == 2 and groups[1]["lr"] == pytest.approx(0.3)
    assert groups[0]["lr"] == cfg.lr and groups[0]["nesterov"] is True
