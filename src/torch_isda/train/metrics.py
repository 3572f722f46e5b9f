"""Per-epoch metrics files (columns: docs/training.md; ``epoch`` is 1-based) and the paper's
reporting rule. Both files are rewritten atomically from all rows after every epoch, so they
always match the checkpoint a resumed run starts from.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

from .checkpoint import atomic_write_json, atomic_write_text
from .reporting import PAPER_FINAL_EPOCHS

__all__ = ["BASE_COLUMNS", "final_error", "summarize", "write_metrics"]

BASE_COLUMNS = ("epoch", "train_loss", "train_error", "test_loss", "test_error", "lr", "lambda",
                "seconds")


def clean_number(value: Any) -> Any:
    """Floats that are NaN/inf become ``None`` (valid JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def columns_of(rows: Sequence[dict[str, Any]]) -> list[str]:
    """:data:`BASE_COLUMNS`, then the other keys of ``rows`` in the order they appear."""
    extra = dict.fromkeys(key for row in rows for key in row if key not in BASE_COLUMNS)
    return [*BASE_COLUMNS, *extra]


def write_metrics(directory: str | os.PathLike[str], rows: Sequence[dict[str, Any]]) -> None:
    """Write ``metrics.csv`` and ``metrics.json`` (atomically) in ``directory``."""
    directory = Path(directory)
    columns = columns_of(rows)
    clean = [{c: clean_number(row.get(c)) for c in columns} for row in rows]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in clean:
        writer.writerow({k: ("" if v is None else repr(v) if isinstance(v, float) else v)
                         for k, v in row.items()})
    atomic_write_text(directory / "metrics.csv", buf.getvalue())
    atomic_write_json(directory / "metrics.json", clean)


def final_error(test_errors: Sequence[Optional[float]], last: int = PAPER_FINAL_EPOCHS) -> float:
    """Mean test error of the last ``last`` epochs (all of them if fewer)."""
    values = [float("nan") if v is None else float(v) for v in test_errors]
    if not values:
        raise ValueError("no epochs to summarize")
    tail = values[-last:]
    return sum(tail) / len(tail)


def summarize(rows: Sequence[dict[str, Any]], last: int = PAPER_FINAL_EPOCHS) -> dict[str, Any]:
    """``final_error`` (paper's rule), ``best_error`` / ``best_epoch``, ``last_error``."""
    errors = [row["test_error"] for row in rows]
    finite = [(e, row["epoch"]) for e, row in zip(errors, rows) if e is not None and math.isfinite(e)]
    best_error, best_epoch = min(finite) if finite else (None, None)
    return {
        "final_error": clean_number(final_error(errors, last)),
        "final_error_epochs": min(last, len(rows)),
        "best_error": best_error,
        "best_epoch": best_epoch,
        "last_error": clean_number(errors[-1]),
        "epochs_done": len(rows),
        "train_seconds": sum(float(row.get("seconds") or 0.0) for row in rows),
    }
