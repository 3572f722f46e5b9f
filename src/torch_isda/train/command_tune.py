"""``isda tune``: search λ₀ (or any numeric option) with Optuna on a validation split carved
from the training set, never the test set (:mod:`torch_isda.train.tune`, docs/scale.md)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from .config import TrainConfig, add_config_arguments, config_overrides_from_args

__all__ = ["add_parser", "run"]

EPILOG = """\
Every trial is a run in OUT/trials/trial<k>/ evaluated on --val-size images held out of the
training set. Re-running the command continues the study until it holds --trials trials.
Examples:

  isda tune --param lambda0=log:0.05:10 --val-size 300 --trials 20 --epochs 30
  isda tune --sampler grid --param lambda0=0.1,0.25,0.5,0.75,1 --val-size 300
  isda tune --param lambda0=log:0.05:10 --param lr=log:0.01:0.3 --jobs 2
  isda compare --tuned runs/tune-digits --seeds 5      # the final comparison, full training set
"""


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "tune", help="search lambda_0 (or any numeric option) with Optuna on a validation split",
        description="Optuna study over training options; writes OUT/best.json, OUT/trials.md, "
                    "OUT/trials.csv and OUT/tune.png.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    group = parser.add_argument_group("search")
    group.add_argument("--param", action="append", default=None, metavar="NAME=SPEC",
                       help="a searched option (repeatable): log:LO:HI, LO:HI, int:LO:HI or a "
                            "list a,b,c (e.g. lambda0=log:0.05:10)")
    group.add_argument("--val-size", type=int, default=None, metavar="M",
                       help="validation images carved from the training set (required)")
    group.add_argument("--trials", type=int, default=20, help="trials in the study (default: 20)")
    from .tune.study import PRUNERS, SAMPLERS

    group.add_argument("--sampler", default="tpe", choices=SAMPLERS,
                       help="tpe (default), grid (lists only: the paper's lambda_0 grid), random")
    group.add_argument("--pruner", default="median", choices=PRUNERS,
                       help="median: stop a trial whose validation error is worse than the "
                            "median of the others at the same epoch (default)")
    group.add_argument("--sampler-seed", type=int, default=0, help="the sampler's seed")
    group.add_argument("--out", default=None, help="default: runs/tune-<dataset>-<model>")
    group.add_argument("--storage", default=None, metavar="URL",
                       help="default: sqlite:///OUT/study.db; journal:PATH or a database URL "
                            "(postgresql://...) for workers on several machines")
    group.add_argument("--study-name", default="isda-tune")
    group.add_argument("--heartbeat", type=int, default=30, metavar="S",
                       help="seconds between a running trial's heartbeats (default: 30)")
    group.add_argument("--grace", type=int, default=120, metavar="S",
                       help="a trial without a heartbeat for S seconds is marked failed and "
                            "retried (its worker died; default: 120)")
    add_config_arguments(parser, exclude=("out",),
                         title="training configuration (every trial; --param overrides)")
    from .sweep.cli_args import add_sweep_arguments

    add_sweep_arguments(parser, workers=True)
    return parser


def _spec(args: argparse.Namespace) -> Any:
    from .tune.space import SearchSpace
    from .tune.storage import default_storage
    from .tune.study import TuneSpec

    space = SearchSpace.parse(args.param)
    if args.sampler == "grid":
        space.grid()
    if args.val_size is None or args.val_size < 1:
        raise ValueError("isda tune needs --val-size M: the M training images held out for "
                         "validation (the test set is never used for the search)")
    if args.trials < 1:
        raise ValueError(f"--trials must be at least 1; got {args.trials}")
    overrides = config_overrides_from_args(args)
    base = TrainConfig(**overrides)
    if "threads" not in overrides and (base.dataset, base.model) == ("digits", "digits_cnn"):
        base = base.replace(threads=1)
    out = args.out or f"runs/tune-{base.dataset}-{base.model}"
    return TuneSpec(base=base, params=list(args.param), out=out,
                    storage=args.storage or default_storage(out), study_name=args.study_name,
                    trials=args.trials, sampler=args.sampler, pruner=args.pruner,
                    val_size=args.val_size, heartbeat=args.heartbeat, grace=args.grace,
                    sampler_seed=args.sampler_seed)


def run(args: argparse.Namespace) -> int:
    try:
        from .tune.report import write_report
        from .tune.study import load_study, run_worker
        from .tune.workers import run_worker_jobs, run_workers
    except ImportError as err:
        raise ValueError(f"isda tune needs Optuna: pip install \"torch-isda[cluster]\" ({err})") from None
    from .sweep.cli_args import sweep_options_from_args

    options = sweep_options_from_args(args)
    spec = _spec(args)
    study = load_study(spec)[0]  # checks the storage and the search space before any worker
    if options.executor is not None:
        for error in run_worker_jobs(spec, options.jobs, options.executor,
                                     options.submitit_parameters()):
            print(f"isda tune: {error}", file=sys.stderr)
    elif options.jobs > 1:
        codes = run_workers(spec, options.jobs, options.runs_per_gpu)
        if any(codes):
            print(f"isda tune: workers exited with {codes}; logs: {spec.out}/worker*.log",
                  file=sys.stderr)
    else:
        run_worker(spec)
    best = write_report(load_study(spec)[0] if options.executor or options.jobs > 1 else study,
                        spec)
    print(Path(spec.out, "trials.md").read_text())
    if best is None:
        print("no trial completed yet; re-run the command to continue the study")
        return 1
    params = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in best["params"].items())
    print(f"best: trial {best['trial']}, validation error {best['val_error']:.2f}% with {params}")
    print(f"written: {spec.out}/best.json, trials.md, trials.csv, tune.png; final comparison: "
          f"isda compare --tuned {spec.out} ...")
    return 0
