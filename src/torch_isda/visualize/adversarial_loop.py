"""The training loop shared by the GANs of :mod:`.gan` and :mod:`.conditional_gan`.

A GAN subclasses :class:`AdversarialLoop` and fills in its named steps:

* :meth:`~AdversarialLoop.train_step`: one generator iteration (with its discriminator or
  critic steps); returns the losses to log, as tensors (read on logged iterations only);
* :meth:`~AdversarialLoop.checkpoint_state`: everything a resumed run needs;
* :meth:`~AdversarialLoop.write_samples`: the sample grid (optional);
* :meth:`~AdversarialLoop.progress_line`: the progress message of a logged iteration.

:meth:`~AdversarialLoop.run` then trains from ``start`` to ``iterations``: every
``log_every`` iterations (and at the last one) it appends a record to the history and a
JSON line to ``gan_log.jsonl`` (rewritten from the history when a run resumes, so that
an interrupted run's lines after its last checkpoint are not repeated); every ``sample_every`` / ``checkpoint_every`` iterations
(before the last one) it rewrites the samples / the checkpoint; at the end it writes the
checkpoint (atomically, :func:`.grid.atomic_write_with`). Every random
draw of a step comes from the GAN's own seeded generator, whose state is saved, so that a
resumed run continues exactly as an uninterrupted one.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import IO, Any

import torch
from torch import Tensor

from .grid import atomic_write_with

__all__ = ["AdversarialLoop", "LOG_NAME", "log_progress"]

LOG_NAME = "gan_log.jsonl"


def log_progress(msg: str) -> None:
    """A progress line on stderr."""
    print(msg, file=sys.stderr, flush=True)


class AdversarialLoop:
    """Iterations ``start -> iterations`` of a GAN with logging, samples and checkpoints.

    Args:
        out: the run directory (``gan_log.jsonl`` is written there).
        checkpoint_path: the checkpoint file, rewritten atomically.
        start, iterations: the generator iterations done so far and in total.
        history: the logged records so far (extended in place, saved in the checkpoint).
        log_every, sample_every, checkpoint_every: periods in iterations (``0``: never
            before the end).
        progress: print :meth:`progress_line` on stderr at every logged iteration.
    """

    def __init__(self, out: Path, checkpoint_path: Path, start: int, iterations: int,
                 history: list, *, log_every: int, sample_every: int = 0,
                 checkpoint_every: int = 0, progress: bool = True) -> None:
        self.out, self.checkpoint_path = Path(out), Path(checkpoint_path)
        self.start, self.iterations, self.history = int(start), int(iterations), history
        self.progress = progress
        self.log_every, self.sample_every = log_every, sample_every
        self.checkpoint_every = checkpoint_every
        self.t0 = self._t_last = time.perf_counter()
        self._it_last = self.start

    # ------------------------------------------------------------------ named steps

    def train_step(self, iteration: int) -> dict[str, Tensor]:
        """One generator iteration (0-based ``iteration``); the losses to log."""
        raise NotImplementedError

    def checkpoint_state(self, iteration: int) -> dict[str, Any]:
        """The checkpoint after ``iteration`` generator iterations."""
        raise NotImplementedError

    def write_samples(self, iteration: int) -> None:
        """Write the sample grid after ``iteration`` iterations (default: nothing)."""

    def progress_line(self, done: int, record: dict[str, Any]) -> str:
        """The progress message of logged iteration ``done`` (``record``: its log line)."""
        losses = "  ".join(f"{k} {v:.4f}" for k, v in record.items() if k.startswith("loss"))
        return f"[gan] it {done}/{self.iterations}  {losses}"

    # ------------------------------------------------------------------ the loop

    @property
    def pending(self) -> bool:
        """Whether iterations remain to be trained."""
        return self.start < self.iterations

    @property
    def final_iteration(self) -> int:
        """The iteration count of the final checkpoint."""
        return max(self.start, self.iterations)

    def save(self, iteration: int) -> None:
        """Write :meth:`checkpoint_state` atomically."""
        state = self.checkpoint_state(iteration)
        atomic_write_with(self.checkpoint_path, lambda f: torch.save(state, f))

    def run(self) -> bool:
        """Train the pending iterations; then write the checkpoint unless the run was already
        complete and saved. Returns whether the final checkpoint was written."""
        self.t0 = self._t_last = time.perf_counter()
        if self.pending:
            with open(self.out / LOG_NAME, "w") as log_file:
                for record in self.history:  # the log up to the checkpoint resumed from
                    log_file.write(json.dumps(record) + "\n")
                for it in range(self.start, self.iterations):
                    self._after_step(it + 1, self.train_step(it), log_file)
        if self.pending or not self.checkpoint_path.exists():
            self.save(self.final_iteration)
            return True
        return False

    def _after_step(self, done: int, losses: dict[str, Tensor], log_file: IO[str]) -> None:
        if done % self.log_every == 0 or done == self.iterations:
            self._log(done, losses, log_file)
        if self.sample_every and done % self.sample_every == 0 and done != self.iterations:
            self.write_samples(done)
        if self.checkpoint_every and done % self.checkpoint_every == 0 and done != self.iterations:
            self.save(done)

    def _log(self, done: int, losses: dict[str, Tensor], log_file: IO[str]) -> None:
        record: dict[str, Any] = {"iteration": done}
        record.update((key, value.item()) for key, value in losses.items())
        record["elapsed_s"] = round(time.perf_counter() - self.t0, 3)
        self.history.append(record)
        log_file.write(json.dumps(record) + "\n")
        log_file.flush()
        if self.progress:
            log_progress(self.progress_line(done, record))

    def speed(self, done: int) -> tuple[float, float]:
        """``(iterations per second since the last call, since this process started)``."""
        now = time.perf_counter()
        recent = (done - self._it_last) / max(now - self._t_last, 1e-9)
        self._t_last, self._it_last = now, done
        return recent, (done - self.start) / max(now - self.t0, 1e-9)
