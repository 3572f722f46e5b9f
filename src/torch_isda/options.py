"""The options of an ISDA loss, written once and shared by every ISDA loss.

:class:`ISDAOptions` holds what :class:`~torch_isda.ISDALoss`,
:class:`~torch_isda.SegmentationISDALoss`, :class:`~torch_isda.semi.SemiISDALoss` and
:func:`~torch_isda.attach` accept besides the layer's sizes: the strength and its schedule,
the covariance layout, the cross-entropy's options, the class-prior adjustments and the
host-synchronization switches. It checks them when built (``ValueError`` naming the
option), so a bad value fails when the loss is made, before any statistics exist.

The losses take the options as keyword arguments, as before, or as one object::

    opts = ISDAOptions(lambda0=0.5, kind="diagonal", class_prior=counts, epochs=200, steps_per_epoch=391)
    criterion = ISDALoss(64, 10, options=opts)
    seg = SegmentationISDALoss(512, 19, options=opts.replace(ignore_index=255))

Options that depend on the number of classes (``class_prior``, ``ldam_counts``) are checked
against it when the loss is built.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence, Tuple, Union

import torch

from .layouts import checked_static_shapes, get_layout

__all__ = ["ISDAOptions", "merge_options"]

#: Training calls after which a loss whose lambda is still 0 (``set_progress`` never called,
#: no ``total_steps`` / ``epochs``, no ``ratio=``) warns: "an epoch's worth" when the epoch's
#: length is unknown, a little more than two epochs of CIFAR (391 steps at batch 128) or
#: Fashion-MNIST (469), a fifth of an ImageNet epoch at batch 256 (5005).
DEFAULT_STEPS_BEFORE_WARNING = 1000


def _positive_numbers(name: str, values: Any) -> Optional[Tuple[float, ...]]:
    """``values`` (a sequence or 1-D tensor of positive finite numbers) as a tuple of floats."""
    if values is None:
        return None
    if isinstance(values, torch.Tensor):
        if values.dim() != 1:
            raise ValueError(f"{name} must be a 1-D sequence of C positive numbers; got shape {tuple(values.shape)}")
        values = values.detach().cpu().tolist()  # once, at construction
    try:
        out = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a 1-D sequence of C positive numbers; got {values!r}") from None
    bad = [v for v in out if not (math.isfinite(v) and v > 0.0)]
    if not out or bad:
        raise ValueError(f"{name} must hold positive finite numbers (one per class); got {bad[0] if bad else 'none'}")
    return out


def _positive_finite(name: str, value: Any) -> float:
    value = float(value)
    if not (math.isfinite(value) and value > 0.0):
        raise ValueError(f"{name} must be a positive finite number; got {value}")
    return value


def _positive_int(name: str, value: Any) -> Optional[int]:
    if value is None:
        return None
    if isinstance(value, bool) or int(value) != value or int(value) < 1:
        raise ValueError(f"{name} must be a positive integer; got {value}")
    return int(value)


@dataclass(frozen=True)
class ISDAOptions:
    """The options of an ISDA loss (see the module's documentation).

    Args:
        lambda0: the paper's ``lambda_0`` (0.5 for CIFAR; 7.5 with the diagonal kind on
            ImageNet and in segmentation).
        kind: covariance layout, see :class:`~torch_isda.CovarianceEstimator`.
        constant_lambda: use ``lambda0`` from the first step (Table 8 ablation).
        total_steps: advance the schedule by itself: training call ``k`` (from 0) uses
            ``lambda = lambda0 * k / total_steps`` (capped at ``lambda0``).
        epochs, steps_per_epoch: advance it once per epoch instead, as the paper does:
            ``lambda = lambda0 * (k // steps_per_epoch) / epochs``. Give both, or
            ``total_steps``, or neither (then call ``set_progress``).
        reduction, label_smoothing, ignore_index: as in :class:`torch.nn.CrossEntropyLoss`.
        class_prior: per-class prior ``pi`` (class frequencies or counts; normalised): the
            loss adds ``logit_adjustment * log(pi)`` to the logits (logit adjustment, Menon et
            al. 2021; Balanced Softmax, Ren et al. 2020, is ``logit_adjustment=1``).
        logit_adjustment: ``tau`` of the logit adjustment (default 1 when ``class_prior`` is
            given).
        ldam_counts: per-class training counts ``n_c``: LDAM margins (Cao et al. 2019)
            ``m_c = max_margin * n_min^(1/4) / n_c^(1/4)`` are subtracted from the target logit
            and the logits are scaled by ``ldam_scale``.
        max_margin, ldam_scale: LDAM's largest margin (0.5) and scale ``s`` (30).
        dtype, sync, rank: passed to the estimator.
        validate, static_shapes: the per-step checks and the static all-class path (see
            :class:`~torch_isda.ISDALoss`).
    """

    lambda0: float = 0.5
    kind: str = "full"
    constant_lambda: bool = False
    total_steps: Optional[int] = None
    epochs: Optional[int] = None
    steps_per_epoch: Optional[int] = None
    reduction: str = "mean"
    label_smoothing: float = 0.0
    ignore_index: int = -100
    class_prior: Optional[Sequence[float]] = None
    logit_adjustment: Optional[float] = None
    ldam_counts: Optional[Sequence[float]] = None
    max_margin: float = 0.5
    ldam_scale: float = 30.0
    dtype: torch.dtype = torch.float32
    sync: bool = True
    rank: int = 32
    validate: bool = True
    static_shapes: Union[bool, str] = "auto"

    def __post_init__(self) -> None:
        if not float(self.lambda0) >= 0.0:
            raise ValueError(f"lambda0 must be non-negative; got {self.lambda0}")
        get_layout(self.kind)  # unknown kinds raise here, naming the known ones
        if self.reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction must be 'mean', 'sum' or 'none'; got {self.reduction!r}")
        if not 0.0 <= float(self.label_smoothing) <= 1.0:
            raise ValueError(f"label_smoothing must lie in [0, 1]; got {self.label_smoothing}")
        self._set("lambda0", float(self.lambda0))
        self._set("label_smoothing", float(self.label_smoothing))
        self._set("ignore_index", int(self.ignore_index))
        for name in ("constant_lambda", "sync", "validate"):
            self._set(name, bool(getattr(self, name)))
        self._set("static_shapes", checked_static_shapes(self.static_shapes))
        self._check_schedule()
        self._check_adjustments()

    def _set(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)  # normalising a frozen dataclass's own fields

    def _check_schedule(self) -> None:
        for name in ("total_steps", "epochs", "steps_per_epoch"):
            self._set(name, _positive_int(name, getattr(self, name)))
        per_epoch = (self.epochs is not None, self.steps_per_epoch is not None)
        if any(per_epoch) and not all(per_epoch):
            raise ValueError("epochs and steps_per_epoch go together: give both (or total_steps instead)")
        if self.total_steps is not None and all(per_epoch):
            raise ValueError("give total_steps or epochs with steps_per_epoch, not both")
        if self.constant_lambda and self.advances_itself:
            raise ValueError("constant_lambda uses lambda0 from the first step: total_steps / epochs have no effect")

    def _check_adjustments(self) -> None:
        self._set("class_prior", _positive_numbers("class_prior", self.class_prior))
        self._set("ldam_counts", _positive_numbers("ldam_counts", self.ldam_counts))
        if self.logit_adjustment is not None:
            if self.class_prior is None:
                raise ValueError("logit_adjustment needs class_prior (the per-class prior pi)")
            tau = float(self.logit_adjustment)
            if not math.isfinite(tau):
                raise ValueError(f"logit_adjustment must be a finite number; got {self.logit_adjustment}")
            self._set("logit_adjustment", tau)
        self._set("max_margin", _positive_finite("max_margin", self.max_margin))
        self._set("ldam_scale", _positive_finite("ldam_scale", self.ldam_scale))

    # ------------------------------------------------------------------ derived

    @property
    def advances_itself(self) -> bool:
        """Whether the schedule advances on each training call (``total_steps`` or ``epochs``)."""
        return self.total_steps is not None or self.epochs is not None

    @property
    def tau(self) -> float:
        """The logit adjustment's ``tau`` (1 by default with a ``class_prior``, else 0)."""
        if self.class_prior is None:
            return 0.0
        return 1.0 if self.logit_adjustment is None else self.logit_adjustment

    @property
    def adjusts_logits(self) -> bool:
        """Whether the loss adds a prior offset or LDAM margins to the logits."""
        return self.class_prior is not None or self.ldam_counts is not None

    def progress_after(self, steps: int) -> float:
        """``t / T`` after ``steps`` training calls, for a schedule that advances itself."""
        if self.total_steps is not None:
            return min(steps / self.total_steps, 1.0)
        return min((steps // self.steps_per_epoch) / self.epochs, 1.0)

    def steps_at(self, progress: float) -> int:
        """The training calls that give ``progress`` (the inverse of :meth:`progress_after`)."""
        if self.total_steps is not None:
            return int(round(progress * self.total_steps))
        return int(round(progress * self.epochs)) * self.steps_per_epoch

    @property
    def steps_before_warning(self) -> int:
        """Training calls with ``lambda`` stuck at 0 before the loss warns: an epoch's worth,
        :data:`DEFAULT_STEPS_BEFORE_WARNING` (the loss does not know the epoch's length; one
        that does advances itself and never warns)."""
        return DEFAULT_STEPS_BEFORE_WARNING

    def check_classes(self, num_classes: int) -> None:
        """``ValueError`` unless the per-class options have one value per class."""
        for name in ("class_prior", "ldam_counts"):
            values = getattr(self, name)
            if values is not None and len(values) != num_classes:
                raise ValueError(f"{name} must have one value per class (C={num_classes}); got {len(values)}")

    def replace(self, **changes: Any) -> ISDAOptions:
        """A copy with ``changes`` applied (and checked)."""
        return dataclasses.replace(self, **changes)


def merge_options(options: Optional[ISDAOptions], defaults: ISDAOptions, **given: Any) -> ISDAOptions:
    """``options`` (else ``defaults``) with the keyword arguments that were ``given`` applied.

    ``lambda0`` and ``kind`` given as ``None`` keep the base's value (the losses' positional
    arguments default to ``None`` so that ``options=`` can set them). Unknown names raise
    ``TypeError`` naming them.
    """
    base = defaults if options is None else options
    if not isinstance(base, ISDAOptions):
        raise TypeError(f"options must be an ISDAOptions; got {type(base).__name__}")
    changes = {k: v for k, v in given.items() if not (k in ("lambda0", "kind") and v is None)}
    known = {f.name for f in dataclasses.fields(ISDAOptions)}
    unknown = sorted(set(changes) - known)
    if unknown:
        raise TypeError(f"unexpected ISDA option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return dataclasses.replace(base, **changes) if changes else base
