"""The four base semi-supervised methods of Table 6, as consistency regularisers.

ISDA (Eq. 19) is added on top of a base method: ``L^L + eta1 * L^U + eta2 * L_reg``,
where ``L_reg`` is the base method's own unlabeled regulariser and the ISDA
consistency bound ``L^U`` (Eq. 15) needs the base method's *target* prediction ``p``
(a constant) and the student logits on the same unlabeled batch.  Every method here
exposes one interface::

    out = method.consistency(model, views, indices=idx)   # ConsistencyOutput
    out.loss          # L_reg, unweighted (scalar, differentiable)
    out.target_probs  # p for Eq. (15): N x C, detached
    out.logits        # student logits used by Eq. (15): N x C, differentiable
    ...optimizer step...
    method.after_step(model, global_step)   # per-step state (mean teacher EMA)
    method.end_epoch()                      # per-epoch state (temporal ensembling)
    eta2 = method.weight(epoch, labeled_fraction)   # ramped L_reg coefficient

``views`` is one tensor or a sequence of independently augmented views of the same
unlabeled images; the Pi-model and mean teacher use two (one is repeated if only one
is given, so dropout/noise remain the only stochasticity).

Methods and defaults (each overridable):

* :class:`PiModel` (Laine & Aila, ICLR 2017): two stochastic passes, MSE between their
  softmaxes (mean over samples and classes, gradients through both branches as in
  ``s-laine/tempens``); ``w_max = 100`` scaled by ``M/N`` (labeled / all training
  samples), sigmoid ramp-up over 80 epochs (``s-laine/tempens`` ``config.py``).
* :class:`TemporalEnsembling` (Laine & Aila): per-sample ensemble
  ``Z <- alpha Z + (1 - alpha) z`` folded at the end of every epoch, bias-corrected
  target ``Z / (1 - alpha^t)``, ``alpha = 0.6``; ``w_max = 30`` scaled by ``M/N``,
  80-epoch ramp-up.
* :class:`MeanTeacher` (Tarvainen & Valpola, NeurIPS 2017): EMA teacher
  ``theta' <- alpha theta' + (1 - alpha) theta`` with ``alpha = 0.99`` during the ramp-up
  and ``0.999`` after (``CuriousAI/mean-teacher`` ``tensorflow/mean_teacher/model.py``)
  and the warm-up ``alpha <- min(1 - 1/(step + 1), alpha)`` of its PyTorch code
  (``pytorch/main.py``); MSE between softmaxes; ``w_max = 100``, ramp-up 40000 steps
  (80 epochs of 500 steps) in the TF code.
* :class:`VAT` (Miyato et al., TPAMI 2018, ``takerum/vat_tf`` ``vat.py``): one power
  iteration with ``xi = 1e-6``, ``eps = 8.0`` (CIFAR-10, ZCA, with augmentation;
  ``3.5`` for SVHN with translation, ``2.5``/``10.0`` without augmentation),
  ``KL(p(x) || p(x + r_adv))`` with ``p(x)`` constant, weight 1, no ramp-up; optional
  entropy minimisation (``entropy_weight=1`` is their "VAT + EntMin").

Ramp-up: ``exp(-5 (1 - t/T)^2)`` (Laine & Aila, Sec. 3; Tarvainen & Valpola).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import ClassVar, NamedTuple, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "ALIASES",
    "METHODS",
    "PAPER_TABLE6",
    "VAT_EPSILON",
    "ConsistencyMethod",
    "ConsistencyOutput",
    "MeanTeacher",
    "PiModel",
    "TemporalEnsembling",
    "VAT",
    "canonical_method_name",
    "consistency_weight",
    "create_method",
    "entropy_with_logits",
    "frozen_bn_stats",
    "kl_div_with_logits",
    "sigmoid_rampup",
    "softmax_mse",
]

Views = Union[Tensor, Sequence[Tensor]]

#: VAT's perturbation norm per dataset (``takerum/vat_tf`` README, runs with
#: augmentation). CIFAR-100 is not in the VAT paper: the CIFAR-10 value is used.
VAT_EPSILON = {"cifar10": 8.0, "cifar100": 8.0, "svhn": 3.5}

#: Test errors (%) of Table 6 of the ISDA paper: ``(method, dataset, labels) ->
#: ((base_mean, base_std), (isda_mean, isda_std))``, five runs each. Table 6 does not
#: state the SVHN label count; we read it as 500: its Mean Teacher baseline, 4.18 +- 0.27,
#: is Mean Teacher's own 500-label SVHN result (Tarvainen & Valpola 2017, Table 1; their
#: 1,000-label result is 3.95 +- 0.19), and 500 is the SVHN setting of Temporal Ensembling
#: (Laine & Aila 2017). See docs/reproduce/table6-semi.md.
PAPER_TABLE6: dict[tuple[str, str, int], tuple[tuple[float, float], tuple[float, float]]] = {
    ("pi", "cifar10", 1000): ((28.74, 0.48), (23.99, 1.30)),
    ("pi", "cifar10", 2000): ((17.57, 0.44), (14.90, 0.10)),
    ("pi", "cifar10", 4000): ((12.36, 0.17), (11.35, 0.19)),
    ("pi", "cifar100", 10000): ((38.06, 0.37), (36.93, 0.28)),
    ("pi", "cifar100", 20000): ((30.80, 0.18), (30.03, 0.41)),
    ("temporal-ensembling", "cifar10", 1000): ((25.15, 1.46), (22.77, 0.63)),
    ("temporal-ensembling", "cifar10", 2000): ((15.78, 0.44), (14.98, 0.73)),
    ("temporal-ensembling", "cifar10", 4000): ((11.90, 0.25), (11.25, 0.31)),
    ("temporal-ensembling", "cifar100", 10000): ((41.56, 0.42), (40.47, 0.24)),
    ("temporal-ensembling", "cifar100", 20000): ((35.35, 0.40), (34.58, 0.27)),
    ("mean-teacher", "cifar10", 1000): ((18.27, 0.53), (17.11, 1.03)),
    ("mean-teacher", "cifar10", 2000): ((13.45, 0.30), (12.35, 0.14)),
    ("mean-teacher", "cifar10", 4000): ((10.73, 0.14), (9.96, 0.33)),
    ("mean-teacher", "cifar100", 10000): ((36.03, 0.37), (34.60, 0.41)),
    ("mean-teacher", "cifar100", 20000): ((30.00, 0.59), (29.37, 0.30)),
    ("mean-teacher", "svhn", 500): ((4.18, 0.27), (4.06, 0.11)),
    ("vat", "cifar10", 1000): ((18.12, 0.82), (14.38, 0.18)),
    ("vat", "cifar10", 2000): ((13.93, 0.33), (11.52, 0.05)),
    ("vat", "cifar10", 4000): ((11.10, 0.24), (9.72, 0.14)),
    ("vat", "cifar100", 10000): ((40.12, 0.12), (36.04, 0.47)),
    ("vat", "cifar100", 20000): ((34.19, 0.69), (30.97, 0.42)),
    ("vat", "svhn", 500): ((5.10, 0.08), (4.86, 0.18)),
}


# --------------------------------------------------------------------------- helpers


def _upcast(x: Tensor) -> Tensor:
    """Half-precision tensors to float32; float32/float64 unchanged."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def sigmoid_rampup(current: float, rampup_length: float) -> float:
    """``exp(-5 (1 - t/T)^2)`` for ``t = clip(current, 0, T)``; ``1`` when ``T == 0``.

    Laine & Aila 2017 (Sec. 3) and Tarvainen & Valpola 2017 (``ramps.sigmoid_rampup``).
    """
    if rampup_length < 0:
        raise ValueError(f"rampup_length must be >= 0, got {rampup_length}")
    if rampup_length == 0:
        return 1.0
    t = min(max(float(current), 0.0), float(rampup_length))
    phase = 1.0 - t / float(rampup_length)
    return float(math.exp(-5.0 * phase * phase))


def consistency_weight(
    epoch: float,
    max_weight: float,
    rampup_epochs: float = 80.0,
    labeled_fraction: Optional[float] = None,
) -> float:
    """Ramped consistency coefficient ``w_max * [M/N] * sigmoid_rampup(epoch, rampup_epochs)``.

    ``labeled_fraction`` (``M/N``, labeled over all training samples) scales ``w_max``
    as in Laine & Aila (``s-laine/tempens``: ``unsup_weight_max * num_labels / N``);
    ``None`` means no scaling. ``epoch`` may be fractional (step / steps_per_epoch).
    """
    scale = 1.0
    if labeled_fraction is not None:
        if not 0.0 < float(labeled_fraction) <= 1.0:
            raise ValueError(f"labeled_fraction must lie in (0, 1], got {labeled_fraction}")
        scale = float(labeled_fraction)
    return float(max_weight) * scale * sigmoid_rampup(epoch, rampup_epochs)


def softmax_mse(logits: Tensor, target_probs: Tensor, mask: Optional[Tensor] = None) -> Tensor:
    """``mean_{i, c} (softmax(logits)_ic - target_ic)^2`` over the (masked) samples and classes.

    This is the Pi-model / temporal ensembling / mean teacher consistency cost
    (``1/C ||z - z~||^2`` averaged over the batch). Gradients flow into ``target_probs``
    too if it requires grad. An empty mask gives a zero that keeps the graph.
    """
    if logits.shape != target_probs.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and target {tuple(target_probs.shape)} differ in shape")
    sq = (F.softmax(_upcast(logits), dim=1) - _upcast(target_probs)).pow(2)
    if mask is None:
        return sq.mean()
    mask = mask.to(sq.device, torch.bool)
    count = int(mask.sum())
    if count == 0:
        return sq.sum() * 0.0
    return sq[mask].sum() / (count * sq.shape[1])


def kl_div_with_logits(p_logits: Tensor, q_logits: Tensor) -> Tensor:
    """Per-sample ``KL(softmax(p_logits) || softmax(q_logits))`` (``N``)."""
    log_p = F.log_softmax(_upcast(p_logits), dim=1)
    log_q = F.log_softmax(_upcast(q_logits), dim=1)
    return (log_p.exp() * (log_p - log_q)).sum(1)


def entropy_with_logits(logits: Tensor) -> Tensor:
    """Mean prediction entropy ``-mean_i sum_c p_ic log p_ic`` (VAT's entropy minimisation term)."""
    log_p = F.log_softmax(_upcast(logits), dim=1)
    return -(log_p.exp() * log_p).sum(1).mean()


_BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


@contextmanager
def frozen_bn_stats(model: nn.Module) -> Iterator[None]:
    """Run ``model`` without updating batch-norm running statistics.

    In training mode BN still normalises with the batch statistics (as VAT's
    ``update_batch_stats=False``); the running mean/var and counters stay untouched.
    """
    saved = []
    for m in model.modules():
        if isinstance(m, _BN_TYPES):
            saved.append((m, m.track_running_stats))
            m.track_running_stats = False
    try:
        yield
    finally:
        for m, flag in saved:
            m.track_running_stats = flag


class _RNGState:
    """Snapshot of the global CPU RNG (and the CUDA RNG of ``device``) to replay dropout masks."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state(self.cuda, self.device)


def _as_views(views: Views, count: int) -> tuple[Tensor, ...]:
    if isinstance(views, Tensor):
        views = (views,)
    views = tuple(views)
    if not views:
        raise ValueError("need at least one view of the unlabeled batch")
    shape = views[0].shape
    if any(v.shape != shape for v in views):
        raise ValueError(f"all views must have the same shape; got {[tuple(v.shape) for v in views]}")
    if len(views) < count:
        views = views + (views[0],) * (count - len(views))
    return views


class ConsistencyOutput(NamedTuple):
    """What a base method gives the Eq. (19) combiner (see the module docstring)."""

    loss: Tensor
    target_probs: Tensor
    logits: Tensor


# --------------------------------------------------------------------------- methods


class ConsistencyMethod(nn.Module):
    """Base class of the semi-supervised regularisers.

    Subclasses implement :meth:`consistency`; the state hooks default to no-ops.
    Being ``nn.Module`` s, methods carry their state (ensemble predictions, teacher
    weights) in ``state_dict`` and follow ``.to(device)``.

    Args:
        max_weight: ``w_max`` of the regulariser coefficient (``eta2`` of Eq. 19).
        rampup_epochs: Length of the sigmoid ramp-up of that coefficient (0 = none).
        scale_by_labeled_fraction: Multiply ``w_max`` by ``M/N`` (Laine & Aila).
    """

    name: ClassVar[str] = ""
    #: Number of augmented views of the unlabeled batch the method uses.
    num_views: ClassVar[int] = 1
    #: Whether :meth:`consistency` needs the samples' dataset indices.
    needs_indices: ClassVar[bool] = False

    def __init__(self, max_weight: float, rampup_epochs: float = 80.0, scale_by_labeled_fraction: bool = False) -> None:
        super().__init__()
        if not float(max_weight) >= 0.0:
            raise ValueError(f"max_weight must be non-negative, got {max_weight}")
        if not float(rampup_epochs) >= 0.0:
            raise ValueError(f"rampup_epochs must be non-negative, got {rampup_epochs}")
        self.max_weight = float(max_weight)
        self.rampup_epochs = float(rampup_epochs)
        self.scale_by_labeled_fraction = bool(scale_by_labeled_fraction)

    def extra_repr(self) -> str:
        return (
            f"max_weight={self.max_weight}, rampup_epochs={self.rampup_epochs}, "
            f"scale_by_labeled_fraction={self.scale_by_labeled_fraction}"
        )

    def weight(self, epoch: float, labeled_fraction: Optional[float] = None) -> float:
        """The regulariser coefficient ``eta2`` at ``epoch`` (fractional epochs allowed)."""
        frac = labeled_fraction if self.scale_by_labeled_fraction else None
        return consistency_weight(epoch, self.max_weight, self.rampup_epochs, frac)

    def consistency(
        self,
        model: nn.Module,
        views: Views,
        *,
        indices: Optional[Tensor] = None,
        logits: Optional[Tensor] = None,
    ) -> ConsistencyOutput:
        """Regulariser of an unlabeled batch.

        Args:
            model: The student network (in its current train/eval mode).
            views: The unlabeled batch, one tensor or ``num_views`` augmented views.
            indices: ``N`` dataset indices of the samples (temporal ensembling).
            logits: Student logits of ``views[0]`` if already computed (skips that pass).
        """
        raise NotImplementedError

    def after_step(self, model: nn.Module, global_step: int) -> None:
        """Call after every optimizer step (``global_step`` = steps taken so far, >= 1)."""

    def end_epoch(self) -> None:
        """Call at the end of every epoch."""

    def eval_model(self, model: nn.Module) -> nn.Module:
        """The network to evaluate (the student; the teacher for the mean teacher)."""
        return model


class PiModel(ConsistencyMethod):
    """Pi-model (Laine & Aila 2017): consistency between two stochastic passes.

    ``L_reg = mean (softmax(f(x_a)) - softmax(f(x_b)))^2``, gradients through both
    passes unless ``detach_target``; ISDA's target is ``softmax(f(x_b))`` (detached).
    """

    name = "pi"
    num_views = 2

    def __init__(
        self,
        max_weight: float = 100.0,
        rampup_epochs: float = 80.0,
        scale_by_labeled_fraction: bool = True,
        detach_target: bool = False,
    ) -> None:
        super().__init__(max_weight, rampup_epochs, scale_by_labeled_fraction)
        self.detach_target = bool(detach_target)

    def consistency(self, model, views, *, indices=None, logits=None) -> ConsistencyOutput:
        x_a, x_b = _as_views(views, 2)[:2]
        z_a = model(x_a) if logits is None else logits
        z_b = model(x_b)
        p_b = F.softmax(_upcast(z_b), dim=1)
        loss = softmax_mse(z_a, p_b.detach() if self.detach_target else p_b)
        return ConsistencyOutput(loss, p_b.detach(), z_a)


class TemporalEnsembling(ConsistencyMethod):
    """Temporal ensembling (Laine & Aila 2017) with per-sample bias correction.

    During an epoch the training-mode softmax of every visited sample is recorded
    (the last visit wins). :meth:`end_epoch` folds the recorded predictions into the
    ensemble, ``Z_i <- alpha Z_i + (1 - alpha) z_i``, and increments the sample's count
    ``t_i``; the target is ``Z_i / (1 - alpha^t_i)`` (exactly the reference code's
    ``Z / (1 - alpha^epoch)`` when every sample is visited every epoch). Samples
    without a target yet (``t_i = 0``) are left out of ``L_reg`` and use their own
    (detached) prediction as ISDA's target.

    Args:
        num_samples: Size of the index space of ``indices`` (the training set).
        num_classes: ``C``.
        alpha: Ensemble momentum (0.6).
    """

    name = "temporal-ensembling"
    needs_indices = True

    def __init__(
        self,
        num_samples: int,
        num_classes: int,
        alpha: float = 0.6,
        max_weight: float = 30.0,
        rampup_epochs: float = 80.0,
        scale_by_labeled_fraction: bool = True,
    ) -> None:
        super().__init__(max_weight, rampup_epochs, scale_by_labeled_fraction)
        if not 0.0 <= float(alpha) < 1.0:
            raise ValueError(f"alpha must lie in [0, 1), got {alpha}")
        if int(num_samples) < 1 or int(num_classes) < 1:
            raise ValueError(f"num_samples and num_classes must be positive, got {num_samples}, {num_classes}")
        self.alpha = float(alpha)
        self.num_samples = int(num_samples)
        self.num_classes = int(num_classes)
        self.register_buffer("ensemble", torch.zeros(self.num_samples, self.num_classes))
        self.register_buffer("epoch_predictions", torch.zeros(self.num_samples, self.num_classes))
        self.register_buffer("seen", torch.zeros(self.num_samples, dtype=torch.bool))
        self.register_buffer("count", torch.zeros(self.num_samples, dtype=torch.long))

    def extra_repr(self) -> str:
        return f"num_samples={self.num_samples}, num_classes={self.num_classes}, alpha={self.alpha}, " + super().extra_repr()

    def _check_indices(self, indices: Optional[Tensor], n: int) -> Tensor:
        if indices is None:
            raise ValueError("temporal ensembling needs the dataset indices of the unlabeled samples")
        idx = torch.as_tensor(indices).to(self.ensemble.device, torch.long)
        if idx.shape != (n,):
            raise ValueError(f"indices must have shape ({n},), got {tuple(idx.shape)}")
        if n and (int(idx.min()) < 0 or int(idx.max()) >= self.num_samples):
            raise ValueError(f"indices must lie in [0, {self.num_samples})")
        return idx

    @torch.no_grad()
    def targets(self, indices: Tensor) -> tuple[Tensor, Tensor]:
        """Bias-corrected targets ``Z / (1 - alpha^t)`` of ``indices`` and the mask ``t > 0``."""
        idx = self._check_indices(indices, torch.as_tensor(indices).numel())
        t = self.count.index_select(0, idx)
        has = t > 0
        denom = 1.0 - torch.pow(self.alpha, t.to(self.ensemble.dtype))
        target = self.ensemble.index_select(0, idx) / torch.where(has, denom, torch.ones_like(denom)).unsqueeze(1)
        return target, has

    @torch.no_grad()
    def record(self, indices: Tensor, probs: Tensor) -> None:
        """Store this epoch's predictions ``probs`` (``N x C``) of ``indices``."""
        idx = self._check_indices(indices, probs.shape[0])
        self.epoch_predictions.index_copy_(0, idx, probs.detach().to(self.epoch_predictions.dtype))
        self.seen.index_fill_(0, idx, True)

    def consistency(self, model, views, *, indices=None, logits=None) -> ConsistencyOutput:
        (x,) = _as_views(views, 1)[:1]
        z = model(x) if logits is None else logits
        idx = self._check_indices(indices, z.shape[0])
        probs = F.softmax(_upcast(z), dim=1)
        target, has = self.targets(idx)
        self.record(idx, probs)
        target = target.to(probs.device)
        has = has.to(probs.device)
        loss = softmax_mse(z, target, has)
        isda_target = torch.where(has.unsqueeze(1), target, probs.detach())
        return ConsistencyOutput(loss, isda_target, z)

    @torch.no_grad()
    def end_epoch(self) -> None:
        seen = self.seen
        if bool(seen.any()):
            z = self.ensemble[seen] * self.alpha + self.epoch_predictions[seen] * (1.0 - self.alpha)
            self.ensemble[seen] = z
            self.count[seen] += 1
        self.seen.zero_()
        self.epoch_predictions.zero_()


class MeanTeacher(ConsistencyMethod):
    """Mean teacher (Tarvainen & Valpola 2017).

    The teacher is a frozen copy of the student whose parameters follow
    ``theta' <- alpha theta' + (1 - alpha) theta`` after every optimizer step
    (:meth:`after_step`), with ``alpha = alpha_rampup`` for ``global_step <
    rampup_steps`` and ``alpha`` afterwards, capped by ``1 - 1/(global_step + 1)``
    when ``warmup_correction`` (true average early on, as the PyTorch reference).
    Buffers (BN running statistics) are the teacher's own, updated by its forward
    passes in training mode (as in the PyTorch reference), unless ``copy_buffers``.
    ``L_reg = mean (softmax(f(x_a)) - softmax(f'(x_b)))^2``; ISDA's target is the
    teacher's softmax.

    Args:
        model: The student, copied (``copy.deepcopy``) to initialise the teacher.
        alpha: EMA decay after the ramp-up (0.999).
        alpha_rampup: EMA decay during the ramp-up (0.99).
        rampup_steps: Steps of the ramp-up (``None``: ``alpha`` throughout; the TF
            reference uses the consistency ramp-up, 80 epochs).
    """

    name = "mean-teacher"
    num_views = 2

    def __init__(
        self,
        model: nn.Module,
        alpha: float = 0.999,
        alpha_rampup: float = 0.99,
        rampup_steps: Optional[int] = None,
        max_weight: float = 100.0,
        rampup_epochs: float = 80.0,
        scale_by_labeled_fraction: bool = False,
        warmup_correction: bool = True,
        copy_buffers: bool = False,
    ) -> None:
        super().__init__(max_weight, rampup_epochs, scale_by_labeled_fraction)
        for a in (alpha, alpha_rampup):
            if not 0.0 <= float(a) <= 1.0:
                raise ValueError(f"EMA decays must lie in [0, 1], got {a}")
        self.alpha = float(alpha)
        self.alpha_rampup = float(alpha_rampup)
        self.rampup_steps = None if rampup_steps is None else int(rampup_steps)
        self.warmup_correction = bool(warmup_correction)
        self.copy_buffers = bool(copy_buffers)
        self.teacher = copy.deepcopy(model)
        self.teacher.requires_grad_(False)

    def extra_repr(self) -> str:
        return (
            f"alpha={self.alpha}, alpha_rampup={self.alpha_rampup}, rampup_steps={self.rampup_steps}, "
            f"warmup_correction={self.warmup_correction}, " + super().extra_repr()
        )

    def alpha_at(self, global_step: int) -> float:
        """EMA decay used by the update after ``global_step`` optimizer steps."""
        a = self.alpha_rampup if self.rampup_steps is not None and global_step < self.rampup_steps else self.alpha
        if self.warmup_correction:
            a = min(1.0 - 1.0 / (global_step + 1), a)
        return a

    @torch.no_grad()
    def update(self, model: nn.Module, global_step: int) -> float:
        """``theta' <- alpha theta' + (1 - alpha) theta``; returns the ``alpha`` used."""
        a = self.alpha_at(global_step)
        t_params = list(self.teacher.parameters())
        s_params = list(model.parameters())
        if len(t_params) != len(s_params):
            raise ValueError("the student does not match the teacher's architecture")
        for tp, sp in zip(t_params, s_params):
            tp.mul_(a).add_(sp.detach().to(tp.dtype), alpha=1.0 - a)
        if self.copy_buffers:
            for tb, sb in zip(self.teacher.buffers(), model.buffers()):
                tb.copy_(sb)
        return a

    def after_step(self, model: nn.Module, global_step: int) -> None:
        self.update(model, global_step)

    def consistency(self, model, views, *, indices=None, logits=None) -> ConsistencyOutput:
        x_s, x_t = _as_views(views, 2)[:2]
        z_s = model(x_s) if logits is None else logits
        self.teacher.train(model.training)
        with torch.no_grad():
            p_t = F.softmax(_upcast(self.teacher(x_t)), dim=1)
        return ConsistencyOutput(softmax_mse(z_s, p_t), p_t, z_s)

    def eval_model(self, model: nn.Module) -> nn.Module:
        return self.teacher


class VAT(ConsistencyMethod):
    """Virtual adversarial training (Miyato et al. 2018).

    ``r_adv = eps * g / ||g||`` with ``g`` from ``num_power_iterations`` power
    iterations ``g <- grad_d KL(p(x) || p(x + xi d / ||d||))`` started from a Gaussian
    ``d``; ``L_reg = mean KL(p(x) || p(x + r_adv))`` with ``p(x)`` constant
    (+ ``entropy_weight`` * prediction entropy). Normalisation follows the reference
    ``get_normalized_vector`` (divide by the max-abs value, then by
    ``sqrt(1e-6 + ||d||^2)``), so ``||r_adv|| = eps`` up to ~1e-6 relative; a sample
    whose finite-difference gradient is exactly zero keeps its random direction.

    All passes on the unlabeled batch leave the BN running statistics alone
    (reference: ``update_batch_stats=False``). With ``share_dropout`` the perturbed
    passes replay the dropout masks of the clean pass (the reference code's fixed
    per-layer dropout seeds do the same), so the finite difference measures ``r`` and
    not dropout noise; pass ``logits=None`` for this to cover the clean pass too.

    Note ``xi = 1e-6`` is below float32 resolution for O(1) inputs in most pixels
    (as in the float32 reference); raise ``xi`` if the power iteration stalls.

    Args:
        epsilon: Norm of the perturbation (8.0; see :data:`VAT_EPSILON`).
        xi: Finite-difference step (1e-6).
        num_power_iterations: 1.
        entropy_weight: Weight of entropy minimisation (0 = off; 1 in "VAT + EntMin").
        generator: Source of the initial random direction (default: global RNG).
    """

    name = "vat"

    def __init__(
        self,
        epsilon: float = 8.0,
        xi: float = 1e-6,
        num_power_iterations: int = 1,
        entropy_weight: float = 0.0,
        max_weight: float = 1.0,
        rampup_epochs: float = 0.0,
        scale_by_labeled_fraction: bool = False,
        share_dropout: bool = True,
        generator: Optional[torch.Generator] = None,
    ) -> None:
        super().__init__(max_weight, rampup_epochs, scale_by_labeled_fraction)
        if not float(epsilon) > 0.0 or not float(xi) > 0.0:
            raise ValueError(f"epsilon and xi must be positive, got {epsilon}, {xi}")
        if int(num_power_iterations) < 0:
            raise ValueError(f"num_power_iterations must be >= 0, got {num_power_iterations}")
        if not float(entropy_weight) >= 0.0:
            raise ValueError(f"entropy_weight must be non-negative, got {entropy_weight}")
        self.epsilon = float(epsilon)
        self.xi = float(xi)
        self.num_power_iterations = int(num_power_iterations)
        self.entropy_weight = float(entropy_weight)
        self.share_dropout = bool(share_dropout)
        self.generator = generator

    def extra_repr(self) -> str:
        return (
            f"epsilon={self.epsilon}, xi={self.xi}, num_power_iterations={self.num_power_iterations}, "
            f"entropy_weight={self.entropy_weight}, " + super().extra_repr()
        )

    @staticmethod
    def normalize(d: Tensor) -> Tensor:
        """Per-sample unit direction, as the reference ``get_normalized_vector``.

        Divides by the max-abs value (guarded only against exact zeros, where the
        reference adds 1e-12, which shrinks the tiny gradients of confident samples),
        then by ``sqrt(1e-6 + ||d||^2)``.
        """
        dims = tuple(range(1, d.dim()))
        amax = d.abs().amax(dim=dims, keepdim=True)
        d = d / torch.where(amax > 0, amax, torch.ones_like(amax))
        return d / torch.sqrt(1e-6 + d.pow(2).sum(dim=dims, keepdim=True))

    def perturbation(
        self, model: nn.Module, x: Tensor, logits: Tensor, *, _rng: Optional[_RNGState] = None
    ) -> Tensor:
        """The virtual adversarial perturbation ``r_adv`` of ``x`` (detached, shape of ``x``).

        ``logits`` are the (clean) predictions ``p(x)`` are measured against.
        """
        logits = logits.detach()
        g = self.generator
        d = torch.randn(x.shape, generator=g, device=g.device if g is not None else x.device, dtype=x.dtype)
        d = d.to(x.device)
        if _rng is None and self.share_dropout:
            _rng = _RNGState(x.device)
        end = _RNGState(x.device) if _rng is not None else None
        with frozen_bn_stats(model):
            for _ in range(self.num_power_iterations):
                d = (self.xi * self.normalize(d)).requires_grad_(True)
                if _rng is not None:
                    _rng.restore()
                # summed (not averaged) over samples: same directions, no 1/N shrinkage
                dist = kl_div_with_logits(logits, model(x.detach() + d)).sum()
                grad = torch.autograd.grad(dist, d)[0].detach()
                # a sample whose gradient vanished exactly keeps its previous direction
                dims = tuple(range(1, grad.dim()))
                dead = grad.abs().amax(dim=dims, keepdim=True) == 0
                d = torch.where(dead, d.detach(), grad)
        if end is not None:
            end.restore()
        return self.epsilon * self.normalize(d)

    def consistency(self, model, views, *, indices=None, logits=None) -> ConsistencyOutput:
        (x,) = _as_views(views, 1)[:1]
        rng = _RNGState(x.device) if self.share_dropout else None
        with frozen_bn_stats(model):
            z = model(x) if logits is None else logits
            r_adv = self.perturbation(model, x, z, _rng=rng)
            after = _RNGState(x.device) if rng is not None else None
            if rng is not None:
                rng.restore()
            z_adv = model(x.detach() + r_adv)
            if after is not None:
                after.restore()
        loss = kl_div_with_logits(z.detach(), z_adv).mean()
        if self.entropy_weight > 0:
            loss = loss + self.entropy_weight * entropy_with_logits(z)
        return ConsistencyOutput(loss, F.softmax(_upcast(z.detach()), dim=1), z)


# --------------------------------------------------------------------------- registry

METHODS: dict[str, type[ConsistencyMethod]] = {
    "pi": PiModel,
    "temporal-ensembling": TemporalEnsembling,
    "mean-teacher": MeanTeacher,
    "vat": VAT,
}

#: Accepted spellings of the method names.
ALIASES = {
    "pi-model": "pi",
    "pi_model": "pi",
    "pimodel": "pi",
    "temporal_ensembling": "temporal-ensembling",
    "temporal-ensemble": "temporal-ensembling",
    "temp-ensemble": "temporal-ensembling",
    "tempens": "temporal-ensembling",
    "te": "temporal-ensembling",
    "mean_teacher": "mean-teacher",
    "meanteacher": "mean-teacher",
    "mt": "mean-teacher",
}


def canonical_method_name(name: str) -> str:
    """The canonical name (a key of :data:`METHODS`) of a method or alias."""
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    if key not in METHODS:
        raise ValueError(
            f"unknown semi-supervised method {name!r}; choose one of {sorted(METHODS)} "
            f"(aliases: {sorted(ALIASES)})"
        )
    return key


def create_method(
    name: str,
    *,
    model: Optional[nn.Module] = None,
    num_samples: Optional[int] = None,
    num_classes: Optional[int] = None,
    **kwargs,
) -> ConsistencyMethod:
    """Build a method by name; ``model`` is needed by the mean teacher, ``num_samples``
    and ``num_classes`` by temporal ensembling; other keyword arguments go to the class."""
    key = canonical_method_name(name)
    if key == "mean-teacher":
        if model is None:
            raise ValueError("the mean teacher needs the student model (model=...)")
        return MeanTeacher(model, **kwargs)
    if key == "temporal-ensembling":
        if num_samples is None or num_classes is None:
            raise ValueError("temporal ensembling needs num_samples=... and num_classes=...")
        return TemporalEnsembling(num_samples, num_classes, **kwargs)
    return METHODS[key](**kwargs)
