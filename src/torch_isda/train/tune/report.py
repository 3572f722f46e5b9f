"""What ``isda tune`` writes into OUT: ``best.json`` (the best parameters, for ``isda compare
--tuned OUT``), ``trials.md`` / ``trials.csv`` (every trial) and ``tune.png`` (validation error
against the first searched parameter, usually λ₀)."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any, Optional

from optuna.trial import TrialState

from ..checkpoint import atomic_write_json, atomic_write_text
from .best import BEST_NAME

__all__ = ["write_report"]


def _rows(study: Any, names: list[str]) -> list[list[Any]]:
    rows = []
    for trial in study.get_trials(deepcopy=False):
        value = trial.value if trial.state == TrialState.COMPLETE else (
            trial.intermediate_values[max(trial.intermediate_values)]
            if trial.intermediate_values else None)
        epochs = max(trial.intermediate_values) if trial.intermediate_values else 0
        rows.append([trial.number, trial.state.name.lower(),
                     *[_short(trial.params.get(n)) for n in names],
                     None if value is None else round(float(value), 4), epochs,
                     trial.user_attrs.get("run_dir", "")])
    return rows


def _short(value: Any) -> Any:
    return float(f"{value:.4g}") if isinstance(value, float) else value


def _plot(study: Any, name: str, log: bool, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for state, marker, label in ((TrialState.COMPLETE, "o", "complete"),
                                 (TrialState.PRUNED, "x", "pruned (last reported)")):
        points = [(t.params[name], t.value if state == TrialState.COMPLETE else
                   t.intermediate_values[max(t.intermediate_values)])
                  for t in study.get_trials(deepcopy=False, states=(state,))
                  if name in t.params and (state == TrialState.COMPLETE or t.intermediate_values)]
        if points:
            ax.scatter(*zip(*points), marker=marker, label=label)
    if log:
        ax.set_xscale("log")
    ax.set_xlabel("λ₀" if name == "lambda0" else name)
    ax.set_ylabel("validation error (%)")
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(study: Any, spec: Any) -> Optional[dict[str, Any]]:
    """Write best.json, trials.md, trials.csv and tune.png; returns the best record (``None``
    while no trial completed)."""
    out = Path(spec.out)
    out.mkdir(parents=True, exist_ok=True)
    space = spec.space
    names = [p.name for p in space.params]
    header = ["trial", "state", *names, "val_error", "epochs", "run_dir"]
    rows = _rows(study, names)
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows([header, *rows])
    atomic_write_text(out / "trials.csv", buffer.getvalue())
    cell = (lambda v: "-" if v is None or v == "" else str(v))
    table = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    table += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    atomic_write_text(out / "trials.md", "\n".join(table) + "\n")
    first = space.params[0]
    _plot(study, first.name, first.kind in ("log", "intlog"), out / "tune.png")
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return None
    best = min(complete, key=lambda t: t.value if math.isfinite(t.value) else math.inf)
    record = {"params": best.params, "val_error": best.value, "trial": best.number,
              "run_dir": best.user_attrs.get("run_dir"), "study": spec.study_name,
              "storage": spec.storage, "val_size": spec.val_size,
              "trials": {s.name.lower(): n for s in TrialState
                         if (n := sum(t.state == s for t in study.get_trials(deepcopy=False)))}}
    atomic_write_json(out / BEST_NAME, record)
    return record
