"""``isda status OUT``: the state of every run of a sweep started with ``--jobs`` or
``--executor`` (pending, running, done, failed, interrupted), with job ids and log paths,
from the bookkeeping under ``OUT/sweep/`` and, for Slurm jobs, the queue."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from ..rundir import RESULT_NAME
from .runs import SweepRun, read_json, runs_dir
from .slurm_queue import queue_states

__all__ = ["RunStatus", "format_status", "sweep_status"]


@dataclass
class RunStatus:
    name: str
    state: str
    job_id: str = "-"
    progress: str = ""
    log: str = "-"
    detail: str = ""


def _alive_here(record: dict[str, Any]) -> bool:
    if record.get("host") != socket.gethostname():
        return False
    try:
        os.kill(int(record["pid"]), 0)
    except (OSError, KeyError, ValueError):
        return False
    return True


def _progress(run: SweepRun) -> str:
    progress = run.progress()
    if not progress:
        return ""
    return f"epoch {progress.get('epoch')}/{progress.get('epochs')} ({100 * progress.get('fraction', 0):.0f}%)"


def _queued_state(job: dict[str, Any], queue: Optional[dict[str, str]]) -> Optional[str]:
    """running/pending from Slurm's queue; ``"gone"`` when the job left it; ``None``: unknown."""
    if queue is None:
        return None
    state = queue.get(job["job_id"])
    if state is None:
        return "gone"
    return "running" if state in ("RUNNING", "COMPLETING") else "pending"


def _one(run: SweepRun, queue: Optional[dict[str, str]]) -> RunStatus:
    record = run.state() or {}
    job = read_json(run.path(".job.json")) or {}
    log = job.get("stdout") or (str(run.path(".log")) if run.path(".log").exists() else "-")
    job_id = job.get("job_id") or (f"pid {record['pid']}" if "pid" in record else "-")
    status = RunStatus(run.name, "pending", job_id, "", log,
                       "not started" if not record else "")
    state = record.get("state")
    if (run.run_dir / RESULT_NAME).is_file() and state not in ("running", "pending"):
        status.state, status.detail = "done", record.get("note", "")
        return status
    if state in ("failed", "interrupted"):
        status.state, status.detail = state, record.get("error") or record.get("note", "")
        return status
    if state in ("running", "pending"):
        queued = _queued_state(job, queue) if job.get("cluster") == "slurm" else None
        if queued == "gone":
            done = (run.run_dir / RESULT_NAME).is_file()
            status.state = "done" if done else "failed"
            status.detail = "" if done else "the job left the queue without a result"
        elif queued is not None:
            status.state = queued
        elif state == "running" and not job and not _alive_here(record):
            status.state, status.detail = "interrupted", "its process is gone; resumable"
        else:
            status.state = state
        if status.state == "running":
            status.progress = _progress(run)
    return status


def sweep_status(out: str | os.PathLike[str]) -> list[RunStatus]:
    """The status of every run recorded under ``OUT/sweep/runs`` (sweep order)."""
    folder = runs_dir(out)
    manifest = read_json(Path(out) / "sweep" / "sweep.json")
    if manifest is None or not folder.is_dir():
        raise FileNotFoundError(f"'{out}' holds no sweep started with --jobs or --executor "
                                f"(no {Path(out) / 'sweep' / 'sweep.json'})")
    runs = []
    for slug in manifest.get("runs", []):
        data = read_json(folder / f"{slug}.json")
        if data is not None:
            runs.append(SweepRun.from_dict(data))
    jobs = [j["job_id"] for r in runs if (j := read_json(r.path(".job.json")) or {}).get(
        "cluster") == "slurm"]
    queue = queue_states(jobs) if jobs else None
    return [_one(run, queue) for run in runs]


def format_status(statuses: list[RunStatus]) -> str:
    """The table ``isda status`` prints, then the counts per state."""
    header = ("run", "state", "job", "progress", "log", "detail")
    rows = [header] + [(s.name, s.state, s.job_id, s.progress, s.log, s.detail) for s in statuses]
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(header) - 1)]
    lines = ["  ".join(str(v).ljust(w) for v, w in zip(r, widths)) + "  " + str(r[-1])
             for r in rows]
    counts: dict[str, int] = {}
    for s in statuses:
        counts[s.state] = counts.get(s.state, 0) + 1
    lines.append(", ".join(f"{n} {state}" for state, n in sorted(counts.items())))
    return "\n".join(line.rstrip() for line in lines)
