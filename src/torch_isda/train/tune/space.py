"""``isda tune --param NAME=SPEC``: the search space, one option of ``isda train`` per
parameter (:class:`~torch_isda.train.config.TrainConfig` fields).

SPEC is ``log:LO:HI`` (log-uniform), ``float:LO:HI`` or ``LO:HI`` (uniform), ``int:LO:HI``
(integers, ``intlog:LO:HI`` log-uniform), or a comma-separated list of values
(``0.1,0.25,0.5,0.75,1``, a categorical choice; ``--sampler grid`` needs lists).
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any

from ..config import TrainConfig

__all__ = ["Param", "SearchSpace", "parse_param"]

#: Options that make no sense to search (where the run goes, how it is executed).
NOT_SEARCHABLE = ("out", "data_dir", "download", "device", "threads", "workers", "seed",
                  "dist_backend", "dist_timeout", "dataset", "model", "task", "compile")
RANGE_KINDS = ("log", "float", "int", "intlog")


def _field_types() -> dict[str, type]:
    hints = typing.get_type_hints(TrainConfig)
    types: dict[str, type] = {}
    for field in dataclasses.fields(TrainConfig):
        hint = hints[field.name]
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        base = args[0] if args else hint
        if base in (int, float, str, bool) and field.name not in NOT_SEARCHABLE:
            types[field.name] = base
    return types


@dataclass(frozen=True)
class Param:
    """One dimension: ``kind`` is a range kind (:data:`RANGE_KINDS`) or ``"choice"``."""

    name: str
    kind: str
    low: float = 0.0
    high: float = 0.0
    choices: tuple[Any, ...] = ()

    def spec(self) -> str:
        """The canonical ``NAME=SPEC`` (what the study records)."""
        if self.kind == "choice":
            return f"{self.name}={','.join(map(str, self.choices))}"
        return f"{self.name}={self.kind}:{self.low:g}:{self.high:g}"

    def suggest(self, trial: Any) -> Any:
        if self.kind == "choice":
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.kind in ("int", "intlog"):
            return trial.suggest_int(self.name, int(self.low), int(self.high),
                                     log=self.kind == "intlog")
        return trial.suggest_float(self.name, self.low, self.high, log=self.kind == "log")


def _convert(name: str, kind: type, text: str) -> Any:
    text = text.strip()
    try:
        if kind is bool:
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError
            return text.lower() in ("true", "1")
        return kind(text)
    except ValueError:
        raise ValueError(f"--param {name}: {text!r} is not a valid {kind.__name__}") from None


def _range(name: str, kind: str, bounds_text: str, field_type: type, spec: str) -> Param:
    if field_type not in (int, float):
        raise ValueError(f"--param {name} is a {field_type.__name__} option: give a list of "
                         f"values, e.g. {name}=a,b")
    bounds = bounds_text.split(":")
    if len(bounds) != 2:
        raise ValueError(f"--param {name}={spec}: a range is {kind}:LO:HI")
    low, high = (_convert(name, float, b) for b in bounds)
    log = kind in ("log", "intlog")
    if not low < high or (log and low <= 0):
        raise ValueError(f"--param {name}={spec}: needs LO < HI"
                         + (" and LO > 0 on a log scale" if log else ""))
    return Param(name, kind, low, high)


def parse_param(text: str) -> Param:
    """``"lambda0=log:0.05:10"`` -> :class:`Param` (one clear message per mistake)."""
    name, sep, spec = str(text).partition("=")
    name = name.strip().lstrip("-").replace("-", "_")
    types = _field_types()
    if not sep or not spec.strip():
        raise ValueError(f"--param expects NAME=SPEC (e.g. lambda0=log:0.05:10 or "
                         f"lambda0=0.1,0.25,0.5); got {text!r}")
    if name not in types:
        numeric = sorted(n for n, t in types.items() if t in (int, float))
        raise ValueError(f"unknown --param {name!r}: not an option of isda train that can be "
                         f"searched; numeric options: {', '.join(numeric)}")
    kind, _, rest = spec.partition(":")
    if kind not in RANGE_KINDS and ":" in spec and "," not in spec and kind != "choice":
        kind, rest = "float", spec  # LO:HI
    if kind in RANGE_KINDS:
        return _range(name, kind, rest, types[name], spec)
    values = tuple(_convert(name, types[name], v) for v in spec.removeprefix("choice:").split(",")
                   if v.strip())
    if not values or len(set(values)) != len(values):
        raise ValueError(f"--param {name}={spec}: a list of distinct values is needed")
    return Param(name, "choice", choices=values)


@dataclass(frozen=True)
class SearchSpace:
    params: tuple[Param, ...]

    @classmethod
    def parse(cls, items: list[str]) -> SearchSpace:
        if not items:
            raise ValueError("isda tune needs at least one --param, e.g. --param "
                             "lambda0=log:0.05:10 (or the paper's grid: --sampler grid "
                             "--param lambda0=0.1,0.25,0.5,0.75,1)")
        params = tuple(parse_param(item) for item in items)
        names = [p.name for p in params]
        if len(set(names)) != len(names):
            raise ValueError(f"--param names an option twice: {', '.join(names)}")
        return cls(params)

    def specs(self) -> list[str]:
        return sorted(p.spec() for p in self.params)

    def grid(self) -> dict[str, list[Any]]:
        """The grid of ``--sampler grid`` (every parameter must be a list)."""
        ranges = [p.name for p in self.params if p.kind != "choice"]
        if ranges:
            raise ValueError(f"--sampler grid needs lists of values, not ranges, for "
                             f"{', '.join(ranges)} (e.g. --param lambda0=0.1,0.25,0.5,0.75,1)")
        return {p.name: list(p.choices) for p in self.params}

    def suggest(self, trial: Any) -> dict[str, Any]:
        return {p.name: p.suggest(trial) for p in self.params}
