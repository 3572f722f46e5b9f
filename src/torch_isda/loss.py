"""The ISDA loss module (Algorithm 1 of the paper)."""

from __future__ import annotations

from typing import Optional, Union

import torch
from torch import Tensor, nn

from . import functional as isda_f
from .estimator import CovarianceEstimator
from .layouts import checked_static_shapes

__all__ = ["ISDALoss"]


class ISDALoss(nn.Module):
    """Cross-entropy of ISDA-augmented logits with an online covariance estimate.

    Each call (in training mode) first folds the detached features into the estimator
    (Algorithm 1, line 6), then returns the cross-entropy of
    ``logits + lambda / 2 * sigma2`` (Eq. 7, line 7).

    The strength follows the paper's schedule ``lambda = lambda0 * t / T``: call
    :meth:`set_progress` with ``t / T`` (e.g. ``epoch / epochs``) as training advances, or
    pass ``constant_lambda=True`` for ``lambda = lambda0`` (Table 8 ablation), or give
    ``ratio=`` to :meth:`forward` directly.

    Args:
        num_features: feature dimension ``A`` (input size of the final linear layer).
        num_classes: number of classes ``C``.
        lambda0: the paper's ``lambda_0`` (0.5 for CIFAR; 7.5 with the diagonal kind on
            ImageNet).
        kind: covariance layout, see :class:`CovarianceEstimator`.
        constant_lambda: use ``lambda0`` from the first step.
        reduction, label_smoothing, ignore_index: as in :class:`torch.nn.CrossEntropyLoss`.
            Samples with ``target == ignore_index`` neither update the estimator nor count.
        dtype, sync: passed to the estimator.
        rank: components kept per class by ``kind="lowrank"`` (default 32; see
            :mod:`torch_isda.lowrank`); ignored by the other kinds.
        validate: check the labels' range and the features' finiteness every step (default).
            On the present-class path the checks and the class set come back in one host
            synchronization and a bad batch raises at once; on the static path they stay on
            the device and a bad batch raises later, naming its step (see
            :mod:`torch_isda.checks` and :meth:`check`). ``False`` skips the checks (bad
            labels or NaN features are then undefined behaviour).
        static_shapes: ``"auto"`` (default): the static all-class path on an accelerator
            (no host synchronization, no data-dependent shape, so a training step compiles
            with ``torch.compile(fullgraph=True)``), unless the kind is full or low-rank and
            ``C A^2`` is above :data:`~torch_isda.layouts.AUTO_STATIC_MAX_ELEMENTS`; the
            present-class path on the CPU (one synchronization, faster there). ``True``: always
            static (the update then costs about ``C x`` the flops of the present-class path
            for the full kind). ``False``: present-class, except with ``validate=False`` for
            the diagonal, shared and identity kinds.

    In evaluation mode (``criterion.eval()``) the estimator is not updated.
    """

    def __init__(
        self,
        num_features: int,
        num_classes: int,
        lambda0: float = 0.5,
        kind: str = "full",
        *,
        constant_lambda: bool = False,
        reduction: str = "mean",
        label_smoothing: float = 0.0,
        ignore_index: int = -100,
        dtype: torch.dtype = torch.float32,
        sync: bool = True,
        rank: int = 32,
        validate: bool = True,
        static_shapes: Union[bool, str] = "auto",
    ) -> None:
        super().__init__()
        if not float(lambda0) >= 0.0:
            raise ValueError(f"lambda0 must be non-negative; got {lambda0}")
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction must be 'mean', 'sum' or 'none'; got {reduction!r}")
        if not 0.0 <= float(label_smoothing) <= 1.0:
            raise ValueError(f"label_smoothing must lie in [0, 1]; got {label_smoothing}")
        self.estimator = CovarianceEstimator(
            num_features, num_classes, kind, dtype=dtype, sync=sync, rank=rank
        )
        self.lambda0 = float(lambda0)
        self.constant_lambda = bool(constant_lambda)
        self.reduction = reduction
        self.label_smoothing = float(label_smoothing)
        self.ignore_index = int(ignore_index)
        self.validate = bool(validate)
        self.static_shapes = checked_static_shapes(static_shapes)
        self.register_buffer("progress", torch.zeros((), dtype=torch.float64))
        self._progress = 0.0  # the buffer's value on the host: reading it back would synchronize

    @property
    def kind(self) -> str:
        return self.estimator.kind

    @property
    def num_features(self) -> int:
        return self.estimator.num_features

    @property
    def num_classes(self) -> int:
        return self.estimator.num_classes

    def extra_repr(self) -> str:
        return (
            f"lambda0={self.lambda0}, constant_lambda={self.constant_lambda}, reduction={self.reduction!r}, "
            f"label_smoothing={self.label_smoothing}, ignore_index={self.ignore_index}, "
            f"validate={self.validate}, static_shapes={self.static_shapes}"
        )

    @staticmethod
    def checked_progress(t_over_T: float) -> float:
        """``t / T`` as a float, or ``ValueError`` unless it lies in ``[0, 1]``."""
        value = float(t_over_T)
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"progress t/T must lie in [0, 1]; got {t_over_T}")
        return value

    @staticmethod
    def scheduled_ratio(lambda0: float, progress: float, constant_lambda: bool) -> float:
        """The paper's schedule: ``lambda0`` when ``constant_lambda``, else ``lambda0 * t / T``."""
        if constant_lambda:
            return lambda0
        return lambda0 * progress

    def set_progress(self, t_over_T: float) -> None:
        """Set the training progress ``t / T`` in ``[0, 1]`` that drives ``lambda``."""
        value = self.checked_progress(t_over_T)
        self.progress.fill_(value)
        self._progress = value

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        if prefix + "progress" in state_dict:  # once per load, not per step
            self._progress = float(state_dict[prefix + "progress"])

    @property
    def ratio(self) -> float:
        """The current ``lambda``: ``lambda0`` or ``lambda0 * t / T`` (a Python float)."""
        return self.scheduled_ratio(self.lambda0, self._progress, self.constant_lambda)

    def _step_ratio(self, ratio: Optional[float]):
        """This call's ``lambda`` (the schedule's when ``None``), checked before any state moves.

        Under ``torch.compile`` the schedule's value is a device tensor computed from the
        ``progress`` buffer, so that a new progress does not recompile the step."""
        if ratio is None and torch.compiler.is_compiling():
            return self.progress * self.lambda0 if not self.constant_lambda else self.lambda0
        if isinstance(ratio, Tensor):
            return ratio
        lam = self.ratio if ratio is None else float(ratio)
        if not lam >= 0.0:
            raise ValueError(f"ratio (lambda) must be a non-negative number; got {lam}")
        return lam

    def _scan(self, features: Tensor, target: Tensor):
        """The step's class set and checks, ``(batch, problems)`` (one host transfer at most);
        the features are checked for NaN/Inf only in training mode (they are folded in)."""
        return self.estimator.scan(
            features,
            target,
            check_features=self.training,
            ignore_index=self.ignore_index,
            validate=self.validate,
            static=self.static_for(features.shape[0]),
        )

    def _fold_scanned(self, features: Tensor, target: Tensor, batch, problems) -> None:
        """Fold a scanned batch into the estimator (or raise on ``problems``, statistics unchanged)."""
        self.estimator.update_scanned(features, target, batch, problems)

    def _scan_and_update(self, features: Tensor, target: Tensor):
        """The step's class set, checks (one host transfer at most) and estimator update.

        In training mode the estimator folds the valid samples in (or every rank raises,
        statistics unchanged); in evaluation mode bad labels still raise.
        """
        batch, problems = self._scan(features, target)
        if self.training:
            self._fold_scanned(features, target, batch, problems)
        elif problems:
            raise ValueError("; ".join(problems))
        return batch

    @property
    def static_path(self) -> bool:
        """Whether a step takes the static all-class path (no host synchronization); for
        ``static_shapes="auto"`` decided from the statistics' device and the shape (the batch
        size not counted: see :meth:`static_for`)."""
        return self.static_for(0)

    def static_for(self, rows: int) -> bool:
        """Whether a step folding ``rows`` feature rows takes the static path."""
        return self.estimator.static_update(self.validate, self.static_shapes, rows)

    def check(self) -> None:
        """Raise the error of a batch rejected by the device-side checks of the static path,
        if any, naming its step (waits for the device: call it where a synchronization is
        fine, e.g. at the end of an epoch). Also done by ``state_dict()``."""
        self.estimator.check()

    def forward(
        self,
        features: Tensor,
        logits: Tensor,
        target: Tensor,
        weight: Tensor,
        ratio: Optional[float] = None,
    ) -> Tensor:
        """ISDA loss of a batch.

        Args:
            features: ``N x A`` deep features (the input of the final linear layer).
            logits: ``N x C`` output of that layer.
            target: ``N`` class indices (or ``ignore_index``).
            weight: ``C x A`` weight of that layer (gradient flows into it).
            ratio: ``lambda`` for this call; the schedule's value when ``None``.

        Under ``torch.compile`` the static path is traced (``fullgraph=True`` works); the
        present-class path, whose shapes depend on the data, runs eagerly (a graph break)
        instead of recompiling for every new set of classes.
        """
        if self.static_for(features.shape[0] if features.dim() else 0):
            return self._forward(features, logits, target, weight, ratio)
        return self._forward_eager(features, logits, target, weight, ratio)

    def _forward(self, features: Tensor, logits: Tensor, target: Tensor, weight: Tensor,
                 ratio: Optional[float]) -> Tensor:
        isda_f.check_logits_target(logits, weight, target)
        C, A = self.num_classes, self.num_features
        if tuple(weight.shape) != (C, A):
            raise ValueError(f"weight must be C x A = ({C}, {A}) for this loss; got {tuple(weight.shape)}")
        if features.dim() != 2 or features.shape != (logits.shape[0], A):
            raise ValueError(
                f"features must be N x A = ({logits.shape[0]}, {A}) to match the logits; got "
                f"{tuple(features.shape)}"
            )
        lam = self._step_ratio(ratio)
        batch = self._scan_and_update(features, target)
        return isda_f.isda_cross_entropy(
            logits,
            weight,
            target,
            self.estimator.functional_covariance(),
            lam,
            self.kind,
            reduction=self.reduction,
            label_smoothing=self.label_smoothing,
            ignore_index=self.ignore_index,
            batch=batch,
        )

    _forward_eager = torch.compiler.disable(_forward)
