"""``isda compare --executor slurm`` on a real Slurm (tests/slurm/conftest.py): the same table
as a local run, ``isda status`` with job ids, a job requeued on preemption resuming from its
checkpoint, and a cancelled job reported failed then completed by a re-run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from waiting import wait_for

from torch_isda.cli import main


def _tables(out: Path) -> tuple[bytes, bytes]:
    return (out / "table.md").read_bytes(), (out / "table.csv").read_bytes()


def _job(out: Path, slug: str) -> dict:
    return json.loads((out / "sweep" / "runs" / f"{slug}.job.json").read_text())


def _queue_reason(job_id: str) -> str:
    done = subprocess.run(["squeue", "-h", "-o", "%T %r", "-j", job_id], capture_output=True,
                          text=True)
    return done.stdout.strip()


def _start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "torch_isda.cli", "compare", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


def _slurm_run_with_a_checkpoint(args: list[str], out: Path) -> tuple[subprocess.Popen, str]:
    """Start ``isda compare --executor slurm`` on one run; return once the run's first
    epoch is checkpointed: (the isda compare process, the run's job id)."""
    parent = _start([*args, "--executor", "slurm", "--cpus-per-run", "1", "--out", str(out)])
    checkpoint = out / "ce" / "seed0" / "checkpoint.pt"
    wait_for(lambda: checkpoint.is_file() or parent.poll() is not None, 300, "a checkpoint")
    assert parent.poll() is None, parent.communicate()
    return parent, _job(out, "ce-seed0")["job_id"]


def test_a_2x2_comparison_on_slurm_gives_the_local_table(slurm_cluster, tmp_path, capsys):
    args = ["--losses", "ce,isda", "--seeds", "2", "--epochs", "1", "--quiet"]
    assert main(["compare", *args, "--out", str(tmp_path / "local")]) == 0
    out = tmp_path / "slurm"
    assert main(["compare", *args, "--executor", "slurm", "--cpus-per-run", "1", "--time", "10",
                 "--slurm-arg", "job-name=isda-test", "--out", str(out)]) == 0
    assert _tables(out) == _tables(tmp_path / "local")
    job = _job(out, "isda-seed1")
    assert job["cluster"] == "slurm" and "_" in job["job_id"]  # one array
    assert Path(job["stdout"]).is_file()
    script = next((out / "sweep" / "submitit").glob("*_submission.sh")).read_text()
    assert "#SBATCH --job-name=isda-test" in script and "#SBATCH --array=0-3" in script
    capsys.readouterr()
    assert main(["status", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "4 done" in printed and job["job_id"] in printed and job["stdout"] in printed


def test_a_preempted_job_is_requeued_and_resumes_from_its_checkpoint(slurm_cluster, tmp_path):
    # small batches: enough steps that the job is still training when the signal comes
    args = ["--losses", "ce", "--seeds", "1", "--epochs", "20", "--batch-size", "8"]
    out = tmp_path / "preempted"
    parent, job_id = _slurm_run_with_a_checkpoint(args, out)
    # what Slurm sends before preempting or at the time limit (submitit's --signal)
    subprocess.run(["scancel", "--signal", "USR2", job_id], check=True)
    # Slurm holds a requeued job for about two minutes (BeginTime); release it at once
    wait_for(lambda: "BeginTime" in _queue_reason(job_id), 120, "the job to be requeued")
    subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], check=True)
    output, _ = parent.communicate(timeout=600)
    assert parent.returncode == 0, output
    assert "0 failed" in output and "ce seed 0: final error" in output
    state = json.loads((out / "sweep" / "runs" / "ce-seed0.state.json").read_text())
    assert state["state"] == "done" and state["note"] == "resumed"
    log = Path(_job(out, "ce-seed0")["stderr"]).read_text()
    assert "Caught signal SIGUSR2" in log and "REQUEUE" in log
    assert main(["compare", *args, "--out", str(tmp_path / "ref"), "--quiet"]) == 0
    assert _tables(out) == _tables(tmp_path / "ref")


def test_a_cancelled_job_is_reported_failed_and_a_rerun_completes_it(slurm_cluster, tmp_path):
    # long enough to outlast scancel's SIGTERM-to-SIGKILL wait (submitit ignores SIGTERM)
    args = ["--losses", "ce", "--seeds", "1", "--epochs", "30", "--batch-size", "8"]
    out = tmp_path / "cancelled"
    parent, job_id = _slurm_run_with_a_checkpoint(args, out)
    subprocess.run(["scancel", job_id], check=True)
    checkpoint = out / "ce" / "seed0" / "checkpoint.pt"
    output, _ = parent.communicate(timeout=300)
    assert parent.returncode == 0, output
    assert "failed: ce seed 0: job" in output and "ended without a result" in output
    assert checkpoint.is_file() and not (out / "ce" / "seed0" / "result.json").exists()
    assert main(["status", str(out)]) == 0
    rerun = _start([*args, "--executor", "slurm", "--cpus-per-run", "1", "--out", str(out)])
    output, _ = rerun.communicate(timeout=600)
    assert rerun.returncode == 0 and "0 failed" in output, output
    state = json.loads((out / "sweep" / "runs" / "ce-seed0.state.json").read_text())
    assert state["note"] == "resumed"  # from the cancelled job's checkpoint
    assert main(["compare", *args, "--out", str(tmp_path / "ref"), "--quiet"]) == 0
    assert _tables(out) == _tables(tmp_path / "ref")


@pytest.mark.parametrize("executor", ["local"])
def test_submitits_local_executor_gives_the_same_table(slurm_cluster, tmp_path, executor):
    args = ["--losses", "ce,isda", "--seeds", "1", "--epochs", "1", "--quiet"]
    assert main(["compare", *args, "--out", str(tmp_path / "seq")]) == 0
    assert main(["compare", *args, "--executor", executor, "--out", str(tmp_path / "sub")]) == 0
    assert _tables(tmp_path / "sub") == _tables(tmp_path / "seq")
