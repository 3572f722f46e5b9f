"""The options of ``isda visualize``, ``isda gan train`` and ``isda analyze`` (their flags,
defaults, help texts, groups, descriptions and epilogs) equal a snapshot taken before their
parsers were split into functions (tests/cli_options_snapshot.json, recorded at commit
895fb25): splitting a parser must not change the command line or its help."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from torch_isda import cli

SNAPSHOT = Path(__file__).with_name("cli_options_snapshot.json")


def _action(a: argparse.Action) -> dict:
    choices = a.choices
    if choices is not None and not isinstance(a, argparse._SubParsersAction):
        choices = [str(c) for c in choices]
    else:
        choices = None
    metavar = a.metavar if isinstance(a.metavar, (str, type(None))) else list(a.metavar)
    return {"flags": list(a.option_strings) or [a.dest], "dest": a.dest, "default": repr(a.default),
            "help": a.help, "choices": choices, "metavar": metavar, "required": a.required,
            "nargs": a.nargs, "const": repr(a.const), "type": getattr(a.type, "__name__", repr(a.type)),
            "kind": type(a).__name__}


def _parser(p: argparse.ArgumentParser, full: bool = True) -> dict:
    """``full=False``: of the training-configuration groups (the harness's) only the titles."""
    groups = [{"title": g.title, "description": g.description,
               "actions": [_action(a) for a in g._group_actions
                           if not isinstance(a, argparse._HelpAction)]
               if full or g.title == "analysis" else None}
              for g in p._action_groups]
    return {"prog_tail": p.prog.split()[-1], "description": p.description, "epilog": p.epilog,
            "usage": p.usage, "groups": groups}


def _subcommands(p: argparse.ArgumentParser) -> dict:
    for a in p._actions:
        if isinstance(a, argparse._SubParsersAction):
            return a.choices
    return {}


def test_visualize_gan_and_analyze_options_equal_the_snapshot():
    top = _subcommands(cli.build_parser())
    now = {"visualize": _parser(top["visualize"]), "gan": _parser(top["gan"]),
           "gan train": _parser(_subcommands(top["gan"])["train"]),
           "analyze": _parser(top["analyze"])}
    for name, sub in _subcommands(top["analyze"]).items():
        now[f"analyze {name}"] = _parser(sub, full=False)
    # through JSON, as the snapshot was written (tuples become lists)
    assert json.loads(json.dumps(now)) == json.loads(SNAPSHOT.read_text())
