"""``isda compare``: train several criteria (or semi-supervised methods) over several seeds
and tabulate (Table 2 / 6 / 7 style; the sweep is :mod:`torch_isda.train.compare`)."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from .config import TrainConfig, add_config_arguments, config_overrides_from_args
from .reporting import plural

__all__ = ["DEFAULTS", "add_parser", "run"]

#: The embedded default comparison; its ``threads=1`` (why: docs/training.md) applies to the
#: default dataset/model only and yields to --threads.
DEFAULTS = {"dataset": "digits", "model": "digits_cnn", "losses": "ce,isda", "seeds": "5",
            "out": "runs/compare-digits", "threads": 1}

EPILOG = """\
Runs go to OUT/<loss>/seed<k>/; finished runs are reused and interrupted ones resumed, so
re-running the same command continues an interrupted comparison. The default OUT names the
settings that differ from the defaults (runs/compare-digits-epochs10 for --epochs 10), so
reduced runs never collide with the full one. Examples:

  isda compare                                  # digits, ce vs isda, 5 seeds
  isda compare --dataset cifar10 --download --model resnet32 --losses ce,isda --seeds 5 \\
               --out runs/compare-c10-r32 --amp bf16
  isda compare --losses "ce,isda(lambda0=0.25),isda(lambda0=1)" --seeds 0,1,2
  isda compare --semi vat,mean-teacher --isda both --labels 100 --seeds 5   # Table 6 style
"""


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "compare", help="compare criteria over seeds: Table-2-style table and curves",
        description="Train every (loss, seed) pair and write OUT/table.md, OUT/table.csv "
                    "and OUT/curves.png.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    group = parser.add_argument_group("comparison")
    from .command_train import criteria_help

    group.add_argument("--losses", default=None, metavar="SPEC,SPEC",
                       help=f"comma-separated criterion specs (default: {DEFAULTS['losses']})"
                            f"{criteria_help()}")
    group.add_argument("--seeds", default=DEFAULTS["seeds"], metavar="N|S1,S2",
                       help="number of seeds N >= 1 (seeds 0..N-1) or a comma-separated list "
                            "of seeds; one seed with a trailing comma, e.g. 3, (default: 5)")
    group.add_argument("--out", default=None,
                       help=f"output directory (default: {DEFAULTS['out']} for the default "
                            f"dataset/model, else runs/compare-<dataset>-<model>, followed by "
                            f"the settings that differ from the defaults, e.g. "
                            f"{DEFAULTS['out']}-epochs10)")
    group.add_argument("--force", action="store_true", help="retrain finished runs")
    group.add_argument("--tuned", default=None, metavar="TUNE_OUT",
                       help="train with the best parameters of an isda tune search (its OUT "
                            "or OUT/best.json), on the full training set")
    group.add_argument("--quiet", action="store_true", help="print only the table")
    group.add_argument("--isda", default="both", choices=("off", "on", "both"),
                       help="with --semi M1,M2: train each method without ISDA (--loss ce), "
                            "with ISDA (Eq. 19, --loss isda) or both (Table 6; default: both)")
    add_config_arguments(parser, exclude=("loss", "seed", "out"),
                         title="training configuration (applies to every run)")
    from .sweep.cli_args import add_sweep_arguments

    add_sweep_arguments(parser)
    return parser


def _default_out(base: TrainConfig) -> str:
    """Keyed by configuration: runs/compare-digits-epochs10, ... (the base and its reference
    resolved here: this command is an entry point)."""
    from .compare_out import comparison_dir, default_comparison_out, suffix_configs
    from .resolve import resolve_config

    if base.semi != "none":
        from .compare import parse_semi_methods
        from .tasks.semi.config import labels_suffix

        first = base.replace(semi=parse_semi_methods(base.semi)[0])
        prefix = f"runs/compare-semi-{base.dataset}-{base.model}{labels_suffix(base)}"
        reference = TrainConfig(dataset=base.dataset, model=base.model, semi=first.semi)
        config, ref = (resolve_config(c) for c in suffix_configs(first, reference))
        return default_comparison_out(prefix, config, ref, ignore=("semi", "labels"))
    reference = TrainConfig(dataset=base.dataset, model=base.model)
    config, ref = (resolve_config(c) for c in suffix_configs(base, reference))
    return comparison_dir(config, ref, DEFAULTS["out"], (DEFAULTS["dataset"], DEFAULTS["model"]))


def _print_notes(overrides: dict, base: TrainConfig) -> None:
    """The option notes of ``isda train``, when the shared base configuration resolves (a
    list of --semi methods does not: each run is then resolved, and reported, by the plan)."""
    from .cli_checks import print_option_notes
    from .resolve import resolve_config

    try:
        resolved = resolve_config(base)
    except ValueError:
        return
    print_option_notes(overrides, resolved)


def run(args: argparse.Namespace) -> int:
    from .compare import run_comparison

    overrides = config_overrides_from_args(args)
    if args.tuned:
        from .tune.best import apply_tuned

        overrides = apply_tuned(overrides, args.tuned)
    base = TrainConfig(**{"dataset": DEFAULTS["dataset"], "model": DEFAULTS["model"], **overrides})
    is_default = (base.dataset, base.model) == (DEFAULTS["dataset"], DEFAULTS["model"])
    if is_default and "threads" not in overrides:
        base = base.replace(threads=DEFAULTS["threads"])
    from .cli_checks import check_command_line

    check_command_line(overrides, base)
    if base.semi != "none" and args.losses is not None:
        raise ValueError("with --semi the columns are chosen by --isda off|on|both (ce = the "
                         "base method alone, isda = Eq. 19), not --losses; set ISDA options "
                         "with --lambda0, --kind, --eta1")
    _print_notes(overrides, base)
    out = args.out or _default_out(base)
    from .sweep.cli_args import sweep_options_from_args
    from .sweep.local import SweepInterrupted
    from .sweep.options import sweep_executor

    executor = sweep_executor(sweep_options_from_args(args), out, quiet=args.quiet)
    t0 = time.perf_counter()
    try:
        result = run_comparison(base, args.losses or DEFAULTS["losses"], args.seeds, out,
                                isda=args.isda, force=args.force, quiet=args.quiet,
                                executor=executor)
    except SweepInterrupted as stop:
        print(f"isda compare: {stop}", file=sys.stderr)
        return 130
    print()
    print(result.table)
    print(f"table: {result.table_md} (csv: {result.table_csv})")
    print(f"curves: {result.curves_png}")
    for run_name, error in result.failed.items():
        print(f"failed: {run_name}: {error}")
    if not args.quiet:
        print(f"{plural(result.trained, 'run')} trained, {result.reused} reused, "
              f"{len(result.failed)} failed, {time.perf_counter() - t0:.1f}s")
    return 0
