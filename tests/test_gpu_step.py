"""benchmarks/gpu_step.py keeps running: its CPU smoke mode, eager tables."""

import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks"))

import gpu_step  # noqa: E402


def test_smoke_mode_writes_tables_with_the_sync_counts(tmp_path):
    gpu_step.main(["--device", "cpu", "--smoke", "--skip-compile", "--out", str(tmp_path)])
    data = json.loads((tmp_path / "gpu_step.json").read_text())
    assert (tmp_path / "gpu_step.md").read_text().startswith("# gpu_step.py results")
    loss = next(t for name, t in data["tables"].items() if name.startswith("loss"))
    steps = next(t for name, t in data["tables"].items() if name.startswith("step (eager)"))
    assert not any(name.startswith("step (compiled)") for name in data["tables"])
    h = loss["headers"]
    for row in loss["rows"]:
        assert float(row[h.index("present ms")]) > 0 and float(row[h.index("accel. route ms")]) > 0
        assert row[h.index("present syncs")] == "1" and row[h.index("accel. route syncs")] == "0"
    by_criterion = {row[1]: row for row in steps["rows"]}
    assert set(by_criterion) == {"CE", "ISDA default", "ISDA old default", "ISDA unchecked", "official"}
    assert all(float(row[2]) > 0 for row in steps["rows"])
    # on the CPU the default takes its CPU route (present classes, one synchronization)
    assert by_criterion["ISDA default"][4] == "1" and by_criterion["ISDA old default"][4] == "1"
    assert by_criterion["ISDA unchecked"][4] == "0"
    assert by_criterion["CE"][4] == "0"


def test_smoke_mode_whole_step_rows_have_median_and_spread(tmp_path):
    gpu_step.main(["--device", "cpu", "--smoke", "--tables", "whole", "--repeats", "3", "--out", str(tmp_path)])
    data = json.loads((tmp_path / "gpu_step.json").read_text())
    whole = next(t for name, t in data["tables"].items() if name.startswith("step (whole)"))
    h = whole["headers"]
    rows = {(row[1], row[2]): row for row in whole["rows"]}
    assert set(rows) == {(c, m) for c in ("CE", "ISDA default") for m in ("eager", "compiled")}  # no CUDA graphs on a CPU
    for row in rows.values():
        assert float(row[h.index("median ms/step")]) > 0 and float(row[h.index("spread ms")]) >= 0


def test_table2_epoch_smoke_runs_and_projects_the_row(tmp_path, capsys):
    import table2_epoch

    table2_epoch.main(["--device", "cpu", "--smoke", "--modes", "eager", "--out", str(tmp_path)])
    data = json.loads((tmp_path / "table2_epoch.json").read_text())
    assert set(data["results"]) == {"eager", "parallel"}  # two runs at once of the fastest mode
    assert all(r["epoch_s"] > 0 for r in data["results"].values())
    assert "Table 2 resnet8 row (1,600 epochs), h" in capsys.readouterr().out
