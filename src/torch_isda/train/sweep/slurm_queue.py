"""What Slurm's queue says about jobs, through ``squeue`` (works without accounting:
``sacct`` needs slurmdbd, which small and test clusters often lack)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterable
from typing import Optional

__all__ = ["check_sbatch", "queue_states"]


def check_sbatch() -> None:
    """``ValueError`` with the fix when Slurm's ``sbatch`` is not on PATH."""
    if shutil.which("sbatch") is None:
        raise ValueError("--executor slurm needs Slurm's sbatch, which is not on PATH here: run "
                         "the command on a Slurm login node (or add Slurm's bin folder to PATH), "
                         "or train on this machine with --jobs N or --executor local")


def queue_states(job_ids: Iterable[str]) -> Optional[dict[str, str]]:
    """``{job_id: state}`` (``"1234_0": "RUNNING"``) of the listed jobs still in the queue
    (array tasks expanded); a finished or cancelled job is absent. ``None`` when squeue
    could not answer (no Slurm, controller unreachable)."""
    ids = sorted({str(j).split("_")[0] for j in job_ids})
    if not ids:
        return {}
    try:
        done = subprocess.run(["squeue", "-h", "-r", "-o", "%i|%T", "-j", ",".join(ids)],
                              capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        # squeue fails for ids it no longer knows (all finished): that is an empty queue
        return {} if "Invalid job id" in done.stderr else None
    states = {}
    for line in done.stdout.splitlines():
        job_id, _, state = line.strip().partition("|")
        if job_id:
            states[job_id] = state
    return states
