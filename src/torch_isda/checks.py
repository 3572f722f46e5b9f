"""Input checks kept on the device and reported later, without stalling the launch queue.

On the static (accelerator) route, :class:`~torch_isda.CovarianceEstimator` checks every
batch on the device: labels outside ``[0, C)`` (other than ``ignore_index``) and NaN/Inf
features of the samples that count. A failed check never needs the host at once:

* the batch's statistics update is masked out on the device (the one-hot matrix of the
  update is all zero), so the statistics stay unchanged;
* the failure is *sticky*: from the failing step on, every update is masked (and the loss
  is the plain cross-entropy) until the error is raised, so the statistics are exactly those
  from before the failing step; the error is raised once, then the record is cleared;
* the flags reach the host by a non-blocking copy into pinned memory (CUDA) that the next
  training call reads if it has landed (:meth:`DeferredChecks.poll`, no wait), and
  :meth:`DeferredChecks.check` (called by ``criterion.check()`` and by ``state_dict()``)
  waits for them. The ``ValueError`` names the step it came from (the n-th checked batch
  of this estimator, counting from 1).

Under ``torch.compile`` the polling is skipped (it is host work); call ``check()`` from
eager code, e.g. once per epoch, and ``state_dict()`` checks too.
"""

from __future__ import annotations

import ctypes
from typing import Optional, Tuple

import torch
from torch import Tensor, nn

__all__ = ["DeferredChecks", "CHECK_CATEGORIES"]

#: What each entry of the device record flags, in order.
CHECK_CATEGORIES: Tuple[str, ...] = ("labels", "values")


def _host_read(t: Tensor) -> list:
    """The values of a (contiguous, own-storage) CPU bool or long tensor, read from its memory:
    no tensor operation, nothing to wait for."""
    raw = ctypes.string_at(t.data_ptr(), t.numel() * t.element_size())
    return [int(v) for v in memoryview(raw).cast("q" if t.dtype == torch.long else "?")][: t.numel()]


class DeferredChecks(nn.Module):
    """Sticky device-side record of failed input checks (non-persistent buffers).

    Buffers: ``record`` (bool, one flag per :data:`CHECK_CATEGORIES`, set from the first
    failing step on), ``failed_steps`` (long: steps recorded while failed, the failing one
    included) and ``steps`` (long: steps recorded). They are not saved in ``state_dict``.

    Args:
        describe: ``describe(category) -> str``, the message of each category (it names the
            expected label range); set by the estimator.
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("record", torch.zeros(len(CHECK_CATEGORIES), dtype=torch.bool), persistent=False)
        self.register_buffer("failed_steps", torch.zeros((), dtype=torch.long), persistent=False)
        self.register_buffer("steps", torch.zeros((), dtype=torch.long), persistent=False)
        self.describe = {"labels": "labels out of range", "values": "features contain NaN or Inf values"}
        self._host: Optional[Tensor] = None  # pinned mirror of (record, failed_steps, steps)
        self._event = None  # recorded after the copy into ``_host``; None: nothing in flight

    def update(self, flags: Tensor) -> Tensor:
        """Record this step's ``flags`` (bool, one per category); return the sticky
        ``failed`` flag (0-d bool) that gates the step. Device work only (traceable)."""
        self.record.logical_or_(flags)
        failed = self.record.any()
        self.failed_steps.add_(failed)
        self.steps.add_(1)
        return failed

    def publish(self) -> None:
        """Start the non-blocking copy of the record to the host (CUDA; eager only)."""
        if torch.compiler.is_compiling() or self.record.device.type != "cuda":
            return
        packed = torch.cat([self.record.to(torch.long), self.failed_steps.view(1), self.steps.view(1)])
        if self._host is None:
            self._host = torch.empty(packed.shape, dtype=torch.long, pin_memory=True)
        self._host.copy_(packed, non_blocking=True)
        self._event = torch.cuda.Event()
        self._event.record()

    def poll(self) -> None:
        """Raise if a failure has reached the host; never waits for the device (eager only)."""
        if torch.compiler.is_compiling():
            return
        if self.record.device.type == "cpu":  # host memory already: read it, no transfer
            self._raise_if_failed([*_host_read(self.record), *_host_read(self.failed_steps), *_host_read(self.steps)])
        elif self._event is not None and self._event.query():
            self._raise_if_failed(self._host.tolist())

    def check(self) -> None:
        """Wait for the device and raise the recorded failure, if any (one synchronization)."""
        self._raise_if_failed(self._values(self.record, self.failed_steps, self.steps))

    @staticmethod
    def _values(record: Tensor, failed_steps: Tensor, steps: Tensor):
        return torch.cat([record.to(torch.long), failed_steps.view(1), steps.view(1)]).tolist()

    def _raise_if_failed(self, values) -> None:
        flags, failed_steps, steps = values[: len(CHECK_CATEGORIES)], values[-2], values[-1]
        if not any(flags):
            return
        self.reset()  # raised once; later batches are folded in again
        step = steps - failed_steps + 1
        what = "; ".join(self.describe[c] for c, f in zip(CHECK_CATEGORIES, flags) if f)
        later = f" (the {failed_steps - 1} later step(s) were left out too)" if failed_steps > 1 else ""
        raise ValueError(
            f"step {step}: {what}; the batch was not folded in: the statistics are those from before step "
            f"{step}{later}"
        )

    @torch.no_grad()
    def reset(self) -> None:
        """Forget a recorded failure (updates resume)."""
        self.record.zero_()
        self.failed_steps.zero_()
        self._event = None  # a copy still in flight is superseded by the next one

    def __getstate__(self):  # copies and pickles leave the host mirror and the event behind
        state = self.__dict__.copy()
        state["_host"] = state["_event"] = None
        return state

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        self.check()  # a pending failure surfaces before a checkpoint is written
        super()._save_to_state_dict(destination, prefix, keep_vars)
