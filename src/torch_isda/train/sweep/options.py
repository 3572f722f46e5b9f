"""How ``isda compare`` trains its runs (:class:`SweepOptions`, from ``--jobs``,
``--executor`` and the Slurm options) and the executor that does it
(:func:`sweep_executor`, the ``executor`` of
:func:`~torch_isda.train.compare.run_comparison`)."""

from __future__ import annotations

import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from ..checkpoint import atomic_write_json
from .display import SweepDisplay
from .local import check_jobs
from .runs import SWEEP_DIR, SweepRun

__all__ = ["EXECUTORS", "SweepOptions", "parse_slurm_args", "parse_time_limit",
           "sweep_executor"]

#: ``--executor`` values: submitit's clusters.
EXECUTORS = ("slurm", "local", "debug")

CLUSTER_EXTRA = 'pip install "torch-isda[cluster]"'


def parse_time_limit(value: Any) -> int:
    """``--time``: minutes (``90``) or Slurm's ``[D-]HH:MM[:SS]`` -> whole minutes (>= 1)."""
    text = str(value).strip()
    match = re.fullmatch(r"(?:(\d+)-)?(\d+):(\d{1,2})(?::(\d{1,2}))?", text)
    if text.isdigit():
        minutes = int(text)
    elif match:
        days, hours, mins, secs = (int(g) if g else 0 for g in match.groups())
        minutes = days * 1440 + hours * 60 + mins + (1 if secs else 0)
    else:
        raise ValueError(f"--time expects minutes (e.g. 90) or [D-]HH:MM[:SS] (e.g. 1-12:00:00); "
                         f"got {value!r}")
    if minutes < 1:
        raise ValueError(f"--time must be at least one minute; got {value!r}")
    return minutes


def parse_slurm_args(items: Optional[list[str]]) -> dict[str, Any]:
    """``--slurm-arg key=value`` (repeatable; ``--slurm-arg exclusive`` for a flag) -> the
    extra ``#SBATCH`` lines (submitit's ``slurm_additional_parameters``)."""
    extra: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = str(item).partition("=")
        key = key.strip().lstrip("-").replace("-", "_")
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", key):
            raise ValueError(f"--slurm-arg expects key=value (an sbatch option without its "
                             f"dashes, e.g. qos=high or constraint=a100); got {item!r}")
        extra[key] = value if sep else True
    return extra


@dataclass
class SweepOptions:
    """Where a sweep's runs train: ``executor`` ``None`` with ``jobs`` 1 is the sequential
    sweep; ``jobs`` > 1 the local process pool; else a submitit cluster."""

    jobs: int = 1
    runs_per_gpu: int = 1
    executor: Optional[str] = None
    partition: Optional[str] = None
    time_min: Optional[int] = None
    gpus_per_run: Optional[int] = None
    cpus_per_run: Optional[int] = None
    array_parallelism: Optional[int] = None
    slurm_args: dict[str, Any] = field(default_factory=dict)
    mem_gb: Optional[float] = None
    nproc_per_run: int = 1

    def check(self) -> SweepOptions:
        """Validate (one message per problem); returns ``self``."""
        self.jobs = check_jobs(self.jobs)
        self.runs_per_gpu = check_jobs(self.runs_per_gpu, "--runs-per-gpu")
        self.nproc_per_run = check_jobs(self.nproc_per_run, "--nproc-per-run")
        if self.nproc_per_run > 1 and self.executor is None:
            raise ValueError("--nproc-per-run needs --executor (each job runs torchrun on its "
                             "node); on this machine, train one run with isda train --nproc K")
        if self.executor is not None and self.executor not in EXECUTORS:
            raise ValueError(f"--executor must be one of {', '.join(EXECUTORS)}; "
                             f"got {self.executor!r}")
        for name in ("gpus_per_run", "cpus_per_run", "array_parallelism"):
            value = getattr(self, name)
            if value is not None and int(value) < (0 if name == "gpus_per_run" else 1):
                raise ValueError(f"--{name.replace('_', '-')} must be positive; got {value}")
        if self.executor is None:
            return self
        if self.executor == "slurm":
            from .slurm_queue import check_sbatch

            check_sbatch()
        try:
            import submitit  # noqa: F401
        except ImportError:
            raise ValueError(f"--executor {self.executor} needs submitit: {CLUSTER_EXTRA}") from None
        return self

    @property
    def sequential(self) -> bool:
        return self.executor is None and self.jobs == 1

    def submitit_parameters(self) -> dict[str, Any]:
        """submitit's ``update_parameters`` keywords (``None`` values are left out)."""
        parameters = {
            "name": "isda-compare", "timeout_min": self.time_min, "nodes": 1,
            "tasks_per_node": 1, "cpus_per_task": self.cpus_per_run,
            "gpus_per_node": self.gpus_per_run, "mem_gb": self.mem_gb,
            "slurm_partition": self.partition,
            "slurm_array_parallelism": self.array_parallelism or (
                self.jobs if self.jobs > 1 else None),
            "slurm_additional_parameters": self.slurm_args or None,
        }
        return {k: v for k, v in parameters.items() if v is not None}


def _summarize(runs: list[SweepRun], outcomes: dict[str, dict[str, Any]], task: Any) -> Any:
    """The :class:`~torch_isda.train.compare.SweepOutcome` of ``outcomes`` (sweep order)."""
    from ..compare import SweepOutcome

    summary = SweepOutcome()
    for run in runs:  # in the sweep's order, whatever order the runs finished in
        summary.runs.setdefault(run.key, []).append((run.seed, run.run_dir))
        outcome = outcomes.get(run.name, {"state": "failed", "error": "not run"})
        if outcome["state"] != "done":
            summary.failed[run.name] = outcome["error"]
            continue
        summary.reused += bool(outcome.get("reused"))
        summary.trained += not outcome.get("reused")
        warning = task.result_warning(outcome["result"], run.name)
        if warning:
            print(warning, file=sys.stderr)
    return summary


def sweep_executor(options: SweepOptions, out: str | Path, quiet: bool = False) -> Any:
    """The ``executor`` for :func:`~torch_isda.train.compare.run_comparison` (``None`` for
    the sequential sweep): it takes the same plan as
    :func:`~torch_isda.train.compare.train_planned` and returns the same outcome."""
    if options.sequential:
        return None

    def execute(plan: list[Any], *, force: bool = False, quiet: bool = quiet,
                say: Any = None) -> Any:
        from ..tasks import task_class

        task = task_class(plan[-1].config)
        runs = [SweepRun(p.name, p.variant.key, p.seed, str(out), p.config, force,
                         options.nproc_per_run) for p in plan]
        display = SweepDisplay(len(runs), task.result_line, quiet=quiet)
        where = options.executor or f"local processes ({options.jobs} at once)"
        manifest = Path(out) / SWEEP_DIR / "sweep.json"
        manifest.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(manifest, {"executor": options.executor or "jobs", "jobs": options.jobs,
                                     "started": time.time(), "runs": [r.slug for r in runs]})
        display.say(f"training {len(runs)} runs on {where}; bookkeeping in "
                    f"'{manifest.parent}' (isda status {out})")
        if options.executor is None:
            from .local import plan_slots, run_local

            first = plan[0].config
            slots = plan_slots(options.jobs, options.runs_per_gpu, first.device, first.threads)
            outcomes = run_local(runs, slots, display)
        else:
            from .submitit_jobs import run_submitit

            outcomes = run_submitit(runs, options.executor, options.submitit_parameters(),
                                    display)
        return _summarize(runs, outcomes, task)

    return execute
