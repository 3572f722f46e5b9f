"""The options of ``isda compare`` that choose where its runs train (``--jobs``,
``--executor`` and the Slurm options), and :class:`~.options.SweepOptions` from them."""

from __future__ import annotations

import argparse
from typing import Any

from .options import EXECUTORS, SweepOptions, parse_slurm_args, parse_time_limit

__all__ = ["add_sweep_arguments", "sweep_options_from_args"]


def add_sweep_arguments(parser: argparse.ArgumentParser, workers: bool = False) -> None:
    """The options; ``workers``: for ``isda tune``, whose processes and jobs are workers
    of one study rather than one run each."""
    group = parser.add_argument_group(
        "where the trials train (docs/scale.md)" if workers else
        "where the runs train (docs/scale.md)",
        "default: one worker in this process." if workers else
        "default: one after the other in this process. The table is the same either way.")
    group.add_argument("--jobs", default="1", metavar="N",
                       help="N workers on the study (processes here, or jobs with --executor)"
                       if workers else "train up to N runs at once on this machine, one "
                       "process each (GPUs round-robin; CPU threads split between them)")
    group.add_argument("--runs-per-gpu", default="1", metavar="K",
                       help="with --jobs on GPUs: up to K processes share one GPU (small "
                            "models)")
    group.add_argument("--executor", default=None, choices=EXECUTORS,
                       help="submit the workers as one submitit job array (--jobs of them)"
                       if workers else "submit the runs as one submitit job array: slurm "
                       "(sbatch), or submitit's local/debug executors on this machine")
    group.add_argument("--partition", default=None, help="--executor slurm: the partition")
    group.add_argument("--time", default=None, metavar="MIN|D-HH:MM:SS",
                       help="time limit of each job; a job hitting it is requeued and "
                            "resumes (a run from its last epoch)")
    group.add_argument("--gpus-per-run", type=int, default=None, metavar="G",
                       help="GPUs of each job (--executor)")
    group.add_argument("--cpus-per-run", type=int, default=None, metavar="C",
                       help="CPUs of each job (--executor)")
    if not workers:
        group.add_argument("--nproc-per-run", default="1", metavar="K",
                           help="--executor: each run spans K processes of its job's node "
                                "(torchrun; give the job K GPUs with --gpus-per-run K)")
    group.add_argument("--mem-gb", type=float, default=None, help="memory of each job")
    group.add_argument("--array-parallelism", type=int, default=None, metavar="P",
                       help="--executor slurm: at most P jobs of the array at once "
                            "(default: --jobs when given, else submitit's 256)")
    group.add_argument("--slurm-arg", action="append", default=None, metavar="KEY=VALUE",
                       help="an extra sbatch option (repeatable), e.g. --slurm-arg qos=high "
                            "--slurm-arg constraint=a100; a bare KEY is a flag (exclusive)")


def sweep_options_from_args(args: argparse.Namespace) -> SweepOptions:
    values: dict[str, Any] = {
        "jobs": args.jobs, "runs_per_gpu": args.runs_per_gpu, "executor": args.executor,
        "partition": args.partition, "gpus_per_run": args.gpus_per_run,
        "cpus_per_run": args.cpus_per_run, "mem_gb": args.mem_gb,
        "nproc_per_run": getattr(args, "nproc_per_run", 1),
        "array_parallelism": args.array_parallelism,
        "slurm_args": parse_slurm_args(args.slurm_arg),
        "time_min": None if args.time is None else parse_time_limit(args.time),
    }
    return SweepOptions(**values).check()
