"""The configuration's walk from ``isda compare`` to the engine (issue 25): every call of a
torch_isda function that receives a TrainConfig, in order, until the first
``Engine.__init__``; prints the stops, then how many times the walk enters each module
(consecutive calls inside one module are one entry).

usage: python tools/config_walk.py [--from-sweep] [isda compare options ...]
  --from-sweep: start at run_comparison (one run's configuration, without the command's
  default-directory naming, which resolves other configurations)
"""

from __future__ import annotations

import sys
from typing import Any


class _Done(Exception):
    pass


def walk(argv: list[str], from_sweep: bool = False) -> list[tuple[str, str]]:
    """The ``(module, function)`` stops of ``isda compare ARGV`` up to the engine."""
    from torch_isda.cli import main
    from torch_isda.train.config import TrainConfig

    stops: list[tuple[str, str]] = []
    started = [not from_sweep]

    def profile(frame: Any, event: str, arg: Any) -> None:
        if event != "call" or not frame.f_globals.get("__name__", "").startswith("torch_isda"):
            return
        code = frame.f_code
        if code.co_name in ("__setattr__", "__eq__"):
            return
        started[0] = started[0] or code.co_name == "run_comparison"
        names = code.co_varnames[:code.co_argcount + code.co_kwonlyargcount]
        if started[0] and any(isinstance(frame.f_locals.get(n), TrainConfig) for n in names):
            stops.append((frame.f_globals["__name__"], code.co_name))
            if code.co_name == "__init__" and stops[-1][0].endswith("train.engine"):
                raise _Done

    sys.setprofile(profile)
    try:
        main(["compare", *argv])
    except _Done:
        pass
    finally:
        sys.setprofile(None)
    return stops


def entries(stops: list[tuple[str, str]]) -> dict[str, int]:
    """How many times the walk enters each module."""
    counts: dict[str, int] = {}
    last = None
    for module, _ in stops:
        if module != last:
            counts[module] = counts.get(module, 0) + 1
        last = module
    return counts


if __name__ == "__main__":
    args = sys.argv[1:]
    stops = walk([a for a in args if a != "--from-sweep"], "--from-sweep" in args)
    print(f"{len(stops)} stops:\n  " + " -> ".join(
        f"{m.replace('torch_isda.', '')}:{f}" for m, f in stops))
    for module, n in sorted(entries(stops).items(), key=lambda kv: -kv[1]):
        print(f"  {n}  {module}")
