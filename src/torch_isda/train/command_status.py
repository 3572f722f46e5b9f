"""``isda status OUT``: which runs of a sweep started with ``isda compare --jobs`` or
``--executor`` are pending, running, done or failed (:mod:`torch_isda.train.sweep.status`)."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_parser", "run"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "status", help="the runs of an isda compare sweep: pending, running, done, failed",
        description="Show every run of the sweep in OUT (started with isda compare --jobs or "
                    "--executor) with its state, job id, progress and log file.")
    parser.add_argument("out", metavar="OUT", help="the comparison's output directory")
    return parser


def run(args: argparse.Namespace) -> int:
    from .sweep.status import format_status, sweep_status

    print(format_status(sweep_status(args.out)))
    return 0
