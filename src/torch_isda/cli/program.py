"""The ``isda`` command line.

Subcommands are listed in :data:`COMMANDS` as ``(name, module)``; each module exposes

* ``add_parser(subparsers) -> argparse.ArgumentParser``: calls
  ``subparsers.add_parser(name, ...)`` and adds its options;
* ``run(args) -> int``: executes the command (the exit status; ``None`` means 0).

To add a subcommand, write such a module, append one line to :data:`COMMANDS` and its
one-line help to :data:`SUMMARIES`. ``isda --help`` lists the subcommands from
:data:`SUMMARIES` without importing their modules (one without a line there is imported);
``isda NAME ...`` imports only NAME's module, so keep the modules' top-level imports light
too (import heavy dependencies inside ``run``). A module that fails to import only disables
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
    ("status", "torch_isda.train.command_status"),
    ("tune", "torch_isda.train.command_tune"),
    ("list", "torch_isda.cli.list"),
    ("gan", "torch_isda.cli.gan"),
    ("visualize", "torch_isda.cli.visualize"),
    ("analyze", "torch_isda.cli.analyze"),
    ("bench", "torch_isda.cli.bench"),
    ("export", "torch_isda.cli.export"),
]

#: The one-line help of each subcommand, for ``isda --help`` without importing the modules
#: (each module's ``add_parser`` gives the same line; tests/test_startup.py checks they agree).
SUMMARIES: dict[str, str] = {
    "train": "train one model (presets from the paper's Table 9)",
    "compare": "compare criteria over seeds: Table-2-style table and curves",
    "status": "the runs of an isda compare sweep: pending, running, done, failed",
    "tune": "search lambda_0 (or any numeric option) with Optuna on a validation split",
    "list": "list models, datasets, criteria, augmentations, presets or semi methods",
    "gan": "train the generators of `isda visualize` and of Table 5's GAN baselines",
    "visualize": "map ISDA-augmented features back to images with a trained generator",
    "analyze": "analyses of Section 6.5: tightness, explicit, tsne, sensitivity, ablation",
    "bench": "benchmarks: 'overhead' (theoretical and wall-time cost of ISDA, Table 3)",
    "export": "write a run's ResNet backbone with torchvision / timm key names",
}


def _version() -> str:
    from .. import __version__

    try:
        import torch

        return f"isda (torch-isda) {__version__}, torch {torch.__version__}"
    except ImportError:  # pragma: no cover
        return f"isda (torch-isda) {__version__}"


class _VersionAction(argparse.Action):
    """``--version``, importing torch (for its version) only when asked."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS,
                         help="show program's version number and exit")

    def __call__(self, parser: argparse.ArgumentParser, namespace: Any, values: Any,
                 option_string: Optional[str] = None) -> None:
        print(_version())
        parser.exit()


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


def chosen_command(argv: Sequence[str]) -> str:
    """The subcommand named in ``argv`` (``""`` when none is, e.g. ``isda --help``)."""
    names = {name for name, _ in COMMANDS}
    for arg in argv:
        if not arg.startswith("-"):
            return arg if arg in names else ""
    return ""


def build_parser(only: Optional[str] = None) -> argparse.ArgumentParser:
    """The ``isda`` parser; with ``only``, just that subcommand's module is imported (the
    others are listed with their :data:`SUMMARIES` line; a command without one is
    imported), so ``isda --help`` and ``isda list`` do not import the training harness."""
    parser = OneLineErrorParser(
        prog="isda",
        description="Implicit Semantic Data Augmentation (ISDA) for PyTorch: training and "
                    "experiments.")
    parser.add_argument("--version", action=_VersionAction)
    parser.add_argument("--debug", action="store_true",
                        help="show full tracebacks instead of short error messages")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in COMMANDS:
        if only is not None and name != only and name in SUMMARIES:
            subparsers.add_parser(name, help=SUMMARIES[name])
            continue
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
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(only=chosen_command(argv))
    args = parser.parse_args(argv)
    run = getattr(args, "_run", None)
    if run is None:
        parser.print_help(sys.stderr)
        return 2
    from ..train.arg_types import run_command  # imported here: the train extra is optional

    return run_command(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
