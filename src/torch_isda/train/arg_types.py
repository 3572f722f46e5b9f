"""What every ``isda`` subcommand shares: argparse value types (clear messages for bad
values) and the policy for errors a user can fix (:func:`run_command`).

It lives in the harness because the torchrun worker (``python -m torch_isda.train``) runs
``isda train`` without the :mod:`torch_isda.cli` package.
"""

from __future__ import annotations

import argparse
import sys

__all__ = ["USER_ERRORS", "non_negative_float", "non_negative_int", "positive_int", "run_command"]

#: Errors a user can fix: printed as ``isda <command>: error: ...`` with exit status 2.
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError)


def positive_int(text: str) -> int:
    """An integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer; got {text}")
    return value


def non_negative_int(text: str) -> int:
    """An integer >= 0."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0; got {text}")
    return value


def non_negative_float(text: str) -> float:
    """A float >= 0."""
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0; got {text}")
    return value


def run_command(args: argparse.Namespace) -> int:
    """Run the parsed subcommand ``args._run`` and return the exit status: errors a user can
    fix (:data:`USER_ERRORS`) become one line on stderr and status 2 (the traceback with
    ``args.debug``), an interrupt status 130."""
    try:
        status = args._run(args)
    except KeyboardInterrupt:
        print(f"isda {args.command}: interrupted", file=sys.stderr)
        return 130
    except USER_ERRORS as err:
        if args.debug:
            raise
        print(f"isda {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0 if status is None else int(status)
