"""Helpers for synchronizing ISDA statistics across ``torch.distributed`` ranks."""

from __future__ import annotations

from typing import Tuple

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["is_distributed", "all_gather_batch", "any_rank"]


def is_distributed() -> bool:
    """True when ``torch.distributed`` is initialized with more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def any_rank(flags: Tensor) -> Tensor:
    """Element-wise OR of a bool ``flags`` tensor over all ranks, on the device (no host read)."""
    total = flags.to(torch.long)
    dist.all_reduce(total, op=dist.ReduceOp.MAX)
    return total.to(torch.bool)


def all_gather_batch(features: Tensor, labels: Tensor, problems: Tensor) -> Tuple[Tensor, Tensor]:
    """All-gather a batch of ``features`` (``N_r x A``) and ``labels`` (``N_r``) from every rank.

    Ranks may hold different ``N_r``. ``problems`` is a small integer tensor of local
    validation flags (non-zero means invalid); they travel with the sizes in a first,
    tiny collective, so that *every* rank raises the same ``ValueError`` when any rank's
    input is bad instead of some ranks hanging in the second collective.

    Returns the concatenation over ranks in rank order, identical on every rank.
    """
    world = dist.get_world_size()
    device = features.device
    meta = torch.cat(
        [torch.tensor([features.shape[0], features.shape[-1] if features.dim() else 0], device=device),
         problems.to(device=device, dtype=torch.long)]
    )
    metas = [torch.empty_like(meta) for _ in range(world)]
    dist.all_gather(metas, meta)
    metas_t = torch.stack(metas).cpu()
    bad = [r for r in range(world) if bool(metas_t[r, 2:].any())]
    if bad:
        raise ValueError(
            f"invalid ISDA statistics input on rank(s) {bad} (flags {metas_t[bad, 2:].tolist()}); "
            "no rank updated its statistics"
        )
    dims = set(metas_t[:, 1].tolist())
    if len(dims) != 1:
        raise ValueError(f"ranks disagree on the feature dimension: {metas_t[:, 1].tolist()}")
    sizes = metas_t[:, 0].tolist()
    n_max = max(sizes)
    pad = n_max - features.shape[0]
    feats = torch.nn.functional.pad(features, (0, 0, 0, pad)) if pad else features
    labs = torch.nn.functional.pad(labels, (0, pad)) if pad else labels
    all_feats = [torch.empty_like(feats) for _ in range(world)]
    all_labs = [torch.empty_like(labs) for _ in range(world)]
    dist.all_gather(all_feats, feats.contiguous())
    dist.all_gather(all_labs, labs.contiguous())
    return (
        torch.cat([f[:n] for f, n in zip(all_feats, sizes)]),
        torch.cat([lab[:n] for lab, n in zip(all_labs, sizes)]),
    )
