"""The ``isda`` command line: the program (:mod:`~torch_isda.cli.program`: ``COMMANDS``, ``main``) and its subcommands.

``isda train`` and ``isda compare`` live in the harness (:mod:`torch_isda.train.command_train`,
:mod:`torch_isda.train.command_compare`) because torchrun workers (``python -m
torch_isda.train``) run them without this package; the others are here: ``list``,
``export`` (with :mod:`~torch_isda.cli.export_backbone`), ``gan``, ``visualize``,
``analyze`` and ``bench``.
"""

from .program import COMMANDS, build_parser, main

__all__ = ["COMMANDS", "build_parser", "main"]
