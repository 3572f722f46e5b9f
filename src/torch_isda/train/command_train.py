"""``isda train``: train one model (also ``python -m torch_isda.train``, :func:`main`)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from .arg_types import positive_int, run_command
from .config import TrainConfig, add_config_arguments, config_overrides_from_args
from .tasks import task_class

__all__ = ["add_parser", "build_config", "criteria_help", "main", "report", "run", "run_args"]

EPILOG = """\
Unset optimization options come from the preset of the model family (the paper's
Table 9; see docs/training.md). Examples:

  isda train                                   # digits, digits_cnn, ISDA, small_cnn preset
  isda train --dataset cifar100 --download --model resnet110 --loss isda --lambda0 0.5 \\
             --out runs/r110-isda --amp bf16 --channels-last
  isda train --out runs/r110-isda --resume     # continue an interrupted run
  isda train --out runs/r110-isda --resume auto  # resume if there is a checkpoint, else start
  isda list criteria                           # the losses --loss accepts
"""


def _resume_value(text: str) -> str:
    if text != "auto":
        raise argparse.ArgumentTypeError(f"--resume takes no value or 'auto'; got {text!r}")
    return text


def criteria_help() -> str:
    """The registered criteria, for the help of ``--loss`` / ``--losses``."""
    from .criteria import list_criteria

    return (f" (primary losses: {', '.join(list_criteria('primary'))}; modifiers: "
            f"{', '.join(list_criteria('modifier'))}; see 'isda list criteria')")


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("run control")
    group.add_argument("--config", metavar="JSON", default=None,
                       help="start from this JSON config (a run's config.json works); "
                            "command-line options override it")
    group.add_argument("--resume", nargs="?", const=True, default=False, type=_resume_value,
                       metavar="auto",
                       help="continue from checkpoint.pt in --out (with the run's saved "
                            "config; options given here override it, e.g. --epochs); "
                            "'--resume auto': resume when a checkpoint exists, else start "
                            "fresh (for preemptible jobs re-running the same command)")
    group.add_argument("--force", action="store_true",
                       help="retrain even if --out holds a finished or unfinished run")
    group.add_argument("--stop-after", type=positive_int, default=None, metavar="EPOCHS",
                       help="stop after this many epochs (resume later with --resume)")
    group.add_argument("--quiet", action="store_true",
                       help="no progress bar and no per-epoch lines")
    group.add_argument("--nproc", type=int, default=None, metavar="K",
                       help="data-parallel training in K processes on this machine, launched "
                            "with torchrun (same as 'torchrun --nproc-per-node K -m "
                            "torch_isda.train ...'); --batch-size stays the global batch")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "train", help="train one model (presets from the paper's Table 9)",
        description="Train one model with a training criterion (ce, isda, ...).",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser, extra_help={"loss": criteria_help()})
    add_run_arguments(parser)
    return parser


def build_config(args: argparse.Namespace) -> TrainConfig:
    """The run's config: ``--config`` file, else (with ``--resume``) the run directory's
    saved config, else the defaults; then the options given on the command line."""
    overrides = config_overrides_from_args(args)
    if args.config:
        base = TrainConfig.load(args.config)
    else:
        base = TrainConfig()
        if args.resume:
            out = overrides.get("out")
            if out is None:
                from .presets import default_out_dir

                out = default_out_dir(base.replace(**overrides))
            saved = Path(out) / "config.json"
            if saved.is_file() and (args.resume is True or (Path(out) / "checkpoint.pt").is_file()):
                base = TrainConfig.load(saved)
    return base.replace(**overrides)


def run_args(args: argparse.Namespace) -> list[str]:
    """The run-control options of ``args`` as command-line words (for torchrun workers)."""
    words: list[str] = []
    if args.resume:
        words += ["--resume"] + (["auto"] if args.resume == "auto" else [])
    if args.force:
        words.append("--force")
    if args.stop_after is not None:
        words += ["--stop-after", str(int(args.stop_after))]
    if args.quiet:
        words.append("--quiet")
    return words


def run(args: argparse.Namespace) -> int:
    from .parallel import USER_ERRORS, launched_by_torchrun

    if args.resume and args.force:
        raise ValueError("--resume and --force contradict each other (--resume continues the "
                         "run in --out, --force deletes it and starts over): pass one of them")

    config = build_config(args)
    if getattr(args, "nproc", None) is not None:  # isda train --nproc K: launch torchrun
        from .launch import launch_config
        from .resolve import resolve_config

        return launch_config(int(args.nproc), config, resolve_config(config), run_args(args))
    from .engine import train

    kwargs = dict(resume=args.resume, force=args.force, quiet=args.quiet,
                  stop_after=args.stop_after)
    if not launched_by_torchrun():
        from .cli_checks import check_command_line, print_option_notes
        from .resolve import resolve_config

        overrides = config_overrides_from_args(args)
        check_command_line(overrides, config)
        resolved = resolve_config(config)  # a bad value is reported alone, before any note
        print_option_notes(overrides, resolved)
        return report(train(resolved, **kwargs))
    # a torchrun worker: errors every rank raises identically are reported by rank 0 only
    rank = int(os.environ.get("RANK", "0"))
    from .progress_file import progress_callbacks_from_env

    try:
        result = train(config, distributed=True, callbacks=progress_callbacks_from_env(rank),
                       **kwargs)
    except tuple(USER_ERRORS.values()) as err:
        if rank != 0 and getattr(err, "torch_isda_mirrored", False):
            return 2
        raise
    return report(result) if rank == 0 else 0


def report(result: dict[str, Any]) -> int:
    """Print the outcome of a run (``train``'s result); returns the exit status."""
    if result["status"] == "stopped":
        print(f"stopped after epoch {result['epochs_done']}/{result['epochs']}; continue with: "
              f"isda train --out {result['out']} --resume")
        return 0
    task = task_class(result.get("task") or "classification")
    print(f"{task.run_summary(result)}  -> {Path(result['out']) / 'result.json'}")
    warning = task.result_warning(result)
    if warning:
        print(warning, file=sys.stderr)
    return 0


def main(argv: list[str]) -> int:
    """``python -m torch_isda.train ARGS`` (torchrun workers): ``isda train ARGS`` without
    the other subcommands; returns the exit status."""
    parser = argparse.ArgumentParser(prog="isda")
    parser.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    add_parser(parser.add_subparsers(dest="command")).set_defaults(_run=run)
    return run_command(parser.parse_args(["train", *argv]))
