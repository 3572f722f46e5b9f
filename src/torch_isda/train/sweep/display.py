"""The live view of a sweep whose runs train elsewhere (child processes, Slurm jobs): one
line per running run (epoch, percentage) and the sweep's ETA, redrawn in place on a
terminal; elsewhere (a log file, CI) only the lines of started and finished runs.

The ETA counts work, not runs: the fraction of the sweep's training done so far (finished
runs count 1, running ones their fraction of steps, reused ones nothing) against the
elapsed time, so a half-trained resumed run is not mistaken for a fresh one.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, Optional, TextIO

from ..reporting import format_eta
from .runs import SweepRun

__all__ = ["SweepDisplay"]


class SweepDisplay:
    """Tracks ``total`` runs; :meth:`started`, :meth:`finished` and :meth:`refresh` (with the
    runs in flight) keep the view current. ``result_line`` formats a finished run's score."""

    def __init__(self, total: int, result_line: Callable[[dict[str, Any]], str], *,
                 stream: Optional[TextIO] = None, live: Optional[bool] = None,
                 quiet: bool = False) -> None:
        self.total = int(total)
        self.result_line = result_line
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.live = (not quiet and _isatty(self.stream)) if live is None else live
        self.done = 0
        self.failed = 0
        self.work_done = 0.0
        self.work_total = float(total)
        self.t0 = time.monotonic()
        self._drawn = 0

    def say(self, message: str) -> None:
        if self.quiet:
            return
        self._erase()
        print(message, file=self.stream, flush=True)

    def started(self, run: SweepRun, where: str) -> None:
        if not self.live:
            self.say(f"started {run.name} ({where})")

    def finished(self, run: SweepRun, outcome: dict[str, Any]) -> None:
        self.done += 1
        if outcome.get("reused"):
            self.work_total -= 1  # no work: the ETA is about training
        else:
            self.work_done += 1
        if outcome["state"] == "failed":
            self.failed += 1
            self.say(f"[{self.done}/{self.total}] {run.name}: FAILED ({outcome['error']})")
            return
        self.say(f"[{self.done}/{self.total}] {run.name}: {self.result_line(outcome['result'])}, "
                 f"{outcome['note']} in {outcome['seconds']:.1f}s{self.eta_text()}")

    def eta_text(self, running: Sequence[float] = ()) -> str:
        """``", about 1m05s left"`` from the work done so far (``running``: the fractions of
        the runs in flight), or ``""``."""
        done = self.work_done + sum(running)
        left = self.work_total - done
        if done <= 0 or left <= 0:
            return ""
        return f", about {format_eta(left * (time.monotonic() - self.t0) / done)} left"

    def refresh(self, running: Sequence[tuple[SweepRun, Optional[dict[str, Any]]]]) -> None:
        """Redraw the live block: one line per run in flight (with its progress record)."""
        if not self.live:
            return
        fractions = [float((p or {}).get("fraction", 0.0)) for _, p in running]
        lines = [f"  {run.name}: {_progress_text(progress)}" for run, progress in running]
        lines.append(f"sweep: {self.done}/{self.total} finished ({self.failed} failed), "
                     f"{len(running)} running{self.eta_text(fractions)}")
        self._erase()
        self.stream.write("".join(f"{line}\x1b[K\n" for line in lines))
        self.stream.flush()
        self._drawn = len(lines)

    def close(self) -> None:
        self._erase()

    def _erase(self) -> None:
        if self._drawn:
            self.stream.write(f"\x1b[{self._drawn}F\x1b[J")
            self.stream.flush()
            self._drawn = 0


def _progress_text(progress: Optional[dict[str, Any]]) -> str:
    if not progress:
        return "starting"
    bar_width = 20
    fraction = float(progress.get("fraction", 0.0))
    filled = int(round(fraction * bar_width))
    error = progress.get("test_error")
    tail = f", last eval error {error:.2f}%" if isinstance(error, (int, float)) else ""
    return (f"[{'#' * filled}{'.' * (bar_width - filled)}] {100 * fraction:5.1f}%  "
            f"epoch {progress.get('epoch', '?')}/{progress.get('epochs', '?')}{tail}")


def _isatty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
