"""Parameter and compute counters.

:func:`count_macs` counts multiply-accumulates (MACs), the convention of the
"FLOPs" column of Table 3 of the ISDA paper (ResNet-32: 69.43M).  Multiply by 2
for floating-point operations in the strict sense.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["count_macs", "count_parameters"]


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Return the number of parameters of ``model`` (only those with
    ``requires_grad`` if ``trainable_only``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def count_macs(model: nn.Module, input_size: Sequence[int] | None = None) -> int:
    """Return the multiply-accumulates of one forward pass on a single sample.

    Only ``nn.Conv2d`` (``out_elements * in_channels / groups * kh * kw``) and
    ``nn.Linear`` (``out_elements * in_features``) layers are counted; batch
    norms, activations, pooling and element-wise operations are ignored.  They
    are measured with forward hooks on a zero input of shape
    ``(1, *input_size)`` in eval mode and without autograd; the model's
    training mode is restored afterwards.

    Args:
        model: The network.
        input_size: ``(C, H, W)`` of one sample; defaults to the model's
            ``default_input_size`` attribute.
    """
    if input_size is None:
        input_size = getattr(model, "default_input_size", None)
        if input_size is None:
            raise ValueError("input_size is required for models without default_input_size")
    total = 0

    def conv_hook(module: nn.Conv2d, _inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal total
        kh, kw = module.kernel_size
        total += output.numel() * (module.in_channels // module.groups) * kh * kw

    def linear_hook(module: nn.Linear, _inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal total
        total += output.numel() * module.in_features

    handles = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    reference = next(model.parameters(), None)
    x = torch.zeros(
        (1, *input_size),
        dtype=reference.dtype if reference is not None else torch.float32,
        device=reference.device if reference is not None else None,
    )
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(x)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return total
