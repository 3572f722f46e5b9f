"""The result of an ``isda tune`` search that ``isda compare --tuned OUT`` reads (no Optuna
needed): ``OUT/best.json``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["BEST_NAME", "apply_tuned", "load_best_params"]

BEST_NAME = "best.json"


def load_best_params(path: str | Path) -> dict[str, Any]:
    """The best parameters of an ``isda tune`` OUT (or of its ``best.json``)."""
    path = Path(path)
    if path.is_dir():
        path = path / BEST_NAME
    if not path.is_file():
        raise FileNotFoundError(f"--tuned: no {BEST_NAME} at '{path}' (run isda tune with "
                                f"--out {path.parent} until a trial completes)")
    return dict(json.loads(path.read_text())["params"])


def apply_tuned(overrides: dict[str, Any], path: str | Path) -> dict[str, Any]:
    """``overrides`` (the options typed) plus the tuned parameters; an option both typed
    and tuned is refused (which one was meant?)."""
    tuned = load_best_params(path)
    both = sorted(set(tuned) & set(overrides))
    if both:
        raise ValueError(f"--tuned {path} sets {', '.join(both)}, also given on the command "
                         f"line; drop one of them")
    return {**overrides, **tuned}
