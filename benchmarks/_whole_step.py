"""A whole training step (forward, criterion, backward, SGD) that ``torch.compile`` takes in one graph.

``torch.optim`` optimizers break the graph on purpose (PyTorch issue 104053), so the update
is written with ``torch._foreach_*`` ops: SGD with momentum, Nesterov and weight decay, the
paper's CIFAR optimizer. The backward is ``torch.autograd.grad``, traced with dynamo's
``trace_autograd_ops``. Used by ``gpu_step.py`` (whole-step rows) and ``table2_epoch.py``.
"""

from __future__ import annotations

from typing import Callable, List, Optional

import torch
from torch import Tensor, nn

__all__ = ["make_train_step", "compile_step", "MODES"]

#: how a step runs: plain eager, one ``fullgraph`` graph, that graph captured in a CUDA graph
MODES = ("eager", "compiled", "captured")


def make_train_step(model: nn.Module, criterion: Callable, lr: float = 0.1, momentum: float = 0.9,
                    weight_decay: float = 1e-4, amp_dtype: Optional[torch.dtype] = torch.bfloat16
                    ) -> Callable[[Tensor, Tensor], Tensor]:
    """``step(x, y) -> loss``: forward in autocast, ``criterion(features, logits, y, W)``,
    gradients, and a Nesterov SGD update of every parameter in place."""
    params: List[Tensor] = [p for p in model.parameters() if p.requires_grad]
    momenta = [torch.zeros_like(p) for p in params]

    def step(x: Tensor, y: Tensor) -> Tensor:
        with torch.autocast(x.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            features = model.forward_features(x)
            logits = model.fc(features)
        loss = criterion(features.float(), logits.float(), y, model.fc.weight)
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            torch._foreach_add_(grads, params, alpha=weight_decay)
            torch._foreach_mul_(momenta, momentum)
            torch._foreach_add_(momenta, grads)
            torch._foreach_add_(grads, momenta, alpha=momentum)  # Nesterov
            torch._foreach_add_(params, grads, alpha=-lr)
        return loss.detach()

    return step


def compile_step(step: Callable, mode: str, backend: Optional[str] = None) -> Callable:
    """The step for a :data:`MODES` entry (``captured``: ``mode="reduce-overhead"``, CUDA only)."""
    if mode == "eager":
        return step
    torch._dynamo.config.trace_autograd_ops = True  # torch.autograd.grad inside the graph
    if mode == "captured":
        return torch.compile(step, fullgraph=True, mode="reduce-overhead", backend=backend or "inductor")
    return torch.compile(step, fullgraph=True, backend=backend or "inductor")
