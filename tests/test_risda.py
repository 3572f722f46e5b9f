"""RISDA (Chen et al., AAAI 2022; issue 23, optional part): the knowledge graph, the reasoned
covariance and prototype shift, the Stage II loss against a float64 brute force written from
the equations of torch_isda/baselines/risda.py, its invariants, and the ``risda`` criterion in
training (stages, the frozen backbone, the pass over the training set, an exact resume)."""

from __future__ import annotations

import json
import os
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from torch_isda import functional as isda_f
from torch_isda.baselines.class_balanced import effective_number_weights
from torch_isda.baselines.risda import (RISDALoss, knowledge_graph, prototype_shift,
                                        reasoned_covariance, risda_logits, tail_classes)
from torch_isda.cli import main
from torch_isda.data import build_augment
from torch_isda.train import Trainer, TrainConfig, resolve_config
from torch_isda.train.criteria import create_criterion, list_criteria
from torch_isda.train.long_tailed import bind_reasoning_source, training_set_statistics
from torch_isda.train.method_names import display_name

D = torch.float64
COUNTS = [40, 25, 9, 3]
LT = {"imbalance": 10, "val_per_class": 5}
FAST = ["--threads", "1", "--quiet", "--device", "cpu", "--dataset-kwargs",
        "imbalance=10,val_per_class=5"]


def _spd(C, A, g):
    m = torch.randn(C, A, A, dtype=D, generator=g)
    return m @ m.transpose(1, 2) / A + 0.1 * torch.eye(A, dtype=D)


def _problem(N=11, A=5, C=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(N, A, dtype=D, generator=g)
    W = torch.randn(C, A, dtype=D, generator=g)
    b = torch.randn(C, dtype=D, generator=g)
    y = torch.arange(N) % C
    confusion = torch.randint(0, 9, (C, C), generator=g).to(D) + 5 * torch.eye(C, dtype=D)
    means = torch.randn(C, A, dtype=D, generator=g)
    return a, W, b, y, confusion, means, _spd(C, A, g)


def _brute_scores(a, W, b, y, K, mu, Sigma, tail, alpha, beta, diagonal=False):
    """s_ij of the module docstring, sample by sample and class by class, in float64."""
    N, C = a.shape[0], W.shape[0]
    s = torch.empty(N, C, dtype=D)
    for i in range(N):
        c = int(y[i])
        if bool(tail[c]):
            cov = sum(K[c, j] * Sigma[j] for j in range(C))
        else:
            cov = Sigma[c]
        if diagonal:
            cov = torch.diag(cov) if cov.dim() == 1 else cov
        delta = sum(K[c, j] * mu[j] for j in range(C)) - mu[c]
        shifted = a[i] + alpha * delta
        for j in range(C):
            d = W[j] - W[c]
            s[i, j] = (W[j] @ shifted + b[j] + beta / 2 * (d @ cov @ d) + alpha * (d @ delta))
    return s


def test_knowledge_graph_normalises_rows_and_keeps_empty_classes_to_themselves():
    K = knowledge_graph(torch.tensor([[3.0, 1.0, 0.0], [0.0, 0.0, 0.0], [2.0, 2.0, 4.0]]))
    assert torch.allclose(K, torch.tensor([[0.75, 0.25, 0.0], [0.0, 1.0, 0.0],
                                           [0.25, 0.25, 0.5]], dtype=D))
    with pytest.raises(ValueError, match="C x C"):
        knowledge_graph(torch.ones(2, 3))
    with pytest.raises(ValueError, match="finite counts >= 0"):
        knowledge_graph(torch.tensor([[1.0, -1.0], [0.0, 1.0]]))


def test_tail_classes_are_all_but_the_most_frequent_head_fraction():
    assert tail_classes([5, 100, 50, 7, 100], 0.4).tolist() == [True, False, True, True, False]
    assert tail_classes([5, 100, 50, 7, 100], 0.01).tolist() == [True, False, True, True, True]
    assert tail_classes(COUNTS, 1.0).tolist() == [False] * 4
    with pytest.raises(ValueError, match="head_fraction"):
        tail_classes(COUNTS, 0.0)


@pytest.mark.parametrize("diagonal", [False, True])
def test_risda_scores_equal_the_brute_force(diagonal):
    a, W, b, y, confusion, means, Sigma = _problem()
    if diagonal:
        Sigma = torch.diagonal(Sigma, dim1=1, dim2=2).clone()
    K, tail = knowledge_graph(confusion), tail_classes(COUNTS, 0.25)
    shift = prototype_shift(K, means)
    cov = reasoned_covariance(Sigma, K, tail)
    got = risda_logits(a, W, b, y, cov, shift, alpha=0.7, beta=1.3,
                       kind="diagonal" if diagonal else "full")
    want = _brute_scores(a, W, b, y, K, means, Sigma, tail, 0.7, 1.3, diagonal)
    assert torch.allclose(got, want, rtol=1e-10, atol=1e-10)


def test_risda_scores_are_differentiable_in_features_and_classifier():
    a, W, b, y, confusion, means, Sigma = _problem(N=5, A=3, C=3)
    K, tail = knowledge_graph(confusion), tail_classes([9, 4, 2], 0.34)
    cov, shift = reasoned_covariance(Sigma, K, tail), prototype_shift(K, means)
    inputs = tuple(t.clone().requires_grad_() for t in (a, W, b))
    assert torch.autograd.gradcheck(
        lambda f, w, bias: risda_logits(f, w, bias, y, cov, shift, 0.6, 0.9), inputs)


def test_one_loss_call_equals_the_brute_force_of_the_estimate_and_the_weighted_bound():
    a, W, b, y, confusion, means, _ = _problem(N=16, A=4, C=4, seed=3)
    loss = RISDALoss(4, 4, COUNTS, alpha0=0.8, beta0=1.2, head_fraction=0.25).double()
    loss.set_reasoning(confusion, means)
    loss.set_progress(0.5)
    got = loss(a, y, W, b)
    K, tail = knowledge_graph(confusion), tail_classes(COUNTS, 0.25)
    shifted = a + 0.4 * prototype_shift(K, means)[y]
    Sigma = torch.stack([torch.cov(shifted[y == c].T, correction=0) for c in range(4)])
    s = _brute_scores(a, W, b, y, K, means, Sigma, tail, 0.4, 0.6)
    w = effective_number_weights(COUNTS, 0.9999)[y]
    want = (w * -torch.log_softmax(s, 1).gather(1, y.view(-1, 1)).squeeze(1)).sum() / w.sum()
    assert torch.allclose(got, want, rtol=1e-9)
    assert torch.allclose(loss.estimator.covariance, Sigma, atol=1e-12)  # the own estimates


def test_zero_strengths_and_no_weights_give_cross_entropy():
    a, W, b, y, confusion, means, _ = _problem(seed=5)
    loss = RISDALoss(5, 4, COUNTS, alpha0=0.0, beta0=0.0, class_beta=0.0).double()
    loss.set_reasoning(confusion, means)
    loss.set_progress(0.9)
    assert torch.allclose(loss(a, y, W, b), F.cross_entropy(a @ W.T + b, y), rtol=1e-12)


def test_identity_graph_is_isda_with_lambda_beta():
    """No confusion: no shift, each class its own covariance: the ISDA bound of Eq. (7)."""
    a, W, b, y, _, means, _ = _problem(seed=6)
    loss = RISDALoss(5, 4, COUNTS, alpha0=0.5, beta0=0.8, class_beta=0.0).double()
    loss.set_reasoning(torch.diag(torch.tensor(COUNTS, dtype=D)), means)
    loss.set_progress(0.5)
    got = loss(a, y, W, b)
    isda = isda_f.augment_logits(a @ W.T + b, W, y, loss.estimator.covariance, 0.4, "full")
    assert torch.allclose(got, F.cross_entropy(isda, y), rtol=1e-12)


def test_bad_reasoning_input_raises_one_line_and_changes_nothing():
    loss = RISDALoss(5, 4, COUNTS)
    for confusion, means, match in ((torch.ones(3, 3), torch.zeros(4, 5), "4 classes"),
                                    (torch.ones(4, 4), torch.zeros(4, 6), "class means"),
                                    (torch.ones(4, 4), torch.full((4, 5), float("nan")),
                                     "NaN")):
        with pytest.raises(ValueError, match=match):
            loss.set_reasoning(confusion, means)
        assert not loss.reasoned and torch.equal(loss.graph, torch.eye(4))
        assert not bool(loss.shift.any())
    with pytest.raises(RuntimeError, match="set_reasoning"):
        loss(torch.zeros(2, 5), torch.tensor([0, 1]), torch.zeros(4, 5))
    with pytest.raises(ValueError, match="kind"):
        RISDALoss(5, 4, COUNTS, kind="lowrank")
    with pytest.raises(ValueError, match="alpha0"):
        RISDALoss(5, 4, COUNTS, alpha0=-1)


def test_the_reasoning_survives_a_state_dict_round_trip():
    a, W, b, y, confusion, means, _ = _problem(seed=7)
    first = RISDALoss(5, 4, COUNTS).double()
    first.set_reasoning(confusion, means)
    second = RISDALoss(5, 4, COUNTS).double()
    second.load_state_dict(first.state_dict())
    assert second.reasoned and torch.equal(second.shift, first.shift)
    first.set_progress(0.5)
    second.set_progress(0.5)
    assert torch.equal(first(a, y, W, b), second(a, y, W, b))


def test_a_risda_step_synchronizes_once():
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks"))
    from _syncs import count_syncs

    a, W, b, y, confusion, means, _ = _problem(seed=8)
    loss = RISDALoss(5, 4, COUNTS)
    loss.set_reasoning(confusion, means)
    loss.set_progress(0.5)
    a, W = a.float(), W.float().requires_grad_()

    def step():
        loss(a, y, W, None).backward()

    step()
    assert count_syncs(step).total == 1


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body, self.fc = nn.Linear(6, 5), nn.Linear(5, 4)

    def get_classifier(self):
        return self.fc


def test_criterion_stages_and_the_frozen_backbone():
    assert "risda" in list_criteria() and display_name("risda(beta0=1)") == "RISDA (beta0=1)"
    crit = create_criterion("risda", 5, 4, class_counts=COUNTS)
    assert crit.first_epoch(200) == 160 and crit.first_epoch(10) == 8
    net, x, y = _Net(), torch.randn(8, 6), torch.arange(8) % 4
    features = net.body(x)
    logits = net.fc(features)
    assert torch.equal(crit(features, logits, y, net), F.cross_entropy(logits, y))  # Stage I
    crit.loss.set_reasoning(torch.ones(4, 4) + torch.eye(4), torch.randn(4, 5))
    crit.set_progress(0.9)
    for classifier_only in (True, False):
        crit.classifier_only = classifier_only
        net.zero_grad(set_to_none=True)
        features = net.body(x)
        crit(features, net.fc(features), y, net).backward()
        assert net.fc.weight.grad is not None
        assert (net.body.weight.grad is None) == classifier_only
    assert crit.log_values()["risda_phase"] == 1.0


def _trainer(tmp_path, loss, epochs=4):
    cfg = resolve_config(TrainConfig(loss=loss, epochs=epochs, threads=1, device="cpu",
                                     out=str(tmp_path / "run"), dataset_kwargs=dict(LT)))
    torch.set_num_threads(1)
    trainer = Trainer(cfg, quiet=True)
    trainer.build()
    return trainer


def test_training_set_statistics_are_the_confusion_and_class_means_of_the_model(tmp_path):
    task = _trainer(tmp_path, "risda").task
    data = task.meta_data
    confusion, means = training_set_statistics(task, data)
    assert task.model.training  # its mode restored
    task.model.eval()
    with torch.no_grad():
        x = build_augment("none", data.mean, data.std)(data.train_images, None)
        features = task.model.forward_features(x).double()
        pred = task.classifier(features.float()).argmax(1)
    y = data.train_labels
    want = torch.zeros(10, 10, dtype=D)
    for t, p in zip(y.tolist(), pred.tolist()):
        want[t, p] += 1
    assert torch.equal(confusion, want)
    assert confusion.sum(1).tolist() == [float(n) for n in task.class_counts]
    want_means = torch.stack([features[y == c].mean(0) for c in range(10)])
    assert torch.allclose(means, want_means, atol=1e-5)


def test_multi_process_runs_refuse_the_frozen_backbone(tmp_path):
    task = _trainer(tmp_path, "risda").task
    task.context = type("Context", (), {"rank": 0, "world_size": 2})()
    with pytest.raises(ValueError, match="classifier_only=True .* DDP refuses"):
        bind_reasoning_source(task, task.meta_data)


def test_risda_run_stage_one_is_cross_entropy_then_stage_two_and_resume_is_exact(tmp_path,
                                                                                 capsys):
    def rows(run):
        return [{k: v for k, v in r.items() if k != "seconds"}
                for r in json.loads((run / "metrics.json").read_text())]

    common = ["--epochs", "4", *FAST]
    straight, resumed, ce = tmp_path / "straight", tmp_path / "resumed", tmp_path / "ce"
    spec = ["--loss", "risda(start=0.5)"]
    assert main(["train", "--out", str(straight), *spec, *common]) == 0
    assert main(["train", "--out", str(ce), "--loss", "ce", *common]) == 0
    got = rows(straight)
    assert [r["risda_phase"] for r in got] == [0.0, 0.0, 1.0, 1.0]
    for mine, plain in zip(got[:2], rows(ce)[:2]):  # Stage I is cross-entropy
        assert mine["train_loss"] == plain["train_loss"]
        assert mine["test_error"] == plain["test_error"]
    assert got[3]["train_loss"] != rows(ce)[3]["train_loss"]
    # a run stopped inside Stage II resumes with the kept graph and prototypes
    assert main(["train", "--out", str(resumed), "--stop-after", "3", *spec, *common]) == 0
    capsys.readouterr()
    assert main(["train", "--out", str(resumed), "--resume", *spec, *common]) == 0
    assert rows(resumed) == got
