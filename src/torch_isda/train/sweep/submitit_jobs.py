"""``isda compare --executor slurm|local|debug``: the runs of a sweep as one submitit job
array (``AutoExecutor.map_array``), each job training one run with
:func:`~torch_isda.train.sweep.runs.execute_run`.

* Preemption and time limits: :class:`RunJob` is a ``submitit.helpers.Checkpointable``;
  when Slurm signals the job, submitit requeues the same run, which then resumes from its
  last epoch's checkpoint (a ``--force`` run is not restarted from scratch on requeue).
* ``scancel``: the job ends without a result; the sweep reports the run failed, and running
  the command again resubmits it, resuming from its checkpoint.
* A job still queued or running from an earlier invocation (the parent was stopped, the
  login node rebooted) is waited for, never submitted twice (``<slug>.job.json``); a
  finished run is collected without a job.
* Without Slurm accounting (no slurmdbd) ``sacct`` cannot say that a job ended; the queue
  (:func:`~torch_isda.train.sweep.slurm_queue.queue_states`) is asked instead.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Optional

import submitit  # the cluster extra: pip install "torch-isda[cluster]"

from ..checkpoint import atomic_write_json
from ..rundir import RESULT_NAME
from .display import SweepDisplay
from .local import SweepInterrupted
from .runs import SWEEP_DIR, SweepRun, execute_run, read_json
from .slurm_queue import queue_states

__all__ = ["RunJob", "make_executor", "run_submitit"]

#: Seconds a Slurm job may be missing from the queue without a result before it counts
#: as ended (the result file is written just before the job leaves the queue). Generous:
#: once in CI a requeued (preempted) job was reported ended with a 10 s grace.
GONE_GRACE_S = 30.0


class RunJob(submitit.helpers.Checkpointable):
    """The submitit callable of one run (picklable; requeued on preemption/time limit)."""

    def __call__(self, run: SweepRun) -> dict[str, Any]:
        try:
            job_id = submitit.JobEnvironment().job_id
        except RuntimeError:  # the debug executor has no job environment
            job_id = None
        return execute_run(run, job_id=job_id)

    def checkpoint(self, run: SweepRun) -> Any:
        # the run's checkpoint.pt is written at every epoch end: resume from it
        return submitit.helpers.DelayedSubmission(self, replace(run, force=False))


def make_executor(cluster: str, folder: Path, parameters: dict[str, Any]) -> Any:
    """A submitit ``AutoExecutor`` for ``cluster`` (slurm, local or debug)."""
    executor = submitit.AutoExecutor(folder=str(folder), cluster=cluster)
    executor.update_parameters(**parameters)
    return executor


def _attach(run: SweepRun, cluster: str) -> Optional[Any]:
    """The job of an earlier invocation still in Slurm's queue for ``run``, if any."""
    record = read_json(run.path(".job.json"))
    if cluster != "slurm" or not record or record.get("cluster") != "slurm":
        return None
    states = queue_states([record["job_id"]])
    if not states or record["job_id"] not in states:
        return None
    return submitit.SlurmJob(folder=record["folder"], job_id=record["job_id"])


def _record(run: SweepRun, job: Any, cluster: str, folder: Path) -> None:
    atomic_write_json(run.path(".job.json"), {
        "cluster": cluster, "job_id": str(job.job_id), "folder": str(folder),
        "stdout": str(job.paths.stdout), "stderr": str(job.paths.stderr)})
    if (run.state() or {}).get("state") != "running":
        run.write_state("pending", job_id=str(job.job_id), note=f"submitted to {cluster}")


def _ended_without_result(run: SweepRun, job: Any) -> dict[str, Any]:
    error = (f"job {job.job_id} ended without a result (cancelled, killed, or out of "
             f"requeues); log: {job.paths.stdout}; run the command again to resume it")
    run.write_state("failed", job_id=str(job.job_id), error=error)
    return {"state": "failed", "name": run.name, "error": error}


def _job_outcome(run: SweepRun, job: Any) -> dict[str, Any]:
    try:
        return job.result()
    except Exception as err:  # the job's own failure (submitit re-raises it here)
        error = f"job {job.job_id} failed: {str(err).strip().splitlines()[-1]} (log: {job.paths.stderr})"
        run.write_state("failed", job_id=str(job.job_id), error=error)
        return {"state": "failed", "name": run.name, "error": error}


def _wait(pairs: list[tuple[SweepRun, Any]], cluster: str, display: SweepDisplay,
          poll: float) -> dict[str, dict[str, Any]]:
    outcomes: dict[str, dict[str, Any]] = {}
    waiting = list(pairs)
    gone_since: dict[str, float] = {}
    while waiting:
        queue = queue_states([j.job_id for _, j in waiting]) if cluster == "slurm" else None
        for run, job in list(waiting):
            if cluster == "debug" or job.paths.result_pickle.exists() or (
                    cluster == "local" and job.done()):
                outcome = _job_outcome(run, job)
            elif queue is not None and str(job.job_id) not in queue:
                first = gone_since.setdefault(run.name, time.monotonic())
                if time.monotonic() - first < GONE_GRACE_S:
                    continue
                outcome = _ended_without_result(run, job)
            else:
                gone_since.pop(run.name, None)
                continue
            waiting.remove((run, job))
            outcomes[run.name] = outcome
            display.finished(run, outcome)
        display.refresh([(r, r.progress()) for r, _ in waiting
                         if (r.state() or {}).get("state") == "running"])
        if waiting:
            time.sleep(poll)
    display.close()
    return outcomes


def run_submitit(runs: Sequence[SweepRun], cluster: str, parameters: dict[str, Any],
                 display: SweepDisplay, poll: float = 2.0) -> dict[str, dict[str, Any]]:
    """Submit ``runs`` as one job array on ``cluster`` (attaching to the queued jobs of an
    earlier invocation instead of resubmitting them), wait, return ``{name: outcome}``."""
    runs = list(runs)
    if not runs:
        return {}
    folder = Path(runs[0].sweep_out) / SWEEP_DIR / "submitit"
    pairs: list[tuple[SweepRun, Any]] = []
    to_submit = []
    reused: dict[str, dict[str, Any]] = {}
    for run in runs:
        run.save()
        job = _attach(run, cluster)
        if job is None and not run.force and (run.run_dir / RESULT_NAME).is_file():
            reused[run.name] = execute_run(run)  # finished: collected here, no job
            display.finished(run, reused[run.name])
        elif job is not None:
            display.say(f"{run.name}: job {job.job_id} from an earlier invocation is still "
                        f"queued or running; waiting for it")
            pairs.append((run, job))
        else:
            to_submit.append(run)
    if to_submit:
        executor = make_executor(cluster, folder, parameters)
        jobs = executor.map_array(RunJob(), to_submit)
        for run, job in zip(to_submit, jobs):
            _record(run, job, cluster, folder)
            display.started(run, f"{cluster} job {job.job_id}, log {job.paths.stdout}")
            pairs.append((run, job))
    try:
        return {**reused, **_wait(pairs, cluster, display, poll)}
    except KeyboardInterrupt:
        display.close()
        if cluster == "debug":  # the runs train in this process
            raise SweepInterrupted("interrupted: run the same command again to resume the "
                                   "runs from their checkpoints") from None
        raise SweepInterrupted(
            f"interrupted: the {cluster} jobs go on; run the same command again to wait for "
            f"them and write the table (isda status {runs[0].sweep_out} shows them; scancel "
            f"stops them, and a later run resumes from their checkpoints)") from None
