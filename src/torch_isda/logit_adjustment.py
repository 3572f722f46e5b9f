"""Class-prior offsets of the logits: logit adjustment and LDAM margins (pure functions).

Long-tailed training shifts the logits by per-class constants before the softmax:

* **logit adjustment** (Menon et al., ICLR 2021) adds ``tau * log(pi_j)`` to logit ``j``, with
  ``pi`` the training class prior; **Balanced Softmax** (Ren et al., NeurIPS 2020) is
  ``tau = 1``;
* **LDAM** (Cao et al., NeurIPS 2019) subtracts the margin
  ``m_y = C / n_y^(1/4)`` from the target logit (``C`` chosen so that the largest margin,
  the rarest class's, is ``max_margin``, 0.5 in the paper) and scales the logits by ``s``
  (30 in the paper).

Together, with ``Delta`` the ISDA term of Eq. (7) (``lambda / 2 * sigma2``, zero at the
target)::

    z'_j = s * (z_j + Delta_j - [j = y] m_y) + tau * log(pi_j)

ISDA's term does not depend on an offset of the logits (``sigma2`` involves only ``W`` and
``Sigma``), so the combination is exact: the cross-entropy of ``z'`` is the ISDA bound
(Proposition 1) of the offset loss, for features augmented with ``N(0, lambda / s * Sigma)``
(the scale multiplies the logit differences; MetaSAug's LDAM variant augments before the
scaling in the same way). Without LDAM, ``s = 1``.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import Tensor

__all__ = ["prior_log_offset", "ldam_margins", "adjust_logits"]

Numbers = Union[Tensor, Sequence[float]]


def _as_vector(values: Numbers, name: str, dtype: torch.dtype) -> Tensor:
    v = torch.as_tensor(values, dtype=dtype)
    if v.dim() != 1 or v.numel() == 0:
        raise ValueError(f"{name} must be a non-empty 1-D sequence (one value per class); got shape {tuple(v.shape)}")
    if not bool(torch.isfinite(v).all() & (v > 0).all()):  # once, when the loss is built
        raise ValueError(f"{name} must hold positive finite numbers (one per class)")
    return v


def prior_log_offset(prior: Numbers, tau: float = 1.0, *, dtype: torch.dtype = torch.float64) -> Tensor:
    """``tau * log(pi)`` for the prior ``pi = prior / sum(prior)`` (counts or frequencies), ``C``."""
    pi = _as_vector(prior, "class_prior", dtype)
    return float(tau) * torch.log(pi / pi.sum())


def ldam_margins(counts: Numbers, max_margin: float = 0.5, *, dtype: torch.dtype = torch.float64) -> Tensor:
    """LDAM's ``m_c = max_margin * (n_min / n_c)^(1/4)`` for per-class counts ``n_c`` (``C``)."""
    n = _as_vector(counts, "ldam_counts", dtype)
    inv = n.pow(-0.25)
    return float(max_margin) * inv / inv.max()


def adjust_logits(
    logits: Tensor,
    target: Tensor,
    *,
    log_offset: Optional[Tensor] = None,
    margins: Optional[Tensor] = None,
    scale: float = 1.0,
    ignore_index: Optional[int] = None,
) -> Tensor:
    """``scale * (logits - [j = y] margins[y]) + log_offset`` (``N x C``; no host synchronization).

    ``log_offset`` (``C``, e.g. :func:`prior_log_offset`) and ``margins`` (``C``, e.g.
    :func:`ldam_margins`) are optional; samples whose target is ``ignore_index`` get no margin.
    The offsets are cast to the logits' dtype; gradients flow into ``logits`` only.
    """
    out = logits
    if margins is not None:
        y = target.to(torch.long)
        valid = None if ignore_index is None else y != ignore_index
        safe = y if valid is None else torch.where(valid, y, torch.zeros((), dtype=y.dtype, device=y.device))
        m = margins.to(device=logits.device, dtype=logits.dtype).index_select(0, safe)
        if valid is not None:
            m = m * valid.to(m.dtype)
        out = out - torch.zeros_like(out).scatter_(1, safe.unsqueeze(1), m.unsqueeze(1))
    if scale != 1.0:
        out = out * float(scale)
    if log_offset is not None:
        out = out + log_offset.to(device=logits.device, dtype=logits.dtype)
    return out
