"""``isda compare`` as a new user meets it: a reduced run, then the README's main job."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from torch_isda.cli import main
from torch_isda.train import TrainConfig
from torch_isda.train import compare as compare_module
from torch_isda.train.checkpoint import atomic_write_json
from torch_isda.train.compare_out import config_suffix, default_comparison_out, suffix_configs
from torch_isda.train.metrics import write_metrics
from torch_isda.train.resolve import resolve_config
from torch_isda.train.rundir import prepare_run_dir


def _stand_in_train(calls):
    """Replaces the training of a run: applies the real run-directory rules (reuse a
    finished run with the same configuration, refuse one with another) and writes a
    finished run's files without training."""

    def train(config, *, resume=False, force=False, quiet=False, log=None, epoch_log=True):
        cfg = resolve_config(config)
        reused = prepare_run_dir(cfg, resume=resume, force=force, say=lambda msg: None)
        if reused is not None:
            return reused
        calls.append(cfg)
        out = Path(cfg.out)
        out.mkdir(parents=True, exist_ok=True)
        rows = [{"epoch": e + 1, "test_error": 10.0 / (e + 1)} for e in range(cfg.epochs)]
        write_metrics(out, rows)
        atomic_write_json(out / "config.json", {"config": cfg.to_dict()})
        result = {"final_error": rows[-1]["test_error"], "best_error": rows[-1]["test_error"],
                  "epochs": cfg.epochs, "num_parameters": 1}
        atomic_write_json(out / "result.json", result)
        return {**result, "status": "trained", "out": str(out)}

    return train


def test_reduced_run_then_readme_main_job(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    # the reduced command of the docs (with tiny epochs), trained for real
    assert main(["compare", "--losses", "ce,isda,focal", "--seeds", "2", "--epochs", "1",
                 "--quiet"]) == 0
    reduced = tmp_path / "runs" / "compare-digits-epochs1"
    assert sorted(p.name for p in reduced.iterdir() if p.is_dir()) == ["ce", "focal", "isda"]
    assert json.loads((reduced / "focal" / "seed1" / "result.json").read_text())["epochs"] == 1
    capsys.readouterr()
    # then the README's main job, `isda compare` with no arguments (30 epochs): its runs
    # go to runs/compare-digits, untouched by the reduced run, and nothing is refused
    calls = []
    monkeypatch.setattr(compare_module, "train", _stand_in_train(calls))
    assert main(["compare", "--quiet"]) == 0
    main_out = Path("runs") / "compare-digits"
    assert sorted(Path(c.out).relative_to(main_out).as_posix() for c in calls) == [
        f"{loss}/seed{s}" for loss in ("ce", "isda") for s in range(5)]
    assert {c.epochs for c in calls} == {30}
    assert "runs/compare-digits/table.md" in capsys.readouterr().out
    # the reduced command again: its finished runs are reused, not retrained
    calls.clear()
    assert main(["compare", "--losses", "ce,isda,focal", "--seeds", "2", "--epochs", "1",
                 "--quiet"]) == 0
    assert calls == []


def test_explicit_out_with_other_configuration_suggests_existing_options(tmp_path, capsys):
    out = str(tmp_path / "cmp")
    argv = ["compare", "--losses", "ce", "--seeds", "1", "--out", out, "--quiet"]
    assert main([*argv, "--epochs", "1"]) == 0
    capsys.readouterr()
    assert main([*argv, "--epochs", "2"]) == 2
    err = capsys.readouterr().err
    assert "different configuration (epochs: 1 -> 2)" in err
    assert "--force" in err and "--out" in err and "--resume" not in err


def _resolved_pair(config, reference):
    return [resolve_config(c) for c in suffix_configs(config, reference)]


def test_default_out_names_what_differs():
    ref = TrainConfig()

    def suffix(config):
        return config_suffix(*_resolved_pair(config, ref))

    assert suffix(TrainConfig(threads=1, final_epochs=1, device="cpu")) == ""
    assert suffix(TrainConfig(epochs=30)) == ""  # the preset's value
    assert suffix(TrainConfig(epochs=10, lr=0.1)) == "epochs10-lr0.1"
    assert suffix(TrainConfig(augment="crop_flip", nesterov=False)) == "augment-crop_flip-nesterov-off"
    assert suffix(TrainConfig(lambda0=1.0)) == "lambda0-1"
    long = suffix(TrainConfig(augment="crop(padding=1)+cutout(size=4)", lr=0.01,
                              weight_decay=1e-3, batch_size=32, epochs=7))
    assert len(long) <= 48 and long.startswith("augment-batch-size-epochs")
    assert default_comparison_out("runs/x", *_resolved_pair(TrainConfig(epochs=4), ref)) == "runs/x-epochs4"
    assert default_comparison_out("runs/x", *_resolved_pair(TrainConfig(), ref)) == "runs/x"


def _table_names(md):
    """Method names of the per-method table (after the header "| Method | Spec | Final")."""
    lines = md.splitlines()
    start = next(i for i, l in enumerate(lines) if l.startswith("| Method | Spec | Final"))
    return [l.split("|")[1].strip() for l in lines[start + 2:] if l.startswith("|")]


def test_table_and_legend_carry_the_same_names_and_window(tmp_path, monkeypatch):
    from torch_isda.train.compare import run_comparison
    from torch_isda.train.tables import plot_curves

    legends = []

    def recording_plot(path, methods, config):
        legends.append(plot_curves(path, methods, config))
        return legends[-1]

    from torch_isda.train.tasks.classification import tables as classification_tables

    monkeypatch.setattr(classification_tables, "plot_curves", recording_plot)
    result = run_comparison(TrainConfig(epochs=3, threads=1), "ce,focal,ce+center", [0],
                            tmp_path / "cmp", quiet=True)
    md = result.table
    names = _table_names(md)
    assert names == ["Basic", "Focal Loss", "Center Loss"]
    assert "| Basic | Focal Loss | Center Loss |" in md  # the Table-2-style header
    assert "`ce+center`" in md  # the spec in a column of its own
    (title, entries), = legends
    assert [e.split(" (")[0] for e in entries] == names
    assert title == "final error (last epoch)" and "its last epoch" in md
    rows = (tmp_path / "cmp" / "table.csv").read_text().splitlines()
    assert rows[1].split(",")[:2] == ["ce", "Basic"] and rows[0].split(",")[5] == "final_epochs"
    assert rows[1].split(",")[5] == "1"


def test_display_names_are_the_papers():
    from torch_isda.train.method_names import display_name

    assert [display_name(s) for s in ("ce", "isda", "focal", "lq", "label_smoothing",
                                      "lsoftmax", "ce+center", "ce+disturb_label",
                                      "isda+dropout", "isda(lambda0=0.25)")] == [
        "Basic", "ISDA", "Focal Loss", "L_q Loss", "Label Smoothing", "Large Margin",
        "Center Loss", "Disturb Label", "ISDA + Dropout", "ISDA (lambda0=0.25)"]


def test_curves_get_a_last_epochs_inset_with_five_methods(tmp_path, monkeypatch):
    import matplotlib.axes

    from torch_isda.train.tables import MethodSummary, plot_curves
    from torch_isda.train.curve_inset import zoom_start

    insets = []
    original = matplotlib.axes.Axes.inset_axes
    monkeypatch.setattr(matplotlib.axes.Axes, "inset_axes",
                        lambda self, *a, **k: insets.append(original(self, *a, **k)) or insets[-1])
    curves = [[50.0 / (e + 1) + s for e in range(12)] for s in (0.0, 0.5)]
    methods = [MethodSummary(spec, [0, 1], [c[-1] for c in curves], [c[-1] for c in curves], 10,
                             curves, window=1)
               for spec in ("ce", "isda", "focal", "lq", "label_smoothing")]
    config = resolve_config(TrainConfig(epochs=12))
    plot_curves(tmp_path / "five.png", methods, config)
    assert len(insets) == 1 and insets[0].get_xlim()[0] == zoom_start(12, 1) - 0.3 == 10 - 0.3
    low, high = insets[0].get_ylim()
    assert low > 2.0 and high < 6.5  # fitted to the last epochs, not the whole run
    plot_curves(tmp_path / "four.png", methods[:4], config)
    assert len(insets) == 1  # four methods: no inset


def test_analyses_reuse_the_runs_isda_compare_trained(tmp_path, monkeypatch, capsys):
    from torch_isda.train import Trainer

    monkeypatch.chdir(tmp_path)
    assert main(["compare", "--seeds", "1", "--epochs", "1", "--quiet"]) == 0  # ce, isda
    source = tmp_path / "runs" / "compare-digits-epochs1"
    fitted = []
    fit = Trainer.fit
    monkeypatch.setattr(Trainer, "fit", lambda self, *a, **k: fitted.append(self.config.loss)
                        or fit(self, *a, **k))
    assert main(["analyze", "ablation", "--seeds", "1", "--epochs", "1"]) == 0
    out = capsys.readouterr().out
    assert "reusing 1 finished run of isda compare from 'runs/compare-digits-epochs1'" in out
    assert "ce" not in fitted and len(fitted) == 5  # the five other settings are trained
    copied = tmp_path / "runs" / "analyze-ablation" / "runs" / "ce" / "seed0" / "metrics.json"
    assert copied.read_text() == (source / "ce" / "seed0" / "metrics.json").read_text()


def test_compare_checks_every_run_before_the_first_trains(tmp_path, capsys):
    """Issue 24 item 5: a bad spec anywhere in --losses fails at once, with one line, and
    leaves nothing behind (today's code trained ce first, then failed on the second spec)."""
    out = tmp_path / "cmp"
    argv = ["compare", "--losses", "ce,isda(lambda0=-1)", "--seeds", "2", "--epochs", "1",
            "--threads", "1", "--out", str(out)]
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "lambda0" in lines[0] and "isda(lambda0=-1)" in lines[0], lines
    assert "trained" not in captured.out and not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_compare_plans_resolved_runs(tmp_path):
    from torch_isda.train.compare import plan_comparison
    from torch_isda.train.config import ResolvedConfig

    plan = plan_comparison(TrainConfig(epochs=1), "ce,isda", 2, tmp_path)
    assert [(run.variant.key, run.seed) for run in plan] == [
        ("ce", 0), ("ce", 1), ("isda", 0), ("isda", 1)]
    assert all(isinstance(run.config, ResolvedConfig) for run in plan)
    assert plan[3].config.out == str(tmp_path / "isda" / "seed1") and plan[3].name == "isda seed 1"
    with pytest.raises(ValueError, match="kind of isda must be one of"):
        plan_comparison(TrainConfig(epochs=1), "ce,isda(kind=wide)", 1, tmp_path)
