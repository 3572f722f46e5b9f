"""The whole training step as one ``torch.compile`` graph (``isda train --compile``,
``--cuda-graphs``; docs/training.md, "Compiling the training step").

Forward, criterion, backward and the SGD update run in one function compiled with
``fullgraph=True`` and ``dynamic=False``:

* the backward is ``torch.autograd.grad``, traced with dynamo's ``trace_autograd_ops``;
* ``torch.optim`` optimizers break the graph on purpose (PyTorch issue 104053), so the update
  is :func:`sgd_update`, the arithmetic of ``torch.optim.SGD`` (momentum, Nesterov, weight
  decay) in ``torch._foreach_*`` ops, applied to the engine's optimizer's own parameters and
  momentum buffers: its ``state_dict``, the checkpoint and a resume are unchanged;
* the learning rates are device tensors refreshed from the optimizer's groups (the schedule
  moves them without recompiling), ISDA's lambda comes from the criterion's ``progress``
  buffer (the core computes it on the device under compile);
* ISDA takes its static all-class path (no data-dependent shape, input checks on the
  device: the engine raises a rejected batch's error at the end of the epoch).

The data pipeline (batching with ``drop_last``, the device-side augmentation) stays eager
and hands the graph batches of one shape.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional

import torch
from torch import Tensor

from ..loss import ISDALoss
from .tasks.base import StepOut

__all__ = ["COMPILE_BACKEND", "CompiledStep", "check_compile_options", "sgd_update",
           "whole_step_for"]

#: The ``torch.compile`` backend of the step (the tests use ``"aot_eager"`` to save time).
COMPILE_BACKEND = "inductor"
#: Raised by dynamo when a code object has been compiled for ``recompile_limit``
#: configurations (``None`` on a torch without it).
_RECOMPILE_LIMIT_HIT = getattr(torch._dynamo.exc, "FailOnRecompileLimitHit", None)

#: Events that would run inside the graph: a listener defining them cannot be compiled with.
IN_GRAPH_EVENTS = ("on_step", "on_after_backward")


def sgd_update(params: Sequence[Tensor], grads: Sequence[Tensor], momenta: Sequence[Tensor],
               lr: Tensor, *, momentum: float, weight_decay: float, nesterov: bool) -> None:
    """``torch.optim.SGD``'s update (``dampening=0``, ``maximize=False``) of ``params`` in
    place, with a tensor ``lr`` and the momentum buffers ``momenta`` (zeros before the
    first step give the optimizer's first step exactly)."""
    params, grads, momenta = list(params), list(grads), list(momenta)
    if weight_decay != 0:
        grads = torch._foreach_add(grads, params, alpha=weight_decay)
    if momentum != 0:
        torch._foreach_mul_(momenta, momentum)
        torch._foreach_add_(momenta, grads)
        grads = torch._foreach_add(grads, momenta, alpha=momentum) if nesterov else momenta
    torch._foreach_add_(params, torch._foreach_mul(grads, -lr))


def check_compile_options(config: Any, device: torch.device) -> None:
    """``ValueError`` (one line) for ``--compile`` / ``--cuda-graphs`` settings that cannot
    work."""
    if config.cuda_graphs and not config.compile:
        raise ValueError("--cuda-graphs captures the compiled training step: add --compile")
    if config.cuda_graphs and device.type != "cuda":
        raise ValueError(f"--cuda-graphs needs a CUDA device; this run is on {device}")
    if config.compile and config.amp == "fp16":
        raise ValueError("--compile does not support --amp fp16 (the gradient scaler reads "
                         "the host every step); use --amp bf16 or none")


def whole_step_for(engine: Any, events: type) -> Optional[CompiledStep]:
    """The engine's :class:`CompiledStep` under ``--compile`` (``None`` otherwise, or for a
    task or a multi-process run that compiles only its forward, as logged); ``events``: the
    engine's ``Callback`` class, whose methods are no-ops."""
    cfg, task = engine.config, engine.task
    check_compile_options(cfg, engine.device)
    if not cfg.compile:
        return None
    if engine.context is not None or not hasattr(task, "loss_step"):
        if cfg.cuda_graphs:
            raise ValueError("--cuda-graphs needs the whole-step compile of a one-process "
                             "classification run")
        engine.log("note: --compile compiles the forward pass only (the whole step is "
                   "compiled for one-process classification runs)")
        return None
    listeners = (task, *task.criterion.modules(), *engine.callbacks)
    for listener in listeners:
        for event in IN_GRAPH_EVENTS:
            method = getattr(type(listener), event, None)
            if callable(method) and method is not getattr(events, event):
                raise ValueError(f"--compile: {type(listener).__name__}.{event} would run inside "
                                 f"the compiled step; run without --compile")
    for part in task.criterion.modules():
        problem = getattr(type(part), "whole_step_problem", None)
        if problem:
            raise ValueError(f"--compile: {problem}; run without --compile")
    for loss in static_isda_losses(task.criterion, engine.log):
        loss.static_shapes = True
    return CompiledStep(task, engine.optimizer, cuda_graphs=cfg.cuda_graphs, log=engine.log)


def static_isda_losses(criterion: torch.nn.Module, log: Any) -> list[ISDALoss]:
    """The ISDA losses of ``criterion`` that must be switched to the static path for one
    graph (logged); ``ValueError`` when one cannot take it (statistics too large)."""
    switch = []
    for loss in criterion.modules():
        if not isinstance(loss, ISDALoss) or loss.static_path:
            continue
        est = loss.estimator
        if not est.layout.static_path(loss.validate, "auto", "cuda", est.num_classes,
                                      est.num_features):
            raise ValueError(
                f"--compile: the {loss.kind} ISDA statistics (C = {est.num_classes}, A = "
                f"{est.num_features}) are too large for the static path that one compiled "
                f"graph needs; use --kind diagonal or run without --compile")
        switch.append(loss)
    if switch:
        log(f"note: --compile: ISDA takes the static all-class path on "
            f"{switch[0].estimator.mean.device.type} (one graph, input checks on the device)")
    return switch


class CompiledStep:
    """Forward, criterion, backward and SGD update of one batch as one compiled graph.

    ``task.loss_step(x, y)`` gives the batch's :class:`StepOut` (traced whole);
    ``optimizer`` is the engine's ``torch.optim.SGD``, whose parameters and momentum buffers
    are updated in place. ``cuda_graphs``: ``mode="reduce-overhead"`` (CUDA graphs).

    Runs of one configuration in one process (``isda compare``'s seeds) share the compiled
    graph; each other configuration adds an entry to dynamo's cache of :meth:`step`. When
    the first step of a run finds that cache full (``torch._dynamo.config.recompile_limit``,
    8), dynamo's caches are reset and the step compiled anew, with a note through ``log``.
    """

    def __init__(self, task: Any, optimizer: torch.optim.Optimizer, *, cuda_graphs: bool = False,
                 log: Any = print) -> None:
        for group in optimizer.param_groups:
            if group.get("dampening", 0) != 0 or group.get("maximize", False):
                raise ValueError("--compile supports SGD without dampening and maximize")
        self.task, self.optimizer = task, optimizer
        self.device = task.device
        self.lrs = [torch.tensor(float(g["lr"]), device=self.device) for g in optimizer.param_groups]
        self._lr_values = [float(g["lr"]) for g in optimizer.param_groups]
        options: dict[str, Any] = {"fullgraph": True, "dynamic": False, "backend": COMPILE_BACKEND}
        if cuda_graphs:
            options["mode"] = "reduce-overhead"
        self.cuda_graphs = cuda_graphs
        self.log, self.stepped = log, False
        self.compiled = torch.compile(self.step, **options)

    def __call__(self, batch: Any) -> StepOut:
        """One optimization step of ``batch`` (eagerly moved to the device)."""
        x, y = self.task.to_device(*batch)
        params, momenta, hyper = self._state()
        if self.cuda_graphs:  # a new iteration: the previous replay's outputs are consumed
            torch.compiler.cudagraph_mark_step_begin()
        try:
            loss, n, logs = self._run_compiled(x, y, params, momenta, hyper)
        except torch._dynamo.exc.TorchDynamoException as err:  # before it ran: nothing changed
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ValueError(f"--compile: the training step does not compile as one graph "
                             f"({reason}); run without --compile") from err
        self.stepped = True
        self.optimizer._opt_called = True  # stepped: what the lr scheduler checks (no warning)
        return StepOut(loss, n, logs)

    def _run_compiled(self, x: Tensor, y: Tensor, params: list, momenta: list, hyper: tuple
                      ) -> tuple[Tensor, int, dict[str, Tensor]]:
        """The compiled step; on a run's first step, once, a full dynamo cache is reset."""
        try:
            with torch._dynamo.config.patch(trace_autograd_ops=True):
                return self.compiled(x, y, params, momenta, self.lrs, hyper)
        except Exception as err:
            if self.stepped or _RECOMPILE_LIMIT_HIT is None \
                    or not isinstance(err, _RECOMPILE_LIMIT_HIT):
                raise
        limit = torch._dynamo.config.recompile_limit
        self.log(f"note: --compile: this process has compiled the training step for {limit} "
                 f"other configurations (torch._dynamo.config.recompile_limit); dynamo's "
                 f"caches were reset and this run compiles its step anew")
        torch._dynamo.reset()
        with torch._dynamo.config.patch(trace_autograd_ops=True):
            return self.compiled(x, y, params, momenta, self.lrs, hyper)

    def _state(self) -> tuple[list, list, tuple]:
        """The groups' trainable parameters, momentum buffers (made, as zeros, where the
        optimizer has none yet) and hyper-parameters; the lr tensors refreshed."""
        params, momenta, hyper = [], [], []
        for i, group in enumerate(self.optimizer.param_groups):
            if float(group["lr"]) != self._lr_values[i]:  # a schedule step: no recompilation
                self._lr_values[i] = float(group["lr"])
                self.lrs[i].fill_(self._lr_values[i])
            mine = [p for p in group["params"] if p.requires_grad]
            params.append(mine)
            if group["momentum"] != 0:
                for p in mine:
                    state = self.optimizer.state[p]
                    if state.get("momentum_buffer") is None:
                        state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    if self.cuda_graphs:  # updated in place by the captured graph
                        torch._dynamo.mark_static_address(state["momentum_buffer"])
                momenta.append([self.optimizer.state[p]["momentum_buffer"] for p in mine])
            else:
                momenta.append([])
            hyper.append((float(group["momentum"]), float(group["weight_decay"]),
                          bool(group["nesterov"])))
        return params, momenta, tuple(hyper)

    def step(self, x: Tensor, y: Tensor, params: list, momenta: list, lrs: list, hyper: tuple
             ) -> tuple[Tensor, int, dict[str, Tensor]]:
        """The traced step: returns the detached loss, the samples and the device logs."""
        out = self.task.loss_step(x, y)
        flat = [p for group in params for p in group]
        grads = torch.autograd.grad(out.loss if out.backward is None else out.backward, flat,
                                    allow_unused=True)
        with torch.no_grad():
            start = 0
            for group, bufs, lr, (momentum, weight_decay, nesterov) in zip(params, momenta, lrs, hyper):
                mine = grads[start:start + len(group)]
                start += len(group)
                used = [k for k, g in enumerate(mine) if g is not None]  # as torch.optim skips
                sgd_update([group[k] for k in used], [mine[k] for k in used],
                           [bufs[k] for k in used] if bufs else [], lr, momentum=momentum,
                           weight_decay=weight_decay, nesterov=nesterov)
        return out.loss.detach(), out.n, {k: v.detach() for k, v in out.logs.items()}
