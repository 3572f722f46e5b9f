"""Long-tailed runs end to end (issue 23): the criteria in the registry and on the command
line, the meta set bound to MetaSAug, shot-group metrics, config.json and the tables."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from torch_isda.cli import main
from torch_isda.data import create_dataset, long_tail_counts
from torch_isda.train import Trainer, TrainConfig, resolve_config
from torch_isda.train.criteria import create_criterion, list_criteria

LT = "imbalance=10,val_per_class=5"
FAST = ["--epochs", "1", "--threads", "1", "--quiet", "--device", "cpu"]
METHODS = ("class_balanced", "balanced_softmax", "ldam_drw", "metasaug")


def test_long_tailed_criteria_are_listed_and_need_counts():
    assert set(METHODS) <= set(list_criteria())
    with pytest.raises(ValueError, match="needs the per-class training counts"):
        create_criterion("ldam_drw", 8, 3)
    criterion = create_criterion("ldam_drw(drw_start=0.5)", 8, 3, class_counts=[30, 10, 2])
    criterion.set_progress(0.6)
    assert criterion.log_values() == {"drw": 1.0}


def _trainer(tmp_path, loss, dataset_kwargs=LT, epochs=1):
    kwargs = dict(item.split("=") for item in dataset_kwargs.split(","))
    cfg = resolve_config(TrainConfig(
        loss=loss, epochs=epochs, threads=1, out=str(tmp_path / "run"), device="cpu",
        dataset_kwargs={k: int(v) for k, v in kwargs.items()}))
    torch.set_num_threads(1)
    trainer = Trainer(cfg, quiet=True)
    trainer.build()
    return trainer


def test_metasaug_without_a_held_out_set_samples_the_training_images(tmp_path):
    trainer = _trainer(tmp_path, "metasaug", "imbalance=20")
    task = trainer.task
    source = task.criterion.meta_source
    expected = [min(10, n) for n in task.class_counts]
    assert torch.bincount(source.labels, minlength=10).tolist() == expected
    assert task.meta_set == "training_sample"
    assert task.resolved_fields()["meta_set"] == "training_sample"
    # the sampled images are training images
    train = {tuple(x.flatten().tolist()) for x in task.meta_data.train_images}
    assert all(tuple(x.flatten().tolist()) in train for x in source.images)


def test_metasaug_run_meta_phase_metrics_and_config(tmp_path):
    trainer = _trainer(tmp_path, "metasaug(start=0.5,meta_batch_size=20)", epochs=2)
    task = trainer.task
    full = create_dataset("digits")
    counts = long_tail_counts(int(torch.bincount(full.train_labels).min()) - 5, 10, 10)
    assert task.class_counts == list(counts)
    source = task.criterion.meta_source
    images, labels = source.next_batch()
    assert images.shape[0] == 20 and images.is_floating_point()
    assert torch.bincount(task.meta_data.meta_labels, minlength=10).tolist() == [5] * 10
    trainer.write_config()
    trainer.fit()
    rows = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert [r["meta_phase"] for r in rows] == [0.0, 1.0]
    assert rows[0]["meta_loss"] is None and rows[1]["meta_loss"] > 0
    for row in rows:
        assert len(row["test_class_errors"].split(";")) == 10
        assert row["test_many_error"] is not None and row["test_few_error"] is not None
    resolved = json.loads((tmp_path / "run" / "config.json").read_text())["resolved"]
    assert resolved["class_counts"] == list(counts) and resolved["subset_seed"] == 0
    assert resolved["meta_set"] == "held_out"
    assert resolved["shot_groups"]["many"] + resolved["shot_groups"]["medium"] \
        + resolved["shot_groups"]["few"] == 10


def test_compare_prints_shot_group_columns_with_dashes_for_empty_groups(tmp_path, capsys):
    out = tmp_path / "cmp"
    # digits-LT with rho = 2: about 120 .. 60 images per class, so no few-shot class
    main(["compare", "--dataset-kwargs", "imbalance=2,val_per_class=5,many_shot=80",
          "--losses", "ce,balanced_softmax,ldam_drw", "--seeds", "2", "--out", str(out), *FAST])
    text = capsys.readouterr().out
    assert "(many > 80, few < 20 training images per class" in text  # the thresholds used
    assert "| Method | All (%) | Many (%) | Medium (%) | Few (%) |" in text
    for name in ("Basic", "Balanced Softmax", "LDAM-DRW"):
        line = next(l for l in text.splitlines() if l.startswith(f"| {name} | ") and "±" in l
                    and l.count("|") == 6)
        assert line.rstrip().endswith("| - |")  # the empty few-shot group
    rows = list(csv.DictReader((out / "table.csv").open()))
    assert [r["method"] for r in rows] == ["ce", "balanced_softmax", "ldam_drw"]
    for row in rows:
        assert row["few_error_mean"] == "" and row["many_error_mean"] != ""
        assert len(row["class_errors_mean"].split(";")) == 10
    assert (out / "curves_groups.png").stat().st_size > 0


def test_balanced_runs_keep_their_table(tmp_path, capsys):
    main(["compare", "--losses", "ce", "--seeds", "1,", "--out", str(tmp_path / "b"), *FAST])
    assert "Many (%)" not in capsys.readouterr().out
    header = (tmp_path / "b" / "table.csv").read_text().splitlines()[0]
    assert "many_error_mean" not in header
    assert not (tmp_path / "b" / "curves_groups.png").exists()


def test_isda_with_logit_adjustment_is_isda_of_the_shifted_logits():
    from torch_isda import ISDALoss

    counts = [50, 20, 5]
    torch.manual_seed(0)
    crit = create_criterion("isda(logit_adjustment=1.5)", 4, 3, class_counts=counts)
    plain = ISDALoss(4, 3, 0.5)
    fc = torch.nn.Linear(4, 3)
    model = type("M", (), {"get_classifier": lambda self: fc})()
    for t in range(3):
        f, y = torch.randn(12, 4), torch.arange(12) % 3
        crit.set_progress(t / 3)
        plain.set_progress(t / 3)
        shifted = fc(f) + 1.5 * torch.log(torch.tensor(counts) / 80.0)
        assert torch.allclose(crit(f, fc(f), y, model), plain(f, shifted, y, fc.weight))
    with pytest.raises(ValueError, match="needs the per-class"):
        create_criterion("isda(logit_adjustment=1)", 4, 3)
