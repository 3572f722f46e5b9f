"""Compatibility with the official ISDA code (``blackfeather-wang/ISDA-for-Deep-Networks``).

The official ``EstimatorCV`` is a plain object (not an ``nn.Module``) with three tensors:

==========================================  ===============  ===============================
official                                    shape            :class:`~torch_isda.CovarianceEstimator`
==========================================  ===============  ===============================
``Ave``                                     ``C x A``        buffer ``mean``
``CoVariance`` (CIFAR ``ISDA.py``)          ``C x A x A``    ``covariance``, ``kind="full"``
``CoVariance`` (ImageNet ``ISDA_imagenet``) ``C x A``        ``covariance``, ``kind="diagonal"``
``Amount``                                  ``C`` (float)    buffer ``count`` (``int64``)
==========================================  ===============  ===============================

Both implement the same update (Eqs. 1-3: the mean and the *population* covariance of all
features seen so far), so statistics carry over unchanged::

    from torch_isda import CovarianceEstimator, ISDALoss
    from torch_isda.compat import convert_official_state

    old = torch.load("isda_stats.pt")          # {"CoVariance": ..., "Ave": ..., "Amount": ...}
    est = CovarianceEstimator(A, C, kind="full")
    est.load_state_dict(convert_official_state(old))

    crit = ISDALoss(A, C, lambda0=0.5)          # or a whole loss, with the progress t / T
    crit.load_state_dict(convert_official_state(old, prefix="estimator.", progress=epoch / epochs))

The official code keeps the statistics out of any ``state_dict``; save them with
``torch.save({k: getattr(criterion.estimator, k) for k in ("CoVariance", "Ave", "Amount")}, path)``
(or pass the official ``ISDALoss`` / ``EstimatorCV`` object itself to
:func:`convert_official_state`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Optional

import torch
from torch import Tensor

from .loss import ISDALoss

__all__ = ["OFFICIAL_KEYS", "convert_official_state", "official_kind", "to_official_state"]

#: Official attribute name -> our buffer name.
OFFICIAL_KEYS = {"Ave": "mean", "CoVariance": "covariance", "Amount": "count"}


def _official_tensors(state: Any) -> dict[str, Tensor]:
    """``{"Ave", "CoVariance", "Amount"}`` from a mapping (keys may carry a prefix, e.g.
    ``"estimator.CoVariance"``), an official ``EstimatorCV`` or an official ``ISDALoss``."""
    if not isinstance(state, Mapping):
        obj = getattr(state, "estimator", state)
        missing = [k for k in OFFICIAL_KEYS if not hasattr(obj, k)]
        if missing:
            raise TypeError(
                f"expected a mapping or an official EstimatorCV/ISDALoss with attributes "
                f"{', '.join(OFFICIAL_KEYS)}; {type(state).__name__} lacks {', '.join(missing)}")
        return {k: getattr(obj, k) for k in OFFICIAL_KEYS}
    found: dict[str, Tensor] = {}
    for key, value in state.items():
        name = str(key).rsplit(".", 1)[-1]
        if name in OFFICIAL_KEYS:
            if name in found:
                raise ValueError(f"state holds several official {name!r} entries (e.g. {key!r}); "
                                 f"pass the sub-dict of one estimator")
            found[name] = value
    missing = [k for k in OFFICIAL_KEYS if k not in found]
    if missing:
        raise KeyError(f"official ISDA state must hold {', '.join(OFFICIAL_KEYS)}; missing "
                       f"{', '.join(missing)} (keys given: {', '.join(map(str, state)) or 'none'})")
    return found


def official_kind(state: Any) -> str:
    """The :class:`~torch_isda.CovarianceEstimator` ``kind`` matching an official state:
    ``"full"`` for a ``C x A x A`` ``CoVariance`` (CIFAR code), ``"diagonal"`` for ``C x A``
    (ImageNet code)."""
    cov = torch.as_tensor(_official_tensors(state)["CoVariance"])
    if cov.dim() == 3:
        return "full"
    if cov.dim() == 2:
        return "diagonal"
    raise ValueError(f"official CoVariance must be C x A x A or C x A; got shape {tuple(cov.shape)}")


def convert_official_state(state: Any, *, prefix: str = "",
                           progress: Optional[float] = None) -> dict[str, Tensor]:
    """Convert the official code's estimator state to a ``state_dict`` of ours.

    Args:
        state: a mapping with ``CoVariance``, ``Ave`` and ``Amount`` (keys may be prefixed,
            e.g. ``"estimator.CoVariance"``), or the official ``EstimatorCV`` / ``ISDALoss``
            object itself.
        prefix: prepended to every key: ``""`` for
            :meth:`CovarianceEstimator.load_state_dict <torch.nn.Module.load_state_dict>`,
            ``"estimator."`` for :class:`~torch_isda.ISDALoss` (add ``progress``).
        progress: the training progress ``t / T`` to store as ``prefix[:-len("estimator.")]
            + "progress"`` (the official code passes ``ratio = lambda_0 * epoch / epochs``
            per call instead; use ``epoch / epochs``). Only with ``prefix`` ending in
            ``"estimator."``.

    Returns:
        ``{prefix + "mean": C x A, prefix + "covariance": C x A x A or C x A,
        prefix + "count": C (int64)}`` (plus the progress), detached copies on the
        tensors' device in their floating dtype (``load_state_dict`` casts). Build the
        estimator with ``kind=official_kind(state)``.

    Raises:
        KeyError / TypeError: the state lacks one of the three tensors.
        ValueError: inconsistent shapes, or negative / non-integral counts.
    """
    tensors = {k: torch.as_tensor(v).detach() for k, v in _official_tensors(state).items()}
    ave, cov, amount = tensors["Ave"], tensors["CoVariance"], tensors["Amount"]
    if ave.dim() != 2:
        raise ValueError(f"official Ave must be C x A; got shape {tuple(ave.shape)}")
    C, A = ave.shape
    if tuple(cov.shape) not in ((C, A, A), (C, A)):
        raise ValueError(f"official CoVariance must be C x A x A = {(C, A, A)} or C x A = {(C, A)} "
                         f"to match Ave; got {tuple(cov.shape)}")
    if tuple(amount.reshape(-1).shape) != (C,):
        raise ValueError(f"official Amount must hold C = {C} counts; got shape {tuple(amount.shape)}")
    amount = amount.reshape(-1)
    counts = amount.round().to(torch.int64)
    if bool((counts < 0).any()) or (amount.is_floating_point()
                                    and not torch.allclose(amount, counts.to(amount.dtype))):
        raise ValueError("official Amount must hold non-negative integer sample counts")
    out = {prefix + "mean": ave.clone(), prefix + "covariance": cov.clone(),
           prefix + "count": counts}
    if progress is not None:
        if not prefix.endswith("estimator."):
            raise ValueError("progress belongs to an ISDALoss state: use prefix='estimator.' "
                             "(or '<module path>.estimator.')")
        value = ISDALoss.checked_progress(progress)
        out[prefix[: -len("estimator.")] + "progress"] = torch.tensor(value, dtype=torch.float64)
    return out


def to_official_state(estimator: Any) -> dict[str, Tensor]:
    """The inverse: ``{"CoVariance", "Ave", "Amount"}`` (``Amount`` as float, as the
    official code keeps it) from a :class:`~torch_isda.CovarianceEstimator`, an
    :class:`~torch_isda.ISDALoss` or a ``state_dict`` of either. Only the ``"full"`` and
    ``"diagonal"`` kinds have an official counterpart."""
    if isinstance(estimator, Mapping):
        state = {str(k).rsplit(".", 1)[-1]: v for k, v in estimator.items()}
        if "components" in state:
            raise ValueError("the official code has no 'lowrank' covariance; only 'full' "
                             "and 'diagonal' convert")
    else:
        est = getattr(estimator, "estimator", estimator)
        kind = getattr(est, "kind", None)
        if kind not in ("full", "diagonal"):
            raise ValueError(f"the official code has no {kind!r} covariance; only 'full' "
                             f"and 'diagonal' convert")
        state = dict(est.state_dict())
    missing = [k for k in OFFICIAL_KEYS.values() if k not in state]
    if missing:
        raise KeyError(f"estimator state lacks {', '.join(missing)}")
    mean, cov = state["mean"].detach(), state["covariance"].detach()
    if cov.dim() == 2 and tuple(cov.shape) != tuple(mean.shape):
        raise ValueError("only the 'full' (C x A x A) and 'diagonal' (C x A) covariances "
                         "have an official counterpart")
    return {"CoVariance": cov.clone(), "Ave": mean.clone(),
            "Amount": state["count"].detach().to(mean.dtype)}
