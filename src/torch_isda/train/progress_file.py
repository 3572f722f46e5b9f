"""A run's progress record, ``<slug>.progress.json`` of a sweep (the live display of
``isda compare --jobs/--executor`` and ``isda status`` read it).

:class:`ProgressWriter` is the callback that writes it. A run over several processes
(``--nproc-per-run``, torchrun inside a job) gets the file's path through the environment
variable :data:`PROGRESS_FILE_ENV`, and its rank 0 writes it
(:func:`progress_callbacks_from_env`).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from .checkpoint import atomic_write_json
from .engine import Callback

__all__ = ["PROGRESS_FILE_ENV", "ProgressWriter", "progress_callbacks_from_env"]

#: The environment variable naming the progress file of a torchrun run's rank 0.
PROGRESS_FILE_ENV = "ISDA_PROGRESS_FILE"


class ProgressWriter(Callback):
    """Writes ``path`` (epoch, epochs, the fraction of the steps done, the time and, at an
    epoch's end, its test error) at most every ``interval`` seconds during training and at
    every epoch end."""

    def __init__(self, path: str | os.PathLike[str], interval: float = 1.0) -> None:
        self.path = Path(path)
        self.interval = float(interval)
        self._last = 0.0

    def _write(self, engine: Any, fraction: float, epoch: int, **extra: Any) -> None:
        self._last = time.monotonic()
        atomic_write_json(self.path, {
            "epoch": epoch, "epochs": int(engine.config.epochs),
            "fraction": min(1.0, max(0.0, fraction)), "time": time.time(), **extra})

    def on_step_start(self, engine: Any, step: int) -> None:
        if time.monotonic() - self._last < self.interval:
            return
        steps = max(1, len(engine.task.train_batches))
        epochs = max(1, int(engine.config.epochs))
        self._write(engine, step / (steps * epochs), step // steps + 1)

    def on_epoch_end(self, engine: Any, epoch: int, row: dict[str, Any]) -> None:
        self._write(engine, epoch / max(1, int(engine.config.epochs)), epoch,
                    test_error=row.get("test_error"))


def progress_callbacks_from_env(rank: int) -> list[Callback]:
    """``[ProgressWriter(path)]`` on rank 0 when :data:`PROGRESS_FILE_ENV` names a path,
    ``[]`` otherwise."""
    path = os.environ.get(PROGRESS_FILE_ENV, "").strip()
    return [ProgressWriter(path)] if path and rank == 0 else []
