"""``isda compare``: runs per (loss, seed), reuse of finished runs, table and curves."""

from __future__ import annotations

import csv
import json

import pytest

from torch_isda.cli import main
from torch_isda.train import TrainConfig, train
from torch_isda.train.compare import parse_losses, parse_seeds, run_comparison
from torch_isda.train import Trainer


def test_compare_writes_table_and_curves_and_reuses_runs(tmp_path, monkeypatch, capsys):
    out = tmp_path / "cmp"
    base = TrainConfig(epochs=2, threads=1)
    # an interrupted run already there: it is resumed, not restarted
    train(base.replace(loss="ce", seed=0, out=str(out / "ce" / "seed0")), quiet=True, stop_after=1)
    result = run_comparison(base, "ce,isda", 2, out, quiet=True)
    assert (result.trained, result.reused) == (4, 0)
    for loss in ("ce", "isda"):
        for seed in (0, 1):
            run = out / loss / f"seed{seed}"
            assert (run / "result.json").is_file()
            assert len(json.loads((run / "metrics.json").read_text())) == 2
    md = (out / "table.md").read_text()
    assert "| Network | Params | Basic | ISDA |" in md and "±" in md
    rows = list(csv.DictReader((out / "table.csv").open()))
    assert [r["method"] for r in rows] == ["ce", "isda"] and rows[0]["n_seeds"] == "2"
    finals = [json.loads((out / "ce" / f"seed{s}" / "result.json").read_text())["final_error"]
              for s in (0, 1)]
    assert float(rows[0]["final_error_mean"]) == pytest.approx(sum(finals) / 2, abs=1e-4)
    png = (out / "curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000

    # second call: nothing is retrained
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("metrics.json")}

    def no_training(self, *args, **kwargs):
        raise AssertionError("a finished run was retrained")

    monkeypatch.setattr(Trainer, "fit", no_training)
    assert main(["compare", "--losses", "ce,isda", "--seeds", "2", "--epochs", "2",
                 "--threads", "1", "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "| Network | Params | Basic | ISDA |" in printed and "curves.png" in printed
    assert {p: p.stat().st_mtime_ns for p in out.rglob("metrics.json")} == mtimes
    # a different configuration in the same directory is refused
    assert main(["compare", "--seeds", "2", "--epochs", "3", "--threads", "1", "--out",
                 str(out), "--quiet"]) == 2
    assert "different configuration" in capsys.readouterr().err


def test_parse_helpers():
    assert parse_seeds("3") == [0, 1, 2] and parse_seeds("4,7") == [4, 7] and parse_seeds(2) == [0, 1]
    assert parse_losses("ce, isda(lambda0=1,kind=diagonal)") == ["ce", "isda(lambda0=1,kind=diagonal)"]
    with pytest.raises(ValueError, match="Unknown criterion"):
        parse_losses("ce,focall")
    with pytest.raises(ValueError):
        parse_seeds("0,0")


def test_interrupted_run_with_other_config_is_refused(tmp_path):
    base = TrainConfig(epochs=2, threads=1)
    train(base.replace(loss="ce", seed=0, out=str(tmp_path / "ce" / "seed0")), quiet=True,
          stop_after=1)
    with pytest.raises(FileExistsError, match="unfinished run with a different configuration"):
        run_comparison(base.replace(epochs=3), "ce", 1, tmp_path, quiet=True)


def test_task_result_line_and_warning_of_the_progress_log():
    from torch_isda.train.tasks import task_class

    seg, cls = task_class("segmentation"), task_class("classification")
    result = {"miou_single": 20.5, "miou_multiscale_flip": 21.25, "final_error": 3.5,
              "best_error": 3.25, "predicted_classes": 1}
    assert seg.result_line(result) == "mIoU 20.50% (multi-scale + flip 21.25%)"
    assert cls.result_line(result) == "final error 3.50% (best 3.25%)"
    assert seg.result_warning(result, "ce seed 1").startswith(
        "warning: ce seed 1 predicts a single class for every test pixel")
    assert seg.result_warning({**result, "predicted_classes": 3}, "ce seed 1") is None
    assert cls.result_warning(result, "ce seed 1") is None


def test_semi_table_with_a_method_whose_runs_all_failed():
    from torch_isda.train import TrainConfig
    from torch_isda.train.tables import MethodSummary
    from torch_isda.train.tasks.semi.tables import render_semi_table

    config = TrainConfig(semi="pi", labels=100, epochs=30, preset="small_cnn", lambda0=0.5)
    ok = {"ce": MethodSummary("ce", [0, 1], [9.0, 8.0], [8.5, 7.5], None, window=3),
          "isda": MethodSummary("isda", [0, 1], [7.0, 7.5], [6.9, 7.0], None, window=3)}
    failed = {loss: MethodSummary(loss, [], [], [], None, failed=[0, 1]) for loss in ("ce", "isda")}
    summaries = {("pi", "ce"): failed["ce"], ("pi", "isda"): failed["isda"],
                 ("vat", "ce"): ok["ce"], ("vat", "isda"): ok["isda"]}
    table = render_semi_table(["pi", "vat"], ["ce", "isda"], summaries, config)
    pi_row = next(line for line in table.splitlines() if line.startswith("| Π-model |"))
    assert pi_row.count("- (2 failed)") == 2 and pi_row.rstrip(" |").endswith("-")
    vat_row = next(line for line in table.splitlines() if line.startswith("| VAT |"))
    assert "-1.25 ± 1.06" in vat_row  # paired differences -2.0 and -0.5
