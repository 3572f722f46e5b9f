"""``isda train`` / ``isda compare`` for semantic segmentation (Section 6.4, Table 7):
config resolution, the criterion of both heads, end-to-end runs, exact resume, the
Table 7 comparison and a tiny Cityscapes run."""

from __future__ import annotations

import csv
import json

import pytest
import torch
import torch.nn.functional as F

from torch_isda.cli import main
from torch_isda.models import create_model
from torch_isda.segmentation import SegmentationISDALoss
from torch_isda.train import TrainConfig, resolve_config, train
from torch_isda.train.checkpoint import load_checkpoint
from torch_isda.train.schedules import PolyFactor
from torch_isda.train.tasks.segmentation.config import SYNTHETIC_MODEL_KWARGS, parse_scales
from torch_isda.train.tasks.segmentation.criterion import SegmentationCriterion

# 16 train / 8 test images of 32 x 32: a run is a couple of seconds on one thread
TINY_DATA = "num_train=16,num_test=8,image_size=32"
TINY = ["--dataset", "synthetic_segmentation", "--dataset-kwargs", TINY_DATA, "--batch-size", "8",
        "--eval-batch-size", "8", "--threads", "1", "--quiet"]
TABLE7 = ("miou_single", "miou_multiscale", "miou_multiscale_flip")


def _tiny_config(tmp_path, **changes):
    base = dict(dataset="synthetic_segmentation", batch_size=8, eval_batch_size=8, epochs=2,
                threads=1, dataset_kwargs=dict(num_train=16, num_test=8, image_size=32))
    base.update(changes)
    base.setdefault("out", str(tmp_path / "run"))
    return TrainConfig(**base)


def _rows(run):
    rows = json.loads((run / "metrics.json").read_text())
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


# --------------------------------------------------------------------------- configuration


def test_synthetic_and_cityscapes_presets():
    cfg = resolve_config(TrainConfig(dataset="synthetic_segmentation"))
    assert cfg.task == "segmentation" and cfg.model == "deeplabv3_resnet"
    assert cfg.preset == "segmentation_synthetic" and cfg.lr_schedule == "poly"
    assert cfg.model_kwargs == SYNTHETIC_MODEL_KWARGS
    assert (cfg.lambda0, cfg.kind) == (0.5, "diagonal")  # lambda_0 selected on another draw
    assert (cfg.aux_weight, cfg.seg_loss_at) == (0.4, "label")
    assert parse_scales(cfg.eval_scales) == [0.75, 1.0, 1.25] and cfg.crop_size is None
    assert cfg.out == "runs/synthetic_segmentation-deeplabv3_resnet-isda-seed0"

    city = resolve_config(TrainConfig(dataset="cityscapes", model="pspnet_resnet", loss="ce"))
    assert (city.preset, city.epochs, city.batch_size, city.lr, city.momentum) == (
        "segmentation", 108, 8, 0.01, 0.9)
    assert (city.weight_decay, city.nesterov, city.lr_schedule, city.poly_power) == (
        5e-4, False, "poly", 0.9)
    assert city.crop_size == 769 and city.eval_scales == "0.75,1,1.25,1.5"
    assert city.model_kwargs == {} and (city.lambda0, city.kind) == (7.5, "diagonal")


def test_explicit_values_win_and_model_kwargs_merge():
    cfg = resolve_config(TrainConfig(
        dataset="synthetic_segmentation", kind="full", lambda0=2.0, lr=0.5, epochs=3,
        model_kwargs={"aux": False}, eval_scales="1, 1.5", seg_loss_at="feature", aux_weight=0.0))
    assert (cfg.kind, cfg.lambda0, cfg.lr, cfg.epochs) == ("full", 2.0, 0.5, 3)
    assert cfg.model_kwargs == {**SYNTHETIC_MODEL_KWARGS, "aux": False}
    assert (cfg.eval_scales, cfg.seg_loss_at, cfg.aux_weight) == ("1,1.5", "feature", 0.0)


def test_task_detection_and_errors():
    plain = resolve_config(TrainConfig(task="classification"))
    assert plain.task is None and plain.preset == "small_cnn"  # classification is stored as None
    with pytest.raises(ValueError, match="segmentation dataset"):
        resolve_config(TrainConfig(task="segmentation", dataset="digits"))
    with pytest.raises(ValueError, match="is a segmentation dataset"):
        resolve_config(TrainConfig(task="classification", dataset="synthetic_segmentation"))
    with pytest.raises(ValueError, match="not a segmentation model"):
        resolve_config(TrainConfig(dataset="synthetic_segmentation", model="resnet20"))
    with pytest.raises(ValueError, match="without '\\+' modifiers"):
        resolve_config(TrainConfig(dataset="synthetic_segmentation", loss="isda+center"))
    with pytest.raises(ValueError, match="does not accept"):
        resolve_config(TrainConfig(dataset="synthetic_segmentation", loss="isda(rank=3)"))
    with pytest.raises(ValueError, match="eval_scales"):
        resolve_config(TrainConfig(dataset="synthetic_segmentation", eval_scales="1,x"))
    with pytest.raises(ValueError, match="augment"):
        resolve_config(TrainConfig(dataset="synthetic_segmentation", augment="crop_flip"))


def test_poly_factor():
    poly = PolyFactor(100, 0.9)
    assert poly(0) == 1.0 and poly(100) == 0.0 and poly(150) == 0.0
    assert poly(50) == pytest.approx(0.5 ** 0.9)
    with pytest.raises(ValueError):
        PolyFactor(0)


def test_poly_schedule_for_classification_steps_per_epoch(tmp_path):
    out = tmp_path / "digits"
    assert main(["train", "--epochs", "2", "--lr-schedule", "poly", "--out", str(out),
                 "--threads", "1", "--quiet"]) == 0
    rows = json.loads((out / "metrics.json").read_text())
    assert [r["lr"] for r in rows] == pytest.approx([0.05, 0.05 * 0.5 ** 0.9])
    assert json.loads((out / "config.json").read_text())["config"]["task"] is None


# --------------------------------------------------------------------------- the criterion


@pytest.mark.parametrize("loss_at", ["label", "feature"])
def test_criterion_matches_manual_two_head_loss(loss_at):
    model = create_model("deeplabv3_resnet", num_classes=4, depth=10, width=4, head_channels=12,
                         aux_channels=8)
    x = torch.randn(2, 3, 24, 24)
    y = torch.randint(0, 4, (2, 24, 24))
    y[:, :2] = 255
    crit = SegmentationCriterion("isda", 12, 8, 4, loss_at=loss_at, aux_weight=0.4, lambda0=3.0,
                                 constant_lambda=True)
    ref_main = SegmentationISDALoss(12, 4, 3.0, constant_lambda=True)
    ref_aux = SegmentationISDALoss(8, 4, 3.0, constant_lambda=True)
    out = model.forward_all(x)
    loss = crit(out, y, model)
    cls, aux_cls = model.get_classifier(), model.get_aux_classifier()
    if loss_at == "feature":
        expected = ref_main(out.features, out.logits, y, cls) + 0.4 * ref_aux(
            out.aux_features, out.aux_logits, y, aux_cls)
    else:
        def up(z):
            return F.interpolate(z, size=(24, 24), mode="bilinear", align_corners=True)

        z = ref_main.augmented_logits(out.features, out.logits, y, cls)
        za = ref_aux.augmented_logits(out.aux_features, out.aux_logits, y, aux_cls)
        expected = (F.cross_entropy(up(z), y, ignore_index=255)
                    + 0.4 * F.cross_entropy(up(za), y, ignore_index=255))
    torch.testing.assert_close(loss, expected)
    # one estimator per head, fed with that head's features
    for mine, ref in ((crit.main, ref_main), (crit.aux, ref_aux)):
        assert torch.equal(mine.estimator.count, ref.estimator.count)
        torch.testing.assert_close(mine.estimator.covariance, ref.estimator.covariance)
    assert crit.main.num_features == 12 and crit.aux.num_features == 8
    loss.backward()
    assert model.aux_classifier.weight.grad is not None

    ce = SegmentationCriterion("ce", 12, 0, 4, loss_at=loss_at)  # no aux head: main loss only
    assert ce.main is None and ce.aux is None and ce.log_values() == {}
    all_void = torch.full_like(y, 255)
    assert ce(model.forward_all(x), all_void, model).item() == 0.0


# --------------------------------------------------------------------------- end to end


def test_train_synthetic_end_to_end(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--epochs", "2", "--out", str(out), "--seed", "1"]) == 0
    printed = capsys.readouterr().out
    assert "single scale" in printed and "multi-scale + flip" in printed
    result = json.loads((out / "result.json").read_text())
    assert result["task"] == "segmentation" and result["eval_scales"] == [0.75, 1.0, 1.25]
    for key in TABLE7:
        assert 0.0 <= result[key] <= 100.0
        assert len(result[key.replace("miou", "iou")]) == 4
    rows = json.loads((out / "metrics.json").read_text())
    assert [r["epoch"] for r in rows] == [1, 2]
    for r in rows:
        assert r["test_error"] == pytest.approx(100.0 - r["test_miou"])
        assert 0 <= r["test_pixel_acc"] <= 100 and 0 < r["lambda"] < 0.5
    assert rows[0]["lr"] == 0.1 and rows[1]["lr"] == pytest.approx(0.1 * 0.5 ** 0.9)  # poly
    assert result["miou_single"] == pytest.approx(rows[-1]["test_miou"])
    assert result["final_error"] == pytest.approx(100.0 - result["miou_single"])
    assert result["iterations"] == 4  # 2 epochs x 16 // 8
    header = (out / "metrics.csv").read_text().splitlines()[0].split(",")
    assert header[:8] == ["epoch", "train_loss", "train_error", "test_loss", "test_error", "lr",
                          "lambda", "seconds"] and "test_miou" in header
    saved = json.loads((out / "config.json").read_text())
    assert saved["config"]["task"] == "segmentation"
    assert saved["resolved"]["steps_per_epoch"] == 2 and saved["resolved"]["num_classes"] == 4
    ckpt = load_checkpoint(out / "checkpoint.pt")
    for head, features in (("main", 32), ("aux", 32)):
        cov = ckpt["criterion"][f"{head}.estimator.covariance"]
        assert cov.shape == (4, features)  # diagonal kind: C x A
        assert int(ckpt["criterion"][f"{head}.estimator.count"].sum()) > 0
    assert ckpt["final_eval"]["miou_single"] == result["miou_single"]
    # finished: reused, not retrained
    mtime = (out / "metrics.json").stat().st_mtime_ns
    assert main(["train", *TINY, "--epochs", "2", "--out", str(out), "--seed", "1"]) == 0
    assert (out / "metrics.json").stat().st_mtime_ns == mtime


def test_resume_equals_uninterrupted_run(tmp_path):
    a, b = tmp_path / "straight", tmp_path / "resumed"
    train(_tiny_config(tmp_path, epochs=3, out=str(a)), quiet=True)
    stopped = train(_tiny_config(tmp_path, epochs=3, out=str(b)), quiet=True, stop_after=1)
    assert stopped["status"] == "stopped" and stopped["miou_single"] is None
    assert not (b / "result.json").exists()
    train(_tiny_config(tmp_path, epochs=3, out=str(b)), quiet=True, resume=True)
    assert _rows(a) == _rows(b)
    ra, rb = (json.loads((d / "result.json").read_text()) for d in (a, b))
    for key in TABLE7:
        assert ra[key] == rb[key]
    ca, cb = load_checkpoint(a / "checkpoint.pt"), load_checkpoint(b / "checkpoint.pt")
    for part in ("model", "criterion"):
        assert ca[part].keys() == cb[part].keys()
        for k in ca[part]:
            assert torch.equal(ca[part][k], cb[part][k]), (part, k)
    assert ca["scheduler"]["last_epoch"] == cb["scheduler"]["last_epoch"] == 6


def test_isda_with_zero_lambda_equals_ce_and_feature_recipe(tmp_path):
    ce = train(_tiny_config(tmp_path, loss="ce", out=str(tmp_path / "ce")), quiet=True)
    zero = train(_tiny_config(tmp_path, loss="isda(lambda0=0)", out=str(tmp_path / "zero")),
                 quiet=True)
    # the same training up to float rounding (the bias gradient arrives in another layout)
    assert [r["train_loss"] for r in _rows(tmp_path / "ce")] == pytest.approx(
        [r["train_loss"] for r in _rows(tmp_path / "zero")], rel=1e-5)
    assert ce["miou_single"] == pytest.approx(zero["miou_single"], abs=0.5)
    assert all(r["lambda"] == 0.0 for r in _rows(tmp_path / "zero"))
    feat = train(_tiny_config(tmp_path, seg_loss_at="feature", epochs=1,
                              out=str(tmp_path / "feat")), quiet=True)
    assert feat["seg_loss_at"] == "feature" and 0 <= feat["miou_multiscale_flip"] <= 100


def test_compare_two_losses_table7(tmp_path, capsys):
    out = tmp_path / "cmp"
    argv = ["compare", *TINY, "--epochs", "1", "--losses", "ce,isda", "--seeds", "1",
            "--eval-scales", "0.75,1", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "| Method | Spec | Params | Single scale | Multi-scale | Multi-scale + Flip |" in printed
    table = (out / "table.md").read_text()
    assert "| ISDA | `isda` |" in table and "| Basic | `ce` |" in table and "{0.75, 1}" in table
    assert (out / "curves.png").stat().st_size > 0
    with open(out / "table.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["method"] for r in rows] == ["ce", "isda"]
    for r in rows:
        result = json.loads((out / r["method"] / "seed0" / "result.json").read_text())
        for key in TABLE7:
            assert float(r[f"{key}_mean"]) == pytest.approx(result[key], abs=1e-4)
        assert r["eval_scales"] == "0.75;1" and r["n_seeds"] == "1"
    mtime = (out / "isda" / "seed0" / "metrics.json").stat().st_mtime_ns
    assert main(argv) == 0  # everything reused
    assert (out / "isda" / "seed0" / "metrics.json").stat().st_mtime_ns == mtime
    assert "Multi-scale + Flip" in capsys.readouterr().out


def test_cityscapes_tiny_run(tmp_path):
    from test_segmentation import _write_cityscapes  # the official-layout fixture

    root = tmp_path / "cityscapes"
    _write_cityscapes(root, "train")
    _write_cityscapes(root, "val")
    out = tmp_path / "run"
    argv = ["train", "--dataset", "cityscapes", "--data-dir", str(root), "--model", "pspnet_resnet",
            "--model-kwargs", "depth=10,width=4,head_channels=8,aux_channels=8", "--epochs", "1",
            "--batch-size", "2", "--crop-size", "16", "--workers", "0", "--eval-scales", "1,1.5",
            "--device", "cpu", "--out", str(out), "--threads", "1", "--quiet"]
    assert main(argv) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["iterations"] == 1 and result["model"] == "pspnet_resnet"
    assert len(result["iou_single"]) == 19 and result["eval_scales"] == [1.0, 1.5]
    for key in TABLE7:
        assert 0.0 <= result[key] <= 100.0
    saved = json.loads((out / "config.json").read_text())
    assert saved["resolved"]["augment"] == "random_scale_crop_flip"
    assert saved["resolved"]["train_size"] == 2 and saved["resolved"]["test_size"] == 2
    assert saved["config"]["crop_size"] == 16 and saved["config"]["preset"] == "segmentation"
