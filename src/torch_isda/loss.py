"""The ISDA loss module (Algorithm 1 of the paper)."""

from __future__ import annotations

import warnings
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import functional as isda_f
from .eager import eager_only
from .estimator import CovarianceEstimator
from .logit_adjustment import adjust_logits, ldam_margins, prior_log_offset
from .options import ISDAOptions, merge_options

__all__ = ["ISDALoss"]


class ISDALoss(nn.Module):
    """Cross-entropy of ISDA-augmented logits with an online covariance estimate.

    Each call (in training mode) first folds the detached features into the estimator
    (Algorithm 1, line 6), then returns the cross-entropy of
    ``logits + lambda / 2 * sigma2`` (Eq. 7, line 7).

    The strength follows the paper's schedule ``lambda = lambda0 * t / T``. Either the loss
    advances it by itself (``total_steps=N``: ``t / T = k / N`` at training call ``k``; or
    ``epochs=E, steps_per_epoch=S``: ``t / T = (k // S) / E``, once per epoch as in the paper),
    or the loop calls :meth:`set_progress` with ``t / T`` (e.g. ``epoch / epochs``); or pass
    ``constant_lambda=True`` for ``lambda = lambda0`` (Table 8 ablation), or give ``ratio=`` to
    :meth:`forward` directly. When none of these is used, ``lambda`` stays 0 (plain
    cross-entropy): after an epoch's worth of training calls (1000: the loss does not know the
    epoch's length, see :data:`torch_isda.options.DEFAULT_STEPS_BEFORE_WARNING`) it warns once.

    Args:
        num_features: feature dimension ``A`` (input size of the final linear layer).
        num_classes: number of classes ``C``.
        lambda0: the paper's ``lambda_0`` (default 0.5; 7.5 with the diagonal kind on
            ImageNet).
        kind: covariance layout (default ``"full"``), see :class:`CovarianceEstimator`.
        options: an :class:`~torch_isda.ISDAOptions` holding all of the options (the defaults
            when ``None``); ``lambda0``, ``kind`` and keyword options given here override it.
        **option_values: any field of :class:`~torch_isda.ISDAOptions`, e.g.

            * ``constant_lambda``, ``total_steps``, ``epochs``, ``steps_per_epoch``: the schedule;
            * ``reduction``, ``label_smoothing``, ``ignore_index``: as in
              :class:`torch.nn.CrossEntropyLoss`; samples with ``target == ignore_index``
              neither update the estimator nor count;
            * ``class_prior`` (with ``logit_adjustment=tau``) and ``ldam_counts`` (with
              ``max_margin``, ``ldam_scale``): class-prior offsets of the logits
              (:mod:`torch_isda.logit_adjustment`), exact with ISDA's term;
            * ``dtype``, ``sync``: passed to the estimator; ``rank``: components kept per class
              by ``kind="lowrank"`` (default 32; see :mod:`torch_isda.lowrank`);
            * ``validate``: check the labels' range and the features' finiteness every step
              (default). On the present-class path the checks and the class set come back in
              one host synchronization and a bad batch raises at once; on the static path they
              stay on the device and a bad batch raises later, naming its step (see
              :mod:`torch_isda.checks` and :meth:`check`). ``False`` skips the checks (bad
              labels or NaN features are then undefined behaviour);
            * ``static_shapes``: ``"auto"`` (default): the static all-class path on an
              accelerator (no host synchronization, no data-dependent shape, so a training step
              compiles with ``torch.compile(fullgraph=True)``), unless the kind is full or
              low-rank and ``C A^2`` is above :data:`~torch_isda.layouts.AUTO_STATIC_MAX_ELEMENTS`;
              the present-class path on the CPU (one synchronization, faster there). ``True``:
              always static (the update then costs about ``C x`` the flops of the present-class
              path for the full kind). ``False``: present-class, except with ``validate=False``
              for the diagonal, shared and identity kinds.

    Modes. The statistics are updated only in training mode with grad mode on: never under
    ``torch.no_grad()`` (the loss is then the ISDA bound with the current statistics) nor in
    evaluation mode (``criterion.eval()``), where the loss is the plain cross-entropy of the
    logits, a validation loss.
    """

    def __init__(
        self,
        num_features: int,
        num_classes: int,
        lambda0: Optional[float] = None,
        kind: Optional[str] = None,
        *,
        options: Optional[ISDAOptions] = None,
        **option_values: Any,
    ) -> None:
        super().__init__()
        opts = merge_options(options, self.default_options, lambda0=lambda0, kind=kind, **option_values)
        opts.check_classes(int(num_classes))
        self.estimator = CovarianceEstimator(
            num_features, num_classes, opts.kind, dtype=opts.dtype, sync=opts.sync, rank=opts.rank
        )
        self.options = opts
        self.lambda0 = opts.lambda0
        self.constant_lambda = opts.constant_lambda
        self.reduction = opts.reduction
        self.label_smoothing = opts.label_smoothing
        self.ignore_index = opts.ignore_index
        self.validate = opts.validate
        self.static_shapes = opts.static_shapes
        self.register_buffer("progress", torch.zeros((), dtype=torch.float64))
        self._progress = 0.0  # the buffer's value on the host: reading it back would synchronize
        self._register_adjustments(opts)
        self._training_calls = 0  # calls that folded statistics (host counter, no device read)
        self._progress_driven = opts.advances_itself or opts.constant_lambda  # set_progress sets it too
        self._warned_stuck = False

    #: the options a keyword argument not given takes (``SegmentationISDALoss`` has its own)
    default_options = ISDAOptions()

    def _register_adjustments(self, opts: ISDAOptions) -> None:
        """The class-prior offsets as non-persistent buffers (derived from the options)."""
        dtype = opts.dtype
        offset = None if opts.class_prior is None else prior_log_offset(opts.class_prior, opts.tau, dtype=dtype)
        margins = None if opts.ldam_counts is None else ldam_margins(opts.ldam_counts, opts.max_margin, dtype=dtype)
        self.register_buffer("log_prior_offset", offset, persistent=False)
        self.register_buffer("ldam_margin", margins, persistent=False)

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
        """Set the training progress ``t / T`` in ``[0, 1]`` that drives ``lambda``.

        With ``total_steps`` / ``epochs`` the schedule then goes on advancing from there."""
        value = self.checked_progress(t_over_T)
        self.progress.fill_(value)
        self._progress = value
        self._progress_driven = True
        if self.options.advances_itself:
            self._training_calls = self.options.steps_at(value)

    def _advance(self) -> None:
        """Count a training call (host values only): advance a schedule that advances itself,
        or warn once when ``lambda`` is still 0 after an epoch's worth of calls.

        Counting runs in eager code: a count traced by ``torch.compile`` would be a constant
        of the graph (a recompilation per step). The default path runs eagerly under
        ``torch.compile`` and counts; the static path, when traced, is not counted (no
        warning), and a self-advancing schedule there cannot be traced: ``fullgraph=True``
        fails naming this error, otherwise the loss runs eagerly (a graph break)."""
        if torch.compiler.is_compiling():
            if self.options.advances_itself:
                raise RuntimeError(
                    "ISDA: total_steps / epochs count training calls in eager code, which a "
                    "torch.compile(fullgraph=True) graph cannot hold: drive lambda with set_progress")
            return
        self._training_calls += 1
        if self.options.advances_itself:
            self._progress = self.options.progress_after(self._training_calls)
        elif not self._progress_driven and not self._warned_stuck and self.lambda0 > 0.0 \
                and self._progress == 0.0 and self._training_calls > self.options.steps_before_warning:
            self._warned_stuck = True
            warnings.warn(
                f"ISDA: {self._training_calls - 1} training calls with lambda = lambda0 * t / T = 0 (set_progress "
                "was never called), so the loss so far is plain cross-entropy: call "
                "criterion.set_progress(epoch / epochs) as training advances, or pass total_steps= "
                "(or epochs= and steps_per_epoch=) to let the loss advance by itself",
                UserWarning, stacklevel=4)

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        self.progress.fill_(self._progress)  # the host value, written when saved (not per step)
        super()._save_to_state_dict(destination, prefix, keep_vars)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        if prefix + "progress" in state_dict:  # once per load, not per step
            self._progress = float(state_dict[prefix + "progress"])
            if self.options.advances_itself:
                self._training_calls = self.options.steps_at(self._progress)

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

    @property
    def folds_statistics(self) -> bool:
        """Whether a call folds its features into the estimator: in training mode with grad
        mode on (never under ``torch.no_grad()`` / ``inference_mode`` nor in evaluation mode)."""
        return self.training and torch.is_grad_enabled()

    def _scan(self, features: Tensor, target: Tensor):
        """The step's class set and checks, ``(batch, problems)`` (one host transfer at most);
        the features are checked for NaN/Inf only when they are folded in."""
        return self.estimator.scan(
            features,
            target,
            check_features=self.folds_statistics,
            ignore_index=self.ignore_index,
            validate=self.validate,
            static=self.static_for(features.shape[0]),
        )

    def _fold_scanned(self, features: Tensor, target: Tensor, batch, problems) -> None:
        """Fold a scanned batch into the estimator (or raise on ``problems``, statistics unchanged)."""
        self.estimator.update_scanned(features, target, batch, problems)

    def _scan_and_update(self, features: Tensor, target: Tensor):
        """The step's class set, checks (one host transfer at most) and estimator update.

        In training mode with grad mode on the estimator folds the valid samples in (or every
        rank raises, statistics unchanged) and the call counts for the schedule; otherwise bad
        labels still raise.
        """
        batch, problems = self._scan(features, target)
        if self.folds_statistics:
            self._fold_scanned(features, target, batch, problems)
            self._advance()
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

        In evaluation mode the result is the plain cross-entropy of ``logits`` (no ISDA term,
        no class-prior offset, no update): a validation loss.
        """
        if not self.training:
            return self.evaluation_loss(logits, target, weight)
        if ratio is not None:  # the caller drives lambda
            self._progress_driven = True
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
        if self.options.adjusts_logits:
            return self._adjusted_cross_entropy(logits, target, weight, lam, batch)
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

    _forward_eager = eager_only(_forward)

    def _adjusted_cross_entropy(self, logits: Tensor, target: Tensor, weight: Tensor, lam: float, batch) -> Tensor:
        """Cross-entropy of the ISDA-augmented logits with the class-prior offsets
        (:mod:`torch_isda.logit_adjustment`)."""
        aug = isda_f.augment_logits(logits, weight, target, self.estimator.functional_covariance(), lam,
                                    self.kind, batch=batch)
        safe = target if batch.target is None else batch.target  # static path: no out-of-range index
        return F.cross_entropy(self._offset(aug, safe), safe, reduction=self.reduction,
                               label_smoothing=self.label_smoothing, ignore_index=self.ignore_index)

    def _offset(self, logits: Tensor, target: Tensor) -> Tensor:
        return adjust_logits(logits, target, log_offset=self.log_prior_offset, margins=self.ldam_margin,
                             scale=self.options.ldam_scale if self.ldam_margin is not None else 1.0,
                             ignore_index=self.ignore_index)

    def evaluation_loss(self, logits: Tensor, target: Tensor, weight: Optional[Tensor] = None) -> Tensor:
        """The plain cross-entropy of ``logits`` (what evaluation mode returns; no update)."""
        if weight is not None:
            isda_f.check_logits_target(logits, weight, target)
        return F.cross_entropy(logits, target, reduction=self.reduction, label_smoothing=self.label_smoothing,
                               ignore_index=self.ignore_index)
