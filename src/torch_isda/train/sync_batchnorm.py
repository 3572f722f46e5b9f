"""BatchNorm over the global batch of all ``torch.distributed`` ranks on any backend.

:class:`torch.nn.SyncBatchNorm` only runs on accelerators; :class:`SyncBatchNorm` also
runs with gloo on the CPU (multi-process training with ``--sync-bn``,
:mod:`torch_isda.train.parallel`). Build it with :func:`convert_sync_batchnorm`.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = ["SyncBatchNorm", "convert_sync_batchnorm"]


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks whose backward sums the gradients over ranks (the gradient of the
    sum of every rank's loss with respect to this rank's input)."""

    @staticmethod
    def forward(ctx: Any, tensor: Tensor, group: Any) -> Tensor:
        ctx.group = group
        out = tensor.clone()
        dist.all_reduce(out, group=group)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        grad = grad.clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


class SyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm over the global batch of all ranks, on any device and backend (gloo/CPU
    included; :class:`torch.nn.SyncBatchNorm` only runs on accelerators).

    In training mode under ``torch.distributed`` with more than one rank, the mean and the
    (biased) variance are computed over the samples of every rank (two all-reduces of
    ``C + 1`` and ``C`` numbers, differentiable: the backward all-reduces their gradients)
    and the running statistics are updated with them exactly as one process seeing the
    global batch would; otherwise it is plain BatchNorm. Same parameters and buffers as
    ``nn.BatchNorm*d`` (checkpoints are interchangeable). Build with
    :func:`convert_sync_batchnorm`.
    """

    def __init__(self, *args: Any, process_group: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.process_group = process_group

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: Tensor) -> Tensor:
        self._check_input_dim(input)
        group = self.process_group or (dist.group.WORLD if dist.is_initialized() else None)
        if not (self.training and group is not None and dist.get_world_size(group) > 1):
            return super().forward(input)
        C = input.shape[1]
        dims = [0, *range(2, input.dim())]
        shape = [1, C] + [1] * (input.dim() - 2)
        x = input.float() if input.dtype in (torch.float16, torch.bfloat16) else input
        count = torch.full((1,), input.numel() // max(C, 1), dtype=x.dtype, device=x.device)
        stats = _AllReduceSum.apply(torch.cat([x.sum(dims), count]), group)
        n = stats[C]
        mean = stats[:C] / n
        xc = x - mean.view(shape)
        var = _AllReduceSum.apply((xc * xc).sum(dims), group) / n
        out = xc * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self._update_running_stats(mean.detach(), var.detach(), n)
        return out.to(input.dtype)

    def _update_running_stats(self, mean: Tensor, var: Tensor, n: Tensor) -> None:
        """Fold the global batch's mean and unbiased variance into the running statistics
        on the device (no host read: the count ``n`` and the factor stay tensors)."""
        self.num_batches_tracked.add_(1)
        factor = _momentum(self)
        unbiased = var * (n / (n - 1.0).clamp_min(1.0))
        dtype = self.running_mean.dtype
        self.running_mean.mul_(1 - factor).add_(mean.to(dtype) * factor)
        self.running_var.mul_(1 - factor).add_(unbiased.to(dtype) * factor)


def _momentum(module: "SyncBatchNorm"):
    """The running statistics' factor: ``momentum``, or ``1 / batches tracked`` (a device
    value, never read back) for the cumulative average (``momentum=None``)."""
    if module.momentum is None:
        return module.num_batches_tracked.reciprocal().to(module.running_mean.dtype)
    return module.momentum


def convert_sync_batchnorm(module: nn.Module, device: Optional[torch.device] = None) -> nn.Module:
    """Replace every BatchNorm layer of ``module`` by a synchronized one, sharing its
    parameters and buffers (optimizers built before keep working).

    :class:`torch.nn.SyncBatchNorm` on CUDA, :class:`SyncBatchNorm` otherwise. Returns the
    module (a new one only if ``module`` itself is a BatchNorm layer).
    """
    if device is not None and device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    out = module
    bn = nn.modules.batchnorm._BatchNorm
    if isinstance(module, bn) and not isinstance(module, (SyncBatchNorm, nn.SyncBatchNorm)):
        out = SyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                            module.track_running_stats)
        if module.affine:
            out.weight, out.bias = module.weight, module.bias
        out.running_mean, out.running_var = module.running_mean, module.running_var
        out.num_batches_tracked = module.num_batches_tracked
        out.train(module.training)
    for name, child in module.named_children():
        out.add_module(name, convert_sync_batchnorm(child, device))
    return out
