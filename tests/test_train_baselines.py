"""The paper's comparison methods (Tables 4 and 5) as ``isda train`` / ``isda compare``
choices: the baseline criteria of ``torch_isda.train.criteria.baselines`` and the
non-semantic augmentations through ``--augment``."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch
import torch.nn.functional as F

from torch_isda.cli import main
from torch_isda.data import AutoAugment, Cutout, RandAugment, build_augment
from torch_isda.train import TrainConfig
from torch_isda.train.compare import run_comparison
from torch_isda.train.criteria import (
    CriterionModifier,
    create_criterion,
    criterion_info,
    list_criteria,
    register_criterion,
    unregister_criterion,
)
from torch_isda.train import Trainer, resolve_config

FAST = ["--epochs", "1", "--threads", "1", "--quiet"]
PRIMARIES = ("label_smoothing", "focal", "lq", "lsoftmax")
MODIFIERS = ("center", "disturb_label", "dropout")


def _finite_run(run):
    rows = json.loads((run / "metrics.json").read_text())
    result = json.loads((run / "result.json").read_text())
    assert len(rows) == 1
    for key in ("train_loss", "train_error", "test_loss", "test_error"):
        assert math.isfinite(rows[0][key]), key
    assert 0.0 <= result["final_error"] <= 100.0
    return rows[0], result


def _trainer(tmp_path, loss, **kwargs):
    cfg = resolve_config(TrainConfig(loss=loss, epochs=1, threads=1, out=str(tmp_path / "run"),
                                     **kwargs))
    trainer = Trainer(cfg, quiet=True)
    torch.set_num_threads(1)
    trainer.build()
    return trainer


class _Record(CriterionModifier):
    """Records what flows through the hooks (for composition tests)."""

    def __init__(self) -> None:
        super().__init__()
        self.features_in, self.targets_in, self.targets_seen = [], [], []

    def transform_features(self, features):
        self.features_in.append(features.detach().clone())
        return features

    def transform_target(self, target):
        self.targets_in.append(target.clone())
        return target

    def forward(self, features, logits, target, model):
        self.targets_seen.append(target.clone())
        return None


@pytest.fixture
def record():
    register_criterion("t_record")(_Record)
    yield
    unregister_criterion("t_record")


# ---------------------------------------------------------------------------- registry


def test_registered_names_and_roles():
    assert set(PRIMARIES) <= set(list_criteria("primary"))
    assert set(MODIFIERS) <= set(list_criteria("modifier"))
    for name in (*PRIMARIES, *MODIFIERS):
        assert criterion_info(name).doc, name  # a one-line description for the help


def test_defaults_follow_appendix_c():
    focal = create_criterion("focal", 64, 10).loss
    assert (focal.alpha, focal.gamma) == (0.5, 1.0)
    assert create_criterion("lq", 64, 10).loss.q == 0.4
    assert create_criterion("label_smoothing", 64, 10).loss.epsilon == 0.1
    assert create_criterion("lsoftmax", 64, 10).loss.margin == 2
    parts = create_criterion("ce+center+disturb_label+dropout", 64, 10).components
    center, disturb, dropout = parts[1:]
    assert center.lr == 0.5 and center.center.centers.shape == (10, 64)
    assert disturb.disturb.rate == 0.05 and disturb.disturb.num_classes == 10
    assert dropout.dropout.p == 0.3


def test_spec_overrides_reach_the_modules():
    focal = create_criterion("focal(gamma=2, alpha=[1,1,1,1,1,1,1,1,1,2])", 64, 10).loss
    assert focal.gamma == 2.0 and focal.alpha.tolist()[-1] == 2.0
    assert create_criterion("lq(q=0.7)", 64, 10).loss.q == 0.7
    assert create_criterion("label_smoothing(epsilon=0.2)", 64, 10).loss.epsilon == 0.2
    ls = create_criterion("lsoftmax(margin=3,power=35,anneal=iteration)", 64, 10)
    assert (ls.loss.margin, ls.loss.power, ls.anneal) == (3, 35.0, "iteration")
    comp = create_criterion("isda+center(lr=0.2,loss_weight=0.01)+dropout(p=0.1)"
                            "+disturb_label(rate=0.1)", 64, 10)
    _, center, dropout, disturb = comp.components
    assert (center.lr, center.center.loss_weight) == (0.2, 0.01)
    assert dropout.dropout.p == 0.1 and disturb.disturb.rate == 0.1
    with pytest.raises(ValueError, match="it accepts: alpha, gamma"):
        create_criterion("focal(gama=2)", 64, 10)
    for bad, match in (("lq(q=0)", "q must lie"), ("ce+dropout(p=1.5)", "dropout probability"),
                       ("ce+disturb_label(rate=-1)", "rate must lie"),
                       ("lsoftmax(margin=1.5)", "margin must be an integer"),
                       ("lsoftmax(anneal=linear)", "anneal must be"),
                       ("ce+center(lr=0)", "center lr must be > 0")):
        with pytest.raises(ValueError, match=match):
            create_criterion(bad, 64, 10)


def test_primary_losses_match_their_definitions():
    torch.manual_seed(1)
    model = torch.nn.Linear(6, 4)
    model.get_classifier = lambda: model
    feats = torch.randn(9, 6)
    logits = model(feats)
    y = torch.randint(0, 4, (9,))
    ce = F.cross_entropy(logits, y)
    torch.testing.assert_close(create_criterion("focal(alpha=1,gamma=0)", 6, 4)(feats, logits, y, model), ce)
    torch.testing.assert_close(create_criterion("label_smoothing(epsilon=0.3)", 6, 4)(feats, logits, y, model),
                               F.cross_entropy(logits, y, label_smoothing=0.3))
    p_y = logits.softmax(1).gather(1, y[:, None]).squeeze(1)
    torch.testing.assert_close(create_criterion("lq(q=0.5)", 6, 4)(feats, logits, y, model),
                               ((1 - p_y ** 0.5) / 0.5).mean())
    # margin 1 is the plain softmax; margin 2 with the margin fully on (beta ~ 0) is larger
    torch.testing.assert_close(create_criterion("lsoftmax(margin=1)", 6, 4)(feats, logits, y, model), ce)
    ls = create_criterion("lsoftmax", 6, 4)
    ls.set_progress(0.9)
    assert ls(feats, logits, y, model) > ce


def test_lsoftmax_annealing_follows_progress_or_iterations():
    model = torch.nn.Linear(6, 4)
    model.get_classifier = lambda: model
    feats, y = torch.randn(5, 6), torch.randint(0, 4, (5,))
    ls = create_criterion("lsoftmax", 6, 4)
    betas = []
    for t in (0.0, 0.05, 0.5):
        ls.set_progress(t)
        ls(feats, model(feats), y, model)
        betas.append(ls.log_values()["lsoftmax_beta"])
    assert betas[0] > 999 and 1 < betas[1] < 500 and betas[2] < 1e-3  # stretched schedule
    it = create_criterion("lsoftmax(anneal=iteration)", 6, 4)
    for t in (0.0, 0.5, 0.9):
        it.set_progress(t)  # ignored: counts calls like the official layer
        it(feats, model(feats), y, model)
    assert int(it.loss.iteration) == 3 and "loss.iteration" in it.state_dict()


# ---------------------------------------------------------------------------- end to end


@pytest.mark.parametrize("loss", ["label_smoothing", "focal(gamma=2)", "lq", "lsoftmax",
                                  "ce+center", "ce+disturb_label", "ce+dropout",
                                  "isda+dropout", "isda+center+disturb_label"])
def test_each_criterion_trains_one_epoch(tmp_path, loss):
    run = tmp_path / "run"
    assert main(["train", "--loss", loss, "--out", str(run), *FAST]) == 0
    row, result = _finite_run(run)
    assert result["loss"] == loss
    if loss == "lsoftmax":
        assert 0.0 <= row["lsoftmax_beta"] < 1000.0


def test_center_loss_has_its_own_param_group(tmp_path):
    trainer = _trainer(tmp_path, "ce+center")
    groups = trainer.optimizer.param_groups
    centers = trainer.task.criterion.components[1].center.centers
    assert len(groups) == 2 and groups[1]["params"] == [centers]
    assert groups[1]["lr"] == 0.5 and groups[1]["weight_decay"] == 0.0
    assert groups[0]["lr"] == trainer.config.lr and groups[0]["weight_decay"] > 0
    assert all(p is not centers for p in groups[0]["params"])
    trainer.train_epoch(0)
    assert centers.abs().sum() > 0  # the centers were learned
    override = _trainer(tmp_path, "ce+center(lr=0.2,momentum=0)")
    assert override.optimizer.param_groups[1]["lr"] == 0.2
    assert override.optimizer.param_groups[1]["momentum"] == 0.0


def test_disturb_label_changes_training_targets_only(tmp_path, record):
    trainer = _trainer(tmp_path, "ce+t_record+disturb_label(rate=0.5)")
    rec = trainer.task.criterion.components[1]
    trainer.train_epoch(0)
    true, seen = torch.cat(rec.targets_in), torch.cat(rec.targets_seen)
    assert true.shape == seen.shape == (trainer.task.train_size,)
    changed = (true != seen).float().mean().item()
    assert 0.35 < changed < 0.55  # rate * (C - 1) / C = 0.45
    # the true labels come in (the training error is measured on them) ...
    assert torch.equal(true.sort().values, trainer.task.train_batches.labels.sort().values)
    # ... and evaluation never disturbs anything
    n_calls = len(rec.targets_in)
    trainer.evaluate()
    assert len(rec.targets_in) == n_calls
    disturb = trainer.task.criterion.components[2]
    disturb.eval()
    y = torch.arange(10).repeat(20)
    assert torch.equal(disturb.transform_target(y), y)
    disturb.train()
    assert not torch.equal(disturb.transform_target(y), y)


def test_isda_sees_the_dropped_features(tmp_path, record, monkeypatch):
    trainer = _trainer(tmp_path, "isda+t_record+dropout(p=0.5)")
    rec = trainer.task.criterion.components[1]
    estimator = trainer.task.criterion.main.isda.estimator
    received = []

    def spying(name):  # ISDALoss folds batches through update_scanned (one scan per step)
        original = getattr(estimator, name)

        def spy(features, labels, *args, **kwargs):
            received.append(features.detach().clone())
            return original(features, labels, *args, **kwargs)
        return spy

    for name in ("update", "update_scanned"):
        monkeypatch.setattr(estimator, name, spying(name))
    trainer.train_epoch(0)
    assert len(received) == len(rec.features_in) > 0
    before, after = torch.cat(rec.features_in), torch.cat(received)
    nonzero = before != 0
    kept = after[nonzero] != 0
    assert 0.4 < kept.float().mean().item() < 0.6  # half of the units dropped
    # kept units are scaled by 1 / (1 - p), dropped ones are exactly zero
    torch.testing.assert_close(after[nonzero][kept], before[nonzero][kept] * 2.0)


# ---------------------------------------------------------------------------- augmentations


def test_augment_spec_options():
    aug = build_augment("crop(padding=1)+cutout(size=4,holes=2)")
    assert (aug.base, aug.extras, aug.padding) == ("crop", ("cutout",), 1)
    assert isinstance(aug.cutout, Cutout) and (aug.cutout.size, aug.cutout.holes) == (4, 2)
    ra = build_augment("crop_flip+randaugment(n=1,m=5)")
    assert isinstance(ra.policy, RandAugment) and (ra.policy.num_ops, ra.policy.magnitude) == (1, 5)
    assert isinstance(build_augment("crop_flip+autoaugment(fill=0)+cutout").policy, AutoAugment)
    # options in the name win over keyword arguments
    assert build_augment("cutout(size=3)", cutout_size=6).cutout.size == 3
    for bad, match in (("crop+cutout(sizes=4)", "unknown option 'sizes'.*accepts: size, holes"),
                       ("crop+cutout(size=4.5)", "cutout size must be an integer"),
                       ("crop(padding=-1)", "padding must be an integer"),
                       ("crop+cutout(4)", "key=value"),
                       ("crop+blur(size=2)", "unknown augmentation")):
        with pytest.raises(ValueError, match=match):
            build_augment(bad)
    # why digits needs a smaller hole: the default 16x16 hole blanks a whole 8x8 image
    x = torch.full((64, 1, 8, 8), 200, dtype=torch.uint8)
    g = torch.Generator().manual_seed(0)
    assert int(build_augment("cutout")(x, g).max()) == 0
    holes = build_augment("cutout(size=4)")(x, g)
    assert 0 < (holes == 0).float().mean().item() < 0.25


@pytest.mark.parametrize("augment", ["crop_flip+cutout", "crop_flip+autoaugment+cutout",
                                     "crop_flip+randaugment", "crop(padding=1)+cutout(size=4)"])
def test_augmentations_train_on_digits(tmp_path, augment):
    run = tmp_path / "run"
    assert main(["train", "--loss", "isda", "--augment", augment, "--out", str(run), *FAST]) == 0
    _finite_run(run)
    saved = json.loads((run / "config.json").read_text())
    assert saved["config"]["augment"] == saved["resolved"]["augment"] == augment


def test_bad_augment_option_is_a_clear_cli_error(tmp_path, capsys):
    assert main(["train", "--augment", "crop+cutout(width=4)", "--out", str(tmp_path / "r"),
                 *FAST]) == 2
    assert "unknown option 'width'" in capsys.readouterr().err


# ---------------------------------------------------------------------------- compare


def test_compare_table_with_many_methods(tmp_path):
    losses = ["ce", "isda+dropout", "focal(gamma=2)", "lq", "ce+center", "ce+disturb_label"]
    result = run_comparison(TrainConfig(epochs=1, threads=1), ",".join(losses), 1,
                            tmp_path / "cmp", quiet=True)
    md = result.table
    assert "| Method | Spec | digits_cnn (" in md and "| Network |" not in md  # Table 5 style
    summary = md.split("| Method | Spec | Final error")[0]
    names = ["Basic", "ISDA + Dropout", "Focal Loss (gamma=2)", "L_q Loss", "Center Loss",
             "Disturb Label"]
    for name, spec in zip(names, losses):  # one row per method: paper name, then its spec
        assert f"| {name} | `{spec}` | " in summary, spec
    assert "**" not in summary  # one seed: no standard deviation, so no clear best
    assert "With one seed there is no standard deviation, so none is in bold" in summary
    rows = list(csv.DictReader((tmp_path / "cmp" / "table.csv").open()))
    assert [r["method"] for r in rows] == losses
    assert all(math.isfinite(float(r["final_error_mean"])) for r in rows)
    assert (tmp_path / "cmp" / "focal_gamma=2" / "seed0" / "result.json").is_file()


def test_resume_is_exact_with_stateful_baselines(tmp_path):
    """The L-Softmax counter, the centers (and their optimizer group) and the RNG draws of
    dropout / DisturbLabel survive a checkpoint: a resumed run equals a straight one."""
    loss = ["--loss", "lsoftmax(anneal=iteration)+center+dropout+disturb_label(rate=0.2)"]
    a, b = tmp_path / "straight", tmp_path / "resumed"
    common = ["--epochs", "2", "--threads", "1", "--quiet", *loss]
    assert main(["train", "--out", str(a), *common]) == 0
    assert main(["train", "--out", str(b), "--stop-after", "1", *common]) == 0
    assert main(["train", "--out", str(b), "--resume", *common]) == 0

    def rows(run):
        return [{k: v for k, v in r.items() if k != "seconds"}
                for r in json.loads((run / "metrics.json").read_text())]

    assert rows(a) == rows(b) and len(rows(a)) == 2


def test_learned_covariance_follows_the_isda_lambda_schedule():
    from torch_isda.train.criteria.explicit_augmentation import LearnedCovarianceCriterion

    crit = LearnedCovarianceCriterion(4, 3, lambda0=0.8)
    crit.set_progress(0.25)
    assert crit.ratio == pytest.approx(0.2)
    assert LearnedCovarianceCriterion(4, 3, lambda0=0.8, constant_lambda=True).ratio == 0.8
    with pytest.raises(ValueError, match=r"progress t/T must lie in \[0, 1\]"):
        crit.set_progress(1.5)
    assert crit.ratio == pytest.approx(0.2)  # unchanged by the refused call
