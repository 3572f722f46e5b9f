"""Each silent or odd input of ``isda train`` / ``isda compare`` gets a clear message."""

from __future__ import annotations

import pytest

from torch_isda.cli import main


def test_stop_after_zero_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--stop-after", "0", "--out", str(tmp_path / "r")])
    assert exc.value.code == 2
    assert "--stop-after: must be a positive integer; got 0" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_data_dir_for_a_fileless_dataset_is_noted(tmp_path, capsys):
    assert main(["train", "--epochs", "1", "--threads", "1", "--data-dir", str(tmp_path / "d"),
                 "--out", str(tmp_path / "r"), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "note: --data-dir has no effect for dataset 'digits' (bundled with scikit-learn)" in err


@pytest.mark.parametrize("command", ["train", "compare"])
def test_explicit_classification_model_for_segmentation_is_refused(command, tmp_path, capsys):
    assert main([command, "--dataset", "synthetic_segmentation", "--model", "digits_cnn",
                 "--epochs", "1", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "--model digits_cnn is a classification model" in err and "deeplabv3_resnet" in err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("seeds, message", [
    ("0", "a count must be at least 1"),
    ("-2", "a count must be at least 1"),
    ("x", "a single seed with a trailing comma: 3,"),
    ("1,1", "without repeats"),
])
def test_bad_seeds(seeds, message, tmp_path, capsys):
    assert main(["compare", "--seeds", seeds, "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("isda compare: error:") and message in err


def test_single_seed_with_trailing_comma(tmp_path, capsys):
    from torch_isda.train.compare import parse_seeds

    assert parse_seeds("3,") == [3] and parse_seeds("3") == [0, 1, 2]


@pytest.mark.parametrize("extra", [["--task", "segmentation"],
                                   ["--dataset", "synthetic_segmentation"]])
def test_semi_with_segmentation_names_the_conflict(extra, tmp_path, capsys):
    assert main(["compare", "--semi", "vat", *extra, "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert "--semi vat is semi-supervised classification; it cannot be combined with " \
           "segmentation" in err


def test_final_epochs_beyond_the_run_is_refused(tmp_path, capsys):
    assert main(["train", "--epochs", "3", "--final-epochs", "4", "--out",
                 str(tmp_path / "r"), "--quiet"]) == 2
    assert "final_epochs (4) must not exceed epochs (3)" in capsys.readouterr().err
    assert main(["train", "--final-epochs", "0", "--out", str(tmp_path / "r"), "--quiet"]) == 2
    assert "final_epochs must be a positive integer; got 0" in capsys.readouterr().err


def test_single_class_segmentation_model_is_warned(tmp_path, capsys):
    from torch_isda.train.tasks.segmentation.metrics import ConfusionMatrix
    from torch_isda.train.command_train import report
    from torch_isda.train.tasks.segmentation.tables import (SegmentationMethodSummary,
                                                       render_segmentation_table)
    import torch

    cm = ConfusionMatrix(4)
    cm.update(torch.zeros(2, 3, 3, dtype=torch.long), torch.tensor([[[0, 1, 2]] * 3] * 2))
    assert cm.compute()["predicted_classes"] == 1
    result = {"status": "trained", "task": "segmentation", "out": str(tmp_path),
              "miou_single": 20.5, "miou_multiscale": 20.5, "miou_multiscale_flip": 20.5,
              "eval_scales": [1.0], "predicted_classes": 1}
    assert report(result) == 0
    assert "predicts a single class for every test pixel" in capsys.readouterr().err

    def summary(loss, predicted):
        miou = {k: [20.5, 20.4] for k in ("miou_single", "miou_multiscale",
                                          "miou_multiscale_flip")}
        return SegmentationMethodSummary(loss, [0, 1], [79.5, 79.6], [79.5, 79.6], 10,
                                         miou=miou, eval_scales=[1.0],
                                         predicted_classes=predicted)

    from torch_isda.train import TrainConfig

    from torch_isda.train.resolve import resolve_config

    config = resolve_config(TrainConfig(dataset="synthetic_segmentation", epochs=4))
    table = render_segmentation_table([summary("ce", [3, 4]), summary("isda", [1, 4])], config)
    assert ("**Warning**: ISDA (`isda`) predicts a single class for every test pixel with "
            "seed 0") in table
    assert "Basic (`ce`) predicts" not in table
