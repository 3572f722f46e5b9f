"""Reporting rules shared by ``isda train``, ``isda compare`` and the analyses: the
final-error window, mean ± std, the bold rule of tables, counts and ETAs in words.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Optional

from ..utils.text import format_eta

__all__ = ["PAPER_FINAL_EPOCHS", "SweepEta", "bold_note", "clear_best", "counts_text",
           "final_window", "fmt_pm", "format_eta", "mean_std", "plural", "window_text"]

#: Section 6.1: "the average test error of the last 10 epochs is ... reported".
PAPER_FINAL_EPOCHS = 10


def final_window(epochs: int, final_epochs: Optional[int] = None) -> int:
    """The number of last epochs averaged into a run's final error: ``final_epochs`` (1 to
    ``epochs``), else the paper's 10 but at most a tenth of the run (a short run's first
    epochs stay out) and at least 1."""
    epochs = int(epochs)
    if final_epochs is not None:
        k = int(final_epochs)
        if k < 1:
            raise ValueError(f"--final-epochs must be at least 1; got {final_epochs}")
        if k > epochs:
            raise ValueError(f"--final-epochs {k} exceeds the run's {plural(epochs, 'epoch')}")
        return k
    return max(1, min(PAPER_FINAL_EPOCHS, epochs // 10))


def mean_std(values: Sequence[float]) -> tuple[float, Optional[float]]:
    """Mean and sample standard deviation (n - 1; ``None`` for a single value)."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError("no values to average")
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def fmt_pm(mean: Optional[float], std: Optional[float], digits: int = 2, unit: str = "") -> str:
    """``"1.23 ± 0.45"`` + ``unit`` (``"1.23"`` without a std, ``"-"`` without a mean)."""
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "-"
    if std is None:
        return f"{mean:.{digits}f}{unit}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}{unit}"


def window_text(k: int) -> str:
    """``"last epoch"`` / ``"last 3 epochs"``."""
    return "last epoch" if int(k) == 1 else f"last {int(k)} epochs"


def plural(n: int, word: str, plural_form: Optional[str] = None) -> str:
    """``plural(1, "seed") == "1 seed"``, ``plural(2, "seed") == "2 seeds"``."""
    return f"{n} {word if n == 1 else (plural_form or word + 's')}"


def counts_text(counts: "Sequence[int] | set[int]", word: str) -> str:
    """``"1 seed"``, ``"5 seeds"``, ``"3/5 seeds"`` (distinct counts, sorted)."""
    values = sorted(set(int(c) for c in counts))
    if len(values) == 1:
        return plural(values[0], word)
    return f"{'/'.join(map(str, values))} {word}s"


class SweepEta:
    """The time left in a sweep of ``total`` items (runs, GAN iterations): the mean time of
    the items that did work so far (reused runs are not counted) times the items left."""

    def __init__(self, total: int) -> None:
        self.total = int(total)
        self.done = 0
        self.worked = 0
        self.seconds = 0.0

    def update(self, seconds: float, worked: bool = True, count: int = 1) -> str:
        """Record ``count`` items that took ``seconds``; returns ``", about 1m05s left"`` or
        ``""`` (nothing left or nothing timed yet)."""
        self.done += int(count)
        if worked:
            self.worked += int(count)
            self.seconds += float(seconds)
        left = self.total - self.done
        if left <= 0 or self.worked == 0:
            return ""
        return f", about {format_eta(left * self.seconds / self.worked)} left"


def clear_best(means: Sequence[float], stds: Sequence[Optional[float]], *,
               lower_is_better: bool = True) -> Optional[int]:
    """The index of the entry to print in bold, or ``None``: the best mean, when its lead
    over every other entry exceeds the standard deviation of both (none without a std)."""
    sign = 1.0 if lower_is_better else -1.0
    finite = [i for i, m in enumerate(means) if math.isfinite(m)]
    if len(finite) < 2:
        return None
    best = min(finite, key=lambda i: sign * means[i])
    if stds[best] is None:
        return None
    for i in finite:
        if i == best:
            continue
        spread = max(float(stds[best]), float(stds[i]) if stds[i] is not None else math.inf)
        if not sign * (means[i] - means[best]) > spread:
            return None
    return best


def bold_note(marked: Optional[int], count: int, spread: bool = True) -> str:
    """The caption's sentence about :func:`clear_best`'s choice (``spread``: stds exist)."""
    if count < 2:
        return ""
    if not spread:
        return " With one seed there is no standard deviation, so none is in bold."
    if marked is None:
        return (" No difference between the best mean and another exceeds one standard "
                "deviation, so none is in bold.")
    return " In bold: the best mean, ahead of every other by more than one standard deviation."
