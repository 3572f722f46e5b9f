"""The ``isda`` command line.

Subcommands are listed in :data:`COMMANDS` as ``(name, module)``; each module exposes

* ``add_parser(subparsers) -> argparse.ArgumentParser``: calls
  ``subparsers.add_parser(name, ...)`` and adds its options;
* ``run(args) -> int``: executes the command (the exit status; ``None`` means 0).

To add a subcommand, write such a module and append one line to :data:`COMMANDS`. Keep
the module's top-level imports light (import heavy dependencies inside ``run``): every
module is imported to build ``isda --help``. A module that fails to import only disables
its own subcommand (running it prints the import error).

Errors a user can fix (``ValueError``, ``FileNotFoundError``, ``FileExistsError``) are
printed as ``isda <command>: error: ...`` with exit status 2
(:func:`torch_isda.train.arg_types.run_command`); ``isda --debug ...`` shows the full
traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import Any, NoReturn, Optional

__all__ = ["COMMANDS", "build_parser", "main"]

#: ``(subcommand, module)`` pairs, in the order shown by ``isda --help``.
COMMANDS: list[tuple[str, str]] = [
    ("train", "torch_isda.train.command_train"),
    ("compare", "torch_isda.train.command_compare"),
    ("list", "torch_isda.cli.list"),
    ("gan", "torch_isda.cli.gan"),
    ("visualize", "torch_isda.cli.visualize"),
    ("analyze", "torch_isda.cli.analyze"),
    ("bench", "torch_isda.cli.bench"),
    ("export", "torch_isda.cli.export"),
]

def _version() -> str:
    from .. import __version__

    try:
        import torch

        return f"isda (torch-isda) {__version__}, torch {torch.__version__}"
    except ImportError:  # pragma: no cover
        return f"isda (torch-isda) {__version__}"


def _unavailable(name: str, error: BaseException) -> Any:
    def run(args: argparse.Namespace) -> int:
        print(f"isda {name}: unavailable: {type(error).__name__}: {error}", file=sys.stderr)
        return 2

    return run


class OneLineErrorParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line, as every other error of ``isda``
    (``isda train: error: argument --epochs: invalid int value: 'x'; see 'isda train
    --help'``) instead of the whole usage; its subcommand parsers are of the same class."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}; see '{self.prog} --help'\n")

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        namespace, extras = super().parse_known_args(args, namespace)
        if not hasattr(namespace, "_innermost_parser"):  # the subcommand's parser, if any
            namespace._innermost_parser = self
        return namespace, extras

    def parse_args(self, args: Any = None, namespace: Any = None) -> Any:
        """Unknown options are reported by the subcommand that got them (``isda train:``)."""
        namespace, extras = self.parse_known_args(args, namespace)
        if extras:
            namespace._innermost_parser.error(f"unrecognized arguments: {' '.join(extras)}")
        return namespace


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog="isda",
        description="Implicit Semantic Data Augmentation (ISDA) for PyTorch: training and "
                    "experiments.")
    parser.add_argument("--version", action="version", version=_version())
    parser.add_argument("--debug", action="store_true",
                        help="show full tracebacks instead of short error messages")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in COMMANDS:
        try:
            module = importlib.import_module(module_name)
        except ImportError as err:
            sub = subparsers.add_parser(name, help=f"(unavailable: {err})")
            sub.set_defaults(_run=_unavailable(name, err))
            continue
        sub = module.add_parser(subparsers)
        sub.set_defaults(_run=module.run)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``isda`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(None if argv is None else list(argv))
    run = getattr(args, "_run", None)
    if run is None:
        parser.print_help(sys.stderr)
        return 2
    from ..train.arg_types import run_command  # imported here: the train extra is optional

    return run_command(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
