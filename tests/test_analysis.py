"""Analyses of Section 6.5 / Table 3: ``isda analyze ...`` and ``isda bench overhead``."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from torch_isda.analysis.overhead import BenchCase, isda_extra_macs, theoretical
from torch_isda.cli import main
from torch_isda.functional import expected_cross_entropy_mc, isda_cross_entropy
from torch_isda.train import TrainConfig, train
from torch_isda.train.criteria import create_criterion
from torch_isda.train import Trainer

PNG = b"\x89PNG\r\n\x1a\n"
TINY = ["--epochs", "1", "--threads", "1", "--batch-size", "256"]  # 5 steps per epoch


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _check_outputs(out, stem):
    png = (out / f"{stem}.png").read_bytes()
    assert png[:8] == PNG and len(png) > 5000
    md = (out / f"{stem}.md").read_text()
    assert md.count("|") > 10
    rows = _rows(out / f"{stem}.csv")
    assert rows
    return md, rows


# --------------------------------------------------------------------------- Monte Carlo


def _gauss_hermite_softplus(d: float, s: float, n: int = 120) -> tuple[float, float]:
    """E and Var of softplus(d + s g), g ~ N(0, 1), by Gauss-Hermite quadrature."""
    x, w = np.polynomial.hermite.hermgauss(n)
    vals = np.logaddexp(0.0, d + s * math.sqrt(2.0) * x)
    mean = float(np.sum(w * vals) / math.sqrt(math.pi))
    second = float(np.sum(w * vals ** 2) / math.sqrt(math.pi))
    return mean, second - mean ** 2


def test_monte_carlo_matches_closed_form_for_two_classes():
    # C = 2, shared covariance: CE(W a~ + b, y) = softplus(d + s g) with
    # d = (w_k - w_y).a + b_k - b_y and s^2 = lambda (w_k - w_y)^T Sigma (w_k - w_y)
    torch.manual_seed(1)
    A, ratio, samples = 4, 0.8, 20000
    W = torch.randn(2, A, dtype=torch.float64)
    b = torch.randn(2, dtype=torch.float64)
    L = torch.randn(A, A, dtype=torch.float64)
    cov = L @ L.T / A
    feats = torch.randn(3, A, dtype=torch.float64)
    target = torch.tensor([0, 1, 0])
    gen = torch.Generator().manual_seed(3)
    mc = expected_cross_entropy_mc(feats, W, b, target, cov, ratio, samples=samples,
                                   kind="shared", generator=gen, reduction="none")
    bound = isda_cross_entropy(feats @ W.T + b, W, target, cov, ratio, "shared", reduction="none")
    for i in range(3):
        y, k = int(target[i]), 1 - int(target[i])
        v = W[k] - W[y]
        d = float(v @ feats[i] + b[k] - b[y])
        s = math.sqrt(ratio * float(v @ cov @ v))
        exact, var = _gauss_hermite_softplus(d, s)
        se = math.sqrt(var / samples)
        assert abs(float(mc[i]) - exact) < 4 * se, (float(mc[i]), exact, se)
        # the ISDA bound is log(1 + exp(d + s^2 / 2)) >= the exact expectation (Jensen)
        assert float(bound[i]) == pytest.approx(math.log1p(math.exp(d + s * s / 2)), rel=1e-9)
        assert float(bound[i]) > exact


# --------------------------------------------------------------------------- criteria


class _Tiny(nn.Module):
    def __init__(self, A: int, C: int) -> None:
        super().__init__()
        self.fc = nn.Linear(A, C)

    def get_classifier(self) -> nn.Linear:
        return self.fc


def test_explicit_sda_loss_is_unbiased_for_eq6():
    torch.manual_seed(2)
    A, C, N = 5, 3, 6
    config = TrainConfig(lambda0=0.7, kind="full", constant_lambda=True)
    crit = create_criterion("explicit_sda(m=2)", A, C, config)
    L = torch.randn(C, A, A)
    crit.isda.estimator.covariance.copy_(L @ L.transpose(1, 2) / A)
    crit.eval()  # no estimator update: a fixed covariance
    model = _Tiny(A, C)
    feats = torch.randn(N, A)
    target = torch.tensor([0, 1, 2, 0, 1, 2])
    logits = model.fc(feats)
    with torch.no_grad():
        draws = torch.stack([crit(feats, logits, target, model) for _ in range(3000)])
    expected = expected_cross_entropy_mc(feats, model.fc.weight, model.fc.bias, target,
                                         crit.isda.estimator.covariance, 0.7, samples=40000,
                                         generator=torch.Generator().manual_seed(0))
    se = float(draws.std()) / math.sqrt(len(draws))
    assert abs(float(draws.mean()) - float(expected)) < 4 * se + 0.005
    bound = isda_cross_entropy(logits, model.fc.weight, target, crit.isda.estimator.covariance, 0.7)
    assert float(bound.detach()) > float(draws.mean())  # Jensen: ISDA's bound lies above Eq. (6)
    # the gradient flows through the features (reparameterisation) and into W, b
    f = feats.clone().requires_grad_(True)
    crit(f, model.fc(f), target, model).backward()
    assert f.grad.abs().sum() > 0 and model.fc.weight.grad.abs().sum() > 0
    # in training mode the estimator is updated, as ISDA's
    crit.train()
    crit(feats, logits, target, model)
    assert int(crit.isda.estimator.count.sum()) == N


def test_learned_cov_criterion_gradients_and_bound():
    torch.manual_seed(3)
    A, C = 4, 3
    config = TrainConfig(lambda0=0.5, constant_lambda=True)
    model = _Tiny(A, C)
    feats = torch.randn(5, A)
    target = torch.tensor([0, 1, 2, 0, 1])
    implicit = create_criterion("learned_cov(m=inf,beta=0,std=0.3)", A, C, config)
    with torch.no_grad():
        implicit.D.add_(0.1 * torch.randn(C, A, A))
    loss = implicit(feats, model.fc(feats), target, model)
    with torch.no_grad():
        sigma = implicit.D @ implicit.D.transpose(1, 2)
        expected = isda_cross_entropy(model.fc(feats), model.fc.weight, target, sigma, 0.5)
    assert float(loss.detach()) == pytest.approx(float(expected), rel=1e-5)
    loss.backward()
    assert implicit.D.grad.abs().sum() > 0  # the core's autograd path reaches D
    explicit = create_criterion("learned_cov(m=3,std=0.2)", A, C, config)
    loss = explicit(feats, model.fc(feats), target, model)
    loss.backward()
    assert explicit.D.grad[:3].abs().sum() > 0
    assert explicit.parameter_groups(config)[0]["weight_decay"] == 0.0
    # the entropy hinge is zero at the margin and pushes a shrunken covariance back up
    assert float(explicit.uncertainty_loss(target).detach()) == pytest.approx(0.0, abs=1e-6)
    with torch.no_grad():
        explicit.D.mul_(0.5)
    explicit.D.grad = None
    explicit.uncertainty_loss(target).backward()
    assert float(explicit.uncertainty_loss(target).detach()) == pytest.approx(math.log(2.0),
                                                                        rel=1e-4)
    assert (torch.diagonal(explicit.D.grad, dim1=1, dim2=2) < 0).all()  # descent grows D
    assert explicit.log_values()["cov_std"] == pytest.approx(0.1, rel=1e-4)


def test_criterion_argument_errors():
    config = TrainConfig()
    with pytest.raises(ValueError, match="m must be a positive integer"):
        create_criterion("explicit_sda(m=0)", 4, 3, config)
    with pytest.raises(ValueError, match="M = infinity is ISDA"):
        create_criterion("explicit_sda(m=inf)", 4, 3, config)
    with pytest.raises(ValueError, match="m must be a positive integer or inf"):
        create_criterion("learned_cov(m=2.5)", 4, 3, config)
    with pytest.raises(ValueError, match="std"):
        create_criterion("learned_cov(std=0)", 4, 3, config)


# --------------------------------------------------------------------------- FLOPs


def test_theoretical_flops_reproduce_table3_for_resnet32():
    assert isda_extra_macs(64, 10)["total"] == 11 * 64 ** 2 + 4 * 10 * 64 + 64
    for C, paper in ((10, 0.05), (100, 0.44)):
        row = theoretical(BenchCase("resnet32", f"cifar{C}", (3, 32, 32), C, "full", "resnet"))
        assert row["num_features"] == 64
        assert round(row["extra_total"] / 1e6, 2) == paper
        assert abs(row["forward_macs"] - 69.43e6) / 69.43e6 < 0.01
    relative = {10: 0.07, 100: 0.63}  # Table 3, relative column (%)
    for C, paper in relative.items():
        row = theoretical(BenchCase("resnet32", f"cifar{C}", (3, 32, 32), C, "full", "resnet"))
        assert abs(100 * row["relative"] - paper) < 0.015
    # diagonal (ImageNet, Table 1): ResNet-50 costs 0.25% extra
    row = theoretical(BenchCase("resnet50", "imagenet", (3, 224, 224), 1000, "diagonal",
                                "resnet_imagenet"))
    assert round(100 * row["relative"], 2) == 0.25
    with pytest.raises(ValueError, match="derived for kind"):
        isda_extra_macs(64, 10, "shared")


# --------------------------------------------------------------------------- commands


def test_tightness_command_records_resumes_and_leaves_training_unchanged(tmp_path, monkeypatch,
                                                                        capsys):
    from torch_isda.analysis import tightness

    out = tmp_path / "tight"
    common = ["analyze", "tightness", "--epochs", "2", "--threads", "1", "--batch-size", "128",
              "--samples", "200", "--out", str(out), "--quiet"]
    args = common + ["--every", "3"]
    # interrupt after the first epoch, then resume with the same command
    original = tightness.BoundRecorder.on_epoch_end

    def interrupted(self, trainer, epoch, row):
        original(self, trainer, epoch, row)
        if epoch == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(tightness.BoundRecorder, "on_epoch_end", interrupted)
    assert main(args) == 130
    monkeypatch.setattr(tightness.BoundRecorder, "on_epoch_end", original)
    assert main(args) == 0
    md, stats = _check_outputs(out, "tightness")
    assert "mean gap" in md and stats[0]["scope"] == "all records"
    trace = tightness.read_trace(out / "trace.csv")
    steps = [r["step"] for r in trace]
    assert steps == list(range(0, 20, 3))  # 10 steps per epoch, every 3, across the resume
    assert trace[0]["lambda"] == 0 and trace[0]["bound"] == pytest.approx(trace[0]["mc"], abs=1e-5)
    for r in trace:
        assert r["bound"] >= r["mc"] - 4 * r["mc_se"] - 1e-6  # Jensen
    assert trace[-1]["lambda"] > 0 and trace[-1]["gap"] > 0
    assert int(stats[0]["violations"]) == 0
    # an uninterrupted recorder-free run gives the same model: the recorder draws from its
    # own generator
    plain = train(TrainConfig(epochs=2, threads=1, batch_size=128, out=str(tmp_path / "plain")),
                  quiet=True)
    assert plain["final_error"] == pytest.approx(
        json.loads((out / "run" / "result.json").read_text())["final_error"])
    # a finished run is reused; other trace settings are refused
    monkeypatch.setattr(Trainer, "fit", lambda self, *a, **k: pytest.fail("retrained"))
    assert main(args) == 0
    assert main(common + ["--every", "4"]) == 2
    assert "recorded with other settings" in capsys.readouterr().err
    # a criterion without an ISDA estimate is a clear error
    assert main(["analyze", "tightness", "--loss", "ce", *TINY, "--out", str(tmp_path / "x")]) == 2
    assert "needs an ISDA criterion" in capsys.readouterr().err


def test_explicit_command(tmp_path):
    out = tmp_path / "explicit"
    assert main(["analyze", "explicit", *TINY, "--ms", "2", "--seeds", "1", "--out", str(out),
                 "--quiet"]) == 0
    md, rows = _check_outputs(out, "explicit")
    assert [r["m"] for r in rows] == ["0", "2", "inf"]
    assert [r["estimated_criterion"] for r in rows] == ["ce", "explicit_sda(m=2)", "isda"]
    assert rows[1]["learned_criterion"] == "learned_cov(m=2)"
    assert rows[2]["learned_criterion"] == "learned_cov(m=inf)"
    result = json.loads((out / "runs" / "explicit_sda_m=2" / "seed0" / "result.json").read_text())
    assert float(rows[1]["estimated_mean"]) == pytest.approx(result["final_error"], abs=1e-3)
    metrics = json.loads((out / "runs" / "learned_cov_m=2" / "seed0" / "metrics.json").read_text())
    assert metrics[0]["cov_std"] > 0
    with pytest.raises(ValueError, match="distinct positive integers"):
        from torch_isda.analysis.explicit import parse_ms

        parse_ms("0,1")


def test_sensitivity_command_and_reuse(tmp_path, monkeypatch):
    from torch_isda.analysis.sensitivity import run_sensitivity

    out = tmp_path / "sens"
    assert main(["analyze", "sensitivity", *TINY, "--lambdas", "0,1", "--seeds", "2",
                 "--out", str(out), "--quiet"]) == 0
    md, rows = _check_outputs(out, "sensitivity")
    assert [float(r["lambda0"]) for r in rows] == [0.0, 1.0]
    assert all(r["n_seeds"] == "2" and r["error_std"] != "" for r in rows)
    # lambda0 = 0 is exactly the cross-entropy baseline
    ce = train(TrainConfig(loss="ce", epochs=1, threads=1, batch_size=256,
                           out=str(tmp_path / "ce")), quiet=True)
    assert float(rows[0]["errors"].split(";")[0]) == pytest.approx(ce["final_error"], abs=1e-3)
    monkeypatch.setattr(Trainer, "fit", lambda self, *a, **k: pytest.fail("retrained"))
    again = run_sensitivity(TrainConfig(epochs=1, threads=1, batch_size=256), out,
                            lambdas="0,1", seeds=2, quiet=True)
    assert [r[1] for r in again["rows"]] == pytest.approx([float(r["error_mean"]) for r in rows])
    with pytest.raises(ValueError, match="non-negative"):
        run_sensitivity(TrainConfig(), out, lambdas="-1")


def test_ablation_command(tmp_path):
    out = tmp_path / "abl"
    assert main(["analyze", "ablation", *TINY, "--seeds", "1", "--out", str(out), "--quiet"]) == 0
    md, rows = _check_outputs(out, "ablation")
    assert [r["setting"] for r in rows] == ["Basic", "Identity matrix", "Diagonal matrix",
                                            "Single covariance matrix", "Constant lambda0", "ISDA"]
    assert float(rows[0]["delta_vs_basic"]) == 0.0
    cfg = json.loads((out / "runs" / "isda_kind=shared" / "seed0" / "config.json").read_text())
    assert cfg["config"]["loss"] == "isda(kind=shared)"


def test_tsne_command(tmp_path):
    out = tmp_path / "tsne"
    assert main(["analyze", "tsne", *TINY, "--max-points", "120", "--out", str(out),
                 "--quiet"]) == 0
    md, rows = _check_outputs(out, "tsne")
    assert [r["loss"] for r in rows] == ["ce", "isda"]
    assert all(r["points"] == "120" and -1 <= float(r["silhouette_embedding"]) <= 1 for r in rows)
    data = np.load(out / "embeddings" / "isda.npz")
    assert data["embedding"].shape == (120, 2) and data["features"].shape == (120, 64)


def test_bench_overhead_command(tmp_path, capsys):
    out = tmp_path / "bench"
    args = ["bench", "overhead", "--models", "digits_cnn,resnet20", "--timed", "digits_cnn",
            "--repeats", "2", "--warmup", "1", "--threads", "1", "--out", str(out), "--quiet"]
    assert main(args) == 0
    md, rows = _check_outputs(out, "overhead")
    assert [(r["model"], r["num_classes"]) for r in rows] == [
        ("digits_cnn", "10"), ("resnet20", "10"), ("resnet20", "100")]
    digits = rows[0]
    assert int(digits["extra_total"]) == isda_extra_macs(64, 10)["total"]
    assert float(digits["ce_seconds"]) > 0 and float(digits["isda_seconds"]) > 0
    assert rows[1]["ce_seconds"] == ""  # not timed
    # the paper's layout: CIFAR-10 and CIFAR-100 side by side, one row per network, and no
    # column that is "-" throughout (resnet20 is neither timed nor in the paper)
    table3 = md.split("**Table 3 (CIFAR, full covariance)**")[1].split("**")[0]
    header = next(line for line in table3.splitlines() if line.startswith("| Network"))
    assert "CIFAR-10: relative" in header and "CIFAR-100: relative" in header
    assert "wall time" not in header
    assert sum(line.startswith("| resnet20 |") for line in table3.splitlines()) == 1
    assert "**Table 1 (ImageNet" not in md and "**Measured training steps**" in md
    timing = json.loads((out / "timings" / "digits_cnn-c10.json").read_text())
    assert len(timing["timing"]["ce_times"]) == 2
    assert main(["bench", "overhead", "--models", "deeplabv3_resnet", "--out", str(out)]) == 2
    assert "segmentation" in capsys.readouterr().err


def test_overhead_markdown_drops_empty_columns_and_shows_paper_values(tmp_path):
    from torch_isda.analysis.overhead import run_overhead
    from torch_isda.analysis.overhead_table import drop_empty_columns

    headers, rows = drop_empty_columns(["a", "b", "c"], [["x", "-", "1"], ["y", "-", "-"]])
    assert headers == ["a", "c"] and rows == [["x", "1"], ["y", "-"]]
    md = run_overhead(tmp_path, models=["resnet32"], timed=[], quiet=True)["table"]
    line = next(l for l in md.splitlines() if l.startswith("| resnet32 |"))
    assert "0.07% (0.07%)" in line and "- (1.85%)" in line  # ours (the paper's)
    assert "**Measured training steps**" not in md
