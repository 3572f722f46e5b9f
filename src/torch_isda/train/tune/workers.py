"""The workers of ``isda tune`` beyond this process, all on one study:

* ``--jobs N``: N worker processes here (``python -m torch_isda.train.tune.worker``), each
  with one GPU round-robin (``--runs-per-gpu K`` per GPU) or its share of the CPU threads;
  Ctrl-C stops them all (their running trials fail by heartbeat and are retried later);
* ``--executor slurm|local|debug``: N submitit jobs (a job array), each a worker; a
  preempted worker is requeued and carries on with the study.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..checkpoint import atomic_write_text
from ..sweep.local import plan_slots
from .study import TuneSpec, run_worker

__all__ = ["WorkerJob", "run_worker_jobs", "run_workers"]


def run_workers(spec: TuneSpec, jobs: int, runs_per_gpu: int = 1) -> list[int]:
    """Start ``jobs`` worker processes, wait for them; returns their exit statuses."""
    slots = plan_slots(jobs, runs_per_gpu, spec.base.device, spec.base.threads)
    out = Path(spec.out)
    out.mkdir(parents=True, exist_ok=True)
    children = []
    for k, slot in enumerate(slots):
        path = out / f"worker{k}.json"
        atomic_write_text(path, json.dumps(replace(
            spec, base=spec.base.replace(threads=slot.threads)).to_dict(), indent=2))
        env = {**os.environ, "OMP_NUM_THREADS": str(slot.threads or 1)}
        if slot.gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = slot.gpu
        log = open(out / f"worker{k}.log", "ab")
        children.append((subprocess.Popen(
            [sys.executable, "-m", "torch_isda.train.tune.worker", str(path)], env=env,
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True), log))
    try:
        codes = [child.wait() for child, _ in children]
    except KeyboardInterrupt:
        for child, _ in children:
            if child.poll() is None:
                os.killpg(child.pid, signal.SIGTERM)
        for child, _ in children:
            child.wait()
        raise
    finally:
        for _, log in children:
            log.close()
    return codes


class WorkerJob:
    """One worker as a submitit job (requeued on preemption or at the time limit)."""

    def __call__(self, spec: dict[str, Any]) -> int:
        study = run_worker(TuneSpec.from_dict(spec))
        return len(study.get_trials(deepcopy=False))

    def checkpoint(self, spec: dict[str, Any]) -> Any:
        import submitit

        return submitit.helpers.DelayedSubmission(self, spec)


def run_worker_jobs(spec: TuneSpec, jobs: int, cluster: str, parameters: dict[str, Any]
                    ) -> list[str]:
    """Run ``jobs`` workers as one submitit job array on ``cluster`` and wait for them;
    returns the errors of the workers that failed (their logs are under OUT/submitit)."""
    from ..sweep.submitit_jobs import make_executor

    executor = make_executor(cluster, Path(spec.out) / "submitit",
                             {**parameters, "name": "isda-tune"})
    array = executor.map_array(WorkerJob(), [spec.to_dict()] * jobs)
    errors = []
    for job in array:
        try:
            job.result()
        except Exception as err:  # a worker's failure: the study goes on without it
            errors.append(f"worker job {job.job_id}: {str(err).strip().splitlines()[-1]} "
                          f"(log: {job.paths.stderr})")
    return errors
