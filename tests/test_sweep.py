"""``isda compare --jobs N`` / ``--executor debug`` and ``isda status``: the same table byte for
byte as the sequential sweep, failed runs recorded while the others go on, Ctrl-C leaving
every run resumable, and one clear message per bad option (docs/scale.md)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from waiting import wait_for

from torch_isda.cli import main
from torch_isda.train.sweep.local import Slot, plan_slots
from torch_isda.train.sweep.options import SweepOptions, parse_slurm_args, parse_time_limit

pytest.importorskip("submitit")

#: 2 losses x 2 seeds, one epoch each, on the embedded digits (threads=1 by default).
SWEEP = ["compare", "--losses", "ce,isda", "--seeds", "2", "--epochs", "1", "--quiet"]


def _tables(out: Path) -> tuple[bytes, bytes]:
    return (out / "table.md").read_bytes(), (out / "table.csv").read_bytes()


@pytest.fixture(scope="module")
def sequential(tmp_path_factory):
    out = tmp_path_factory.mktemp("seq") / "cmp"
    assert main([*SWEEP, "--out", str(out)]) == 0
    return _tables(out)


def test_jobs_2_gives_the_sequential_table_byte_for_byte_and_a_status(sequential, tmp_path,
                                                                     capsys):
    out = tmp_path / "par"
    assert main([*SWEEP, "--jobs", "2", "--out", str(out)]) == 0
    assert _tables(out) == sequential
    for slug in ("ce-seed0", "ce-seed1", "isda-seed0", "isda-seed1"):
        state = json.loads((out / "sweep" / "runs" / f"{slug}.state.json").read_text())
        assert state["state"] == "done" and state["pid"] != os.getpid()  # a child trained it
    capsys.readouterr()
    assert main(["status", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.count(" done ") == 4 and "4 done" in printed
    assert str(out / "sweep" / "runs" / "ce-seed0.log") in printed


def test_debug_executor_gives_the_sequential_table(sequential, tmp_path):
    out = tmp_path / "dbg"
    assert main([*SWEEP, "--executor", "debug", "--out", str(out)]) == 0
    assert _tables(out) == sequential
    assert json.loads((out / "sweep" / "runs" / "isda-seed1.job.json").read_text())["cluster"] == "debug"
    # again: the finished runs are collected from OUT, no job is submitted
    logs = sorted((out / "sweep" / "submitit").iterdir())
    assert main([*SWEEP, "--executor", "debug", "--out", str(out)]) == 0
    assert sorted((out / "sweep" / "submitit").iterdir()) == logs and _tables(out) == sequential
    assert json.loads((out / "sweep" / "runs" / "ce-seed0.state.json").read_text())["note"] == "reused"


def test_a_failed_run_is_marked_failed_and_the_others_go_on(tmp_path, capsys):
    out = tmp_path / "fail"
    (out / "ce").mkdir(parents=True)
    (out / "ce" / "seed0").write_text("not a run directory")  # this run cannot be written
    assert main(["compare", "--losses", "ce,isda", "--seeds", "1", "--epochs", "1", "--jobs",
                 "2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "failed: ce seed 0:" in printed and "1 run trained, 0 reused, 1 failed" in printed
    assert (out / "isda" / "seed0" / "result.json").is_file()
    assert "failed" in (out / "table.md").read_text()
    state = json.loads((out / "sweep" / "runs" / "ce-seed0.state.json").read_text())
    assert state["state"] == "failed" and state["error"]


def test_ctrl_c_stops_the_children_and_a_rerun_finishes_with_the_same_table(tmp_path):
    # 6 epochs: on a loaded machine the runs must still be training when the signal comes
    # (with 3, both once finished between the first checkpoints and the SIGINT)
    args = ["--losses", "ce,isda", "--seeds", "1", "--epochs", "6", "--quiet"]
    ref = tmp_path / "ref"
    assert main(["compare", *args, "--out", str(ref)]) == 0
    out = tmp_path / "killed"
    command = [sys.executable, "-m", "torch_isda.cli", "compare", *args, "--jobs", "2",
               "--out", str(out)]
    parent = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
    checkpoints = [out / loss / "seed0" / "checkpoint.pt" for loss in ("ce", "isda")]
    wait_for(lambda: all(p.is_file() for p in checkpoints) or parent.poll() is not None,
              240, "both runs to checkpoint an epoch")
    assert parent.poll() is None, parent.communicate()
    parent.send_signal(signal.SIGINT)
    _, err = parent.communicate(timeout=60)
    assert parent.returncode == 130 and b"resume" in err
    for slug in ("ce-seed0", "isda-seed0"):
        state = json.loads((out / "sweep" / "runs" / f"{slug}.state.json").read_text())
        assert state["state"] == "interrupted"
        with pytest.raises(ProcessLookupError):  # the child is gone
            os.kill(state["pid"], 0)
    assert not (out / "table.md").exists()
    assert main(["compare", *args, "--jobs", "2", "--out", str(out)]) == 0
    assert _tables(out) == _tables(ref)


def test_bad_sweep_options_get_one_clear_message(tmp_path, capsys, monkeypatch):
    assert main([*SWEEP, "--jobs", "0", "--out", str(tmp_path)]) == 2
    assert "--jobs must be a positive number of runs at once; got '0'" in capsys.readouterr().err
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch here
    assert main([*SWEEP, "--executor", "slurm", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "--executor slurm needs Slurm's sbatch, which is not on PATH" in err
    assert err.count("error:") == 1
    with pytest.raises(ValueError, match="--time expects minutes"):
        parse_time_limit("soon")
    with pytest.raises(ValueError, match="--slurm-arg expects key=value"):
        parse_slurm_args(["=x"])
    assert main(["status", str(tmp_path / "nothing")]) == 2
    assert "holds no sweep started with --jobs or --executor" in capsys.readouterr().err


def test_slurm_options_become_submitit_parameters():
    assert parse_time_limit("90") == 90 and parse_time_limit("1-02:30:00") == 1590
    assert parse_time_limit("0:10:30") == 11
    assert parse_slurm_args(["qos=high", "--constraint=a100", "exclusive"]) == {
        "qos": "high", "constraint": "a100", "exclusive": True}
    options = SweepOptions(jobs=3, partition="gpu", time_min=60, gpus_per_run=1,
                           cpus_per_run=8, slurm_args={"qos": "high"})
    assert options.submitit_parameters() == {
        "name": "isda-compare", "timeout_min": 60, "nodes": 1, "tasks_per_node": 1,
        "cpus_per_task": 8, "gpus_per_node": 1, "slurm_partition": "gpu",
        "slurm_array_parallelism": 3, "slurm_additional_parameters": {"qos": "high"}}


def test_slots_pin_gpus_round_robin_and_split_cpu_threads(monkeypatch):
    import torch

    assert plan_slots(2, 1, "cpu", None, cpu_count=8) == [Slot(None, 4)] * 2
    assert plan_slots(3, 1, "auto", 1, cpu_count=8) == [Slot(None, 1)] * 3  # --threads kept
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert [s.gpu for s in plan_slots(5, 2, "auto", None, cpu_count=8)] == ["0", "1", "0", "1"]
    assert [s.gpu for s in plan_slots(4, 1, "cuda", None, cpu_count=8)] == ["0", "1"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    assert [s.gpu for s in plan_slots(2, 1, "auto", None, cpu_count=8)] == ["3", "5"]


def test_a_run_spanning_two_processes_inside_a_job(tmp_path):
    """``--nproc-per-run 2``: the job runs torchrun (gloo on the CPU here, the GPUs of the
    job's node on a cluster); the result is a 2-process run's."""
    out = tmp_path / "ddp"
    assert main(["compare", "--losses", "isda", "--seeds", "1", "--epochs", "1", "--quiet",
                 "--executor", "debug", "--nproc-per-run", "2", "--out", str(out)]) == 0
    result = json.loads((out / "isda" / "seed0" / "result.json").read_text())
    assert result["world_size"] == 2
    # rank 0 wrote the run's progress record (the live display and `isda status` read it)
    progress = [json.loads(p.read_text()) for p in (out / "sweep" / "runs").glob("*.progress.json")]
    assert len(progress) == 1 and progress[0]["epoch"] == 1 and progress[0]["fraction"] == 1.0
    assert progress[0]["test_error"] == result["final_error"]
    assert "isda" in (out / "table.md").read_text()
    with pytest.raises(ValueError, match="--nproc-per-run needs --executor"):
        SweepOptions(nproc_per_run=2).check()


def test_the_live_view_shows_every_running_run_and_the_sweeps_eta(tmp_path):
    import io

    from torch_isda.train.config import TrainConfig
    from torch_isda.train.sweep.display import SweepDisplay
    from torch_isda.train.sweep.runs import SweepRun

    runs = [SweepRun(f"ce seed {s}", "ce", s, str(tmp_path), TrainConfig(out=str(tmp_path / f"s{s}")))
            for s in range(3)]
    stream = io.StringIO()
    view = SweepDisplay(3, lambda result: f"final error {result['final_error']:.2f}%",
                        stream=stream, live=True)
    view.t0 -= 10.0  # ten seconds into the sweep
    view.refresh([(runs[0], {"fraction": 0.5, "epoch": 3, "epochs": 6, "test_error": 12.5}),
                  (runs[1], None)])
    drawn = stream.getvalue()
    assert "ce seed 0: [##########..........]  50.0%  epoch 3/6, last eval error 12.50%" in drawn
    assert "ce seed 1: starting" in drawn
    # half a run done in 10 s, 2.5 runs of work left: about 50 s
    assert "sweep: 0/3 finished (0 failed), 2 running, about 50s left" in drawn
    view.finished(runs[0], {"state": "done", "note": "trained", "seconds": 9.0,
                            "result": {"final_error": 3.25}})
    tail = stream.getvalue()[len(drawn):]
    assert tail.startswith("\x1b[3F\x1b[J")  # the block is erased before the line
    assert "[1/3] ce seed 0: final error 3.25%, trained in 9.0s" in tail
