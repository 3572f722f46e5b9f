"""``isda compare --jobs N``: up to N runs at once on this machine, one child process each
(``python -m torch_isda.train.sweep.child``).

* GPUs: each child sees one GPU (``CUDA_VISIBLE_DEVICES``), round-robin over the visible
  ones, at most ``runs_per_gpu`` children per GPU.
* CPUs: a run without ``--threads`` gets this machine's cores divided by N (at least one);
  an explicit ``--threads`` is kept (the per-run thread count is part of what makes runs
  bit-identical to sequential ones: keep it equal when comparing).
* A child that fails is recorded as failed; the others go on.
* Ctrl-C (or SIGTERM) stops every child (its process group) and raises
  :class:`SweepInterrupted`; each run keeps its last epoch's checkpoint, so re-running the
  same command resumes them (``--resume auto`` semantics).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional

from .display import SweepDisplay
from .runs import SweepRun

__all__ = ["SweepInterrupted", "Slot", "check_jobs", "plan_slots", "run_local"]


class SweepInterrupted(KeyboardInterrupt):
    """The sweep was interrupted; the message says how to continue it."""


def check_jobs(jobs: Any, option: str = "--jobs") -> int:
    try:
        value = int(jobs)
    except (TypeError, ValueError):
        value = 0
    if value < 1 or str(jobs).strip() != str(value):
        raise ValueError(f"{option} must be a positive number of runs at once; got {jobs!r}")
    return value


@dataclass(frozen=True)
class Slot:
    """Where one child runs: its GPU (``None``: CPU) and its thread count."""

    gpu: Optional[str]
    threads: Optional[int]


def _visible_gpus(device: str) -> list[str]:
    if device == "cpu" or device.startswith("cuda:"):
        return []  # an explicit device is kept as the user gave it
    import torch

    if not torch.cuda.is_available():
        return []
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed:
        return [g.strip() for g in listed.split(",") if g.strip()]
    return [str(i) for i in range(torch.cuda.device_count())]


def plan_slots(jobs: int, runs_per_gpu: int, device: str, threads: Optional[int],
               cpu_count: Optional[int] = None) -> list[Slot]:
    """The ``jobs`` slots of a local sweep (fewer when GPUs x ``runs_per_gpu`` is smaller)."""
    jobs = check_jobs(jobs)
    runs_per_gpu = check_jobs(runs_per_gpu, "--runs-per-gpu")
    gpus = _visible_gpus(str(device))
    if threads is None:
        threads = max(1, (cpu_count or os.cpu_count() or 1) // jobs)
    if not gpus:
        return [Slot(None, threads)] * jobs
    count = min(jobs, len(gpus) * runs_per_gpu)
    return [Slot(gpus[i % len(gpus)], threads) for i in range(count)]


class _Child:
    def __init__(self, run: SweepRun, slot: int, process: subprocess.Popen, log: Any) -> None:
        self.run, self.slot, self.process, self.log = run, slot, process, log


def _start(run: SweepRun, slot: Slot, index: int) -> _Child:
    run = run.with_threads(slot.threads)
    spec = run.save()
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = str(slot.threads or 1)
    if slot.gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = slot.gpu
    log = open(run.path(".log"), "ab")
    process = subprocess.Popen([sys.executable, "-m", "torch_isda.train.sweep.child", str(spec)],
                               env=env, stdout=log, stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL, start_new_session=True)
    return _Child(run, index, process, log)


def _outcome(child: _Child) -> dict[str, Any]:
    """The finished child's outcome, from its state file (and the result it wrote)."""
    from ..rundir import RESULT_NAME
    from .runs import read_json

    code = child.process.returncode
    state = child.run.state() or {}
    if code == 0 and state.get("state") == "done":
        result = read_json(child.run.run_dir / RESULT_NAME) or {}
        return {"state": "done", "name": child.run.name, "note": state.get("note", "trained"),
                "seconds": float(state.get("seconds", 0.0)), "result": result,
                "reused": state.get("note") == "reused"}
    error = state.get("error") if state.get("state") == "failed" else None
    if error is None:
        error = f"its process exited with status {code} (log: {child.run.path('.log')})"
        child.run.write_state("failed", error=error)
    return {"state": "failed", "name": child.run.name, "error": error}


def _stop_all(children: Sequence[_Child], grace: float = 10.0) -> None:
    for child in children:
        try:
            os.killpg(child.process.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    for child in children:
        try:
            child.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            try:
                os.killpg(child.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            child.process.wait()
        child.log.close()
        child.run.write_state("interrupted", note="stopped by Ctrl-C; resumable")


def run_local(runs: Sequence[SweepRun], slots: Sequence[Slot], display: SweepDisplay,
              poll: float = 0.5) -> dict[str, dict[str, Any]]:
    """Run ``runs`` in child processes, one per free slot; returns ``{name: outcome}``."""
    pending = deque(runs)
    free = deque(range(len(slots)))
    active: list[_Child] = []
    outcomes: dict[str, dict[str, Any]] = {}
    try:
        while pending or active:
            while pending and free:
                index = free.popleft()
                child = _start(pending.popleft(), slots[index], index)
                gpu = slots[index].gpu
                display.started(child.run, f"pid {child.process.pid}"
                                + (f", GPU {gpu}" if gpu is not None else "")
                                + f", log {child.run.path('.log')}")
                active.append(child)
            for child in [c for c in active if c.process.poll() is not None]:
                active.remove(child)
                child.log.close()
                free.append(child.slot)
                outcomes[child.run.name] = _outcome(child)
                display.finished(child.run, outcomes[child.run.name])
            display.refresh([(c.run, c.run.progress()) for c in active])
            time.sleep(poll if active else 0)
    except KeyboardInterrupt:
        display.close()
        _stop_all(active)
        raise SweepInterrupted(
            f"interrupted: stopped {len(active)} running run(s) ({len(pending)} not started); "
            f"each keeps its last epoch's checkpoint: run the same command again to resume "
            f"them") from None
    display.close()
    return outcomes
