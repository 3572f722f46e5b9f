"""Data-parallel training: ``torchrun --nproc-per-node K -m torch_isda.train ...``.

Each of the ``K`` processes (ranks) runs a :class:`DistributedTrainer`, the single-process
:class:`~torch_isda.train.trainer.Trainer` with these changes:

* **Process group** from the torchrun environment (``RANK``, ``WORLD_SIZE``,
  ``MASTER_ADDR``/``MASTER_PORT``, ``LOCAL_RANK``): NCCL on CUDA, gloo on the CPU
  (``--dist-backend``), with a timeout (``--dist-timeout``, default 300 s with gloo, 1800 s
  with NCCL) so that a stuck collective ends the run instead of hanging it. With
  ``--device auto``/``cuda`` rank ``r`` uses ``cuda:LOCAL_RANK``.
* **Global batches.** ``--batch-size`` is the *global* batch (the paper's batch sizes are
  global); each rank processes ``batch_size / K`` samples of it and ``K`` must divide
  ``batch_size``. For the device-resident datasets every rank draws the same permutation
  and the same augmentation from the same seeded generator, augments the whole global
  batch and keeps its contiguous slice (rank ``r`` of ``K``), so a ``K``-rank run sees
  exactly the global batches of a 1-process run. A last partial batch is split as evenly
  as possible and the loss of each rank is weighted by ``K n_r / n`` so that the averaged
  gradient is the gradient of the global mean loss; a last batch with fewer than ``K``
  samples is skipped (rank 0 says so). ``imagefolder`` uses a
  :class:`~torch.utils.data.distributed.DistributedSampler` (its own order).
* **DistributedDataParallel.** The trainer calls ``model.forward_features``, the
  criterion's ``transform_features`` and ``model.get_classifier()`` separately; here they
  run as one module (:class:`TrainForward`, returning ``(features, logits)``) wrapped in
  DDP, so DDP's reducer sees one forward and averages every model gradient exactly once,
  including the ISDA term's gradient with respect to the classifier weight (which the
  loss reads directly: its gradient accumulates into the same parameter before DDP's hook
  fires). Trainable criterion parameters (e.g. the centers of ``center``) are not part of
  the DDP module (the criterion's buffers, such as the ISDA covariances, must not be
  broadcast); their gradients are averaged by a post-accumulate-grad hook.
* **ISDA statistics.** :class:`~torch_isda.CovarianceEstimator` all-gathers every batch
  (``--isda-sync on``, default): all ranks hold identical statistics, equal to one process
  seeing the global batches. ``--isda-sync off`` keeps per-rank statistics, the behaviour
  of the official code under DataParallel-style multi-process training.
* **BatchNorm.** Without ``--sync-bn`` each rank normalizes with its shard's statistics and
  DDP broadcasts rank 0's running statistics at every forward (``broadcast_buffers``), the
  usual DDP behaviour. ``--sync-bn`` normalizes with the global batch statistics
  (:class:`torch.nn.SyncBatchNorm` on CUDA, :class:`SyncBatchNorm` of this module
  elsewhere, e.g. CPU/gloo, where torch's does not run); with it a ``K``-rank run equals a
  1-process run up to float rounding.
* **Rank 0** alone writes ``metrics.*``, checkpoints, ``config.json``, ``result.json``,
  logs and progress bars. Training and test metrics are global (all-reduced).
  Evaluation is sharded: each rank evaluates a contiguous slice of the test set with rank
  0's BatchNorm statistics (broadcast first) and the sums are all-reduced.
* **Checkpoints** hold rank 0's model/optimizer/criterion plus every rank's RNG states
  (and criterion state with ``--isda-sync off``) and the world size; ``--resume`` requires
  the same world size and reproduces the uninterrupted run.

Model-internal randomness (dropout, feature dropout, DisturbLabel) draws from each rank's
torch generator, seeded differently per rank after the (identical) model initialization.

For tests: with ``TORCH_ISDA_TEST_FAIL_RANK=r`` rank ``r`` raises at training step
``TORCH_ISDA_TEST_FAIL_STEP`` (default 0), to check that a failing rank ends the run.
"""

from __future__ import annotations

import dataclasses
import datetime
import inspect
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Optional

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..estimator import CovarianceEstimator
from .checkpoint import CHECKPOINT_NAME, atomic_write_json, load_checkpoint, save_checkpoint
from .config import TrainConfig
from .metrics import write_metrics
from .presets import resolve_config
from .seeding import deterministic_mode, num_threads, seed_everything, set_rng_state
from .trainer import (
    RESULT_NAME,
    Trainer,
    config_differences,
    prepare_run_dir,
    resolve_device,
)

__all__ = [
    "DEFAULT_TIMEOUT",
    "DistributedContext",
    "DistributedTrainer",
    "GlobalBatchShards",
    "SyncBatchNorm",
    "TrainForward",
    "check_distributed_config",
    "convert_sync_batchnorm",
    "init_distributed",
    "launched_by_torchrun",
    "run_cli",
    "shard_bounds",
    "train_distributed",
]

#: Default collective timeout (seconds) per backend.
DEFAULT_TIMEOUT = {"gloo": 300.0, "nccl": 1800.0}
FAIL_RANK_ENV = "TORCH_ISDA_TEST_FAIL_RANK"
FAIL_STEP_ENV = "TORCH_ISDA_TEST_FAIL_STEP"
_TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
_USER_ERRORS = {"ValueError": ValueError, "FileNotFoundError": FileNotFoundError,
                "FileExistsError": FileExistsError}


# ---------------------------------------------------------------------------- process group


def launched_by_torchrun() -> bool:
    """True in a process started by torchrun (``torch.distributed.run``) or an equivalent
    launcher that sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
    ``MASTER_PORT``."""
    return all(name in os.environ for name in _TORCHRUN_ENV)


@dataclasses.dataclass(frozen=True)
class DistributedContext:
    """Where this process stands in the process group."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str
    created: bool  # init_distributed initialized the group (and destroys it at the end)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _mirrored(err: BaseException) -> BaseException:
    """Mark an error that every rank raises identically (only rank 0 reports it)."""
    err.torch_isda_mirrored = True  # type: ignore[attr-defined]
    return err


def _rank_device(spec: str, local_rank: int, local_world: int) -> torch.device:
    """The device of a rank: ``auto``/``cuda`` -> ``cuda:LOCAL_RANK`` when CUDA is used."""
    if spec in ("auto", "cuda"):
        device = resolve_device(spec)
        if device.type != "cuda":
            return device
        count = torch.cuda.device_count()
        if local_rank >= count:
            raise ValueError(f"local rank {local_rank} has no GPU: only {count} visible; start "
                             f"at most {count} processes per node or use --device cpu")
        return torch.device("cuda", local_rank)
    device = resolve_device(spec)
    if device.type == "cuda" and device.index is not None and local_world > 1:
        raise ValueError(f"--device {spec} pins every rank to one GPU; use --device cuda (rank r "
                         f"uses cuda:LOCAL_RANK) or --device cpu")
    return device


def choose_backend(spec: str, device: torch.device) -> str:
    """``auto``: NCCL for CUDA devices, gloo otherwise; ``ValueError`` if unavailable."""
    if not dist.is_available():
        raise ValueError("torch.distributed is not available in this torch build; "
                         "multi-process training needs it")
    backend = spec if spec != "auto" else ("nccl" if device.type == "cuda" else "gloo")
    available = {"gloo": dist.is_gloo_available(), "nccl": dist.is_nccl_available()}
    if backend not in available:
        raise ValueError(f"unknown distributed backend {backend!r}; use auto, nccl or gloo")
    if not available[backend]:
        other = "gloo" if backend == "nccl" else "nccl"
        raise ValueError(f"the {backend} backend is not available in this torch build "
                         f"(torch {torch.__version__}); use --dist-backend {other} "
                         f"(nccl needs CUDA, gloo works on the CPU)")
    if backend == "nccl" and device.type != "cuda":
        raise ValueError(f"the nccl backend needs CUDA devices but the run uses {device}; use "
                         f"--dist-backend gloo (or auto) for CPU training")
    return backend


def check_distributed_config(config: TrainConfig, world_size: int) -> None:
    """``ValueError`` (with the fix) for what the distributed harness cannot run:
    a world size that does not divide the global batch, bad timeouts, unsupported modes."""
    problems = []
    if world_size < 1:
        problems.append(f"the number of processes must be >= 1; got {world_size}")
    batch = config.batch_size
    if batch is not None and world_size >= 1 and int(batch) % world_size:
        lower = int(batch) // world_size * world_size
        suggestion = ", ".join(str(b) for b in (lower, lower + world_size) if b > 0)
        problems.append(
            f"the world size {world_size} does not divide the batch size {batch} (--batch-size is "
            f"the global batch, split evenly over the ranks); use a multiple of {world_size}, "
            f"e.g. {suggestion}")
    if config.dist_timeout is not None and not float(config.dist_timeout) > 0:
        problems.append(f"dist_timeout must be a positive number of seconds; got "
                        f"{config.dist_timeout}")
    if getattr(config, "semi", "none") not in (None, "none"):
        problems.append("semi-supervised training (--semi) is not supported by the "
                        "distributed harness yet; run it in one process")
    if getattr(config, "task", None) == "segmentation":
        problems.append("segmentation training is not supported by the distributed harness "
                        "yet; run it in one process")
    if problems:
        raise ValueError("invalid distributed configuration: " + "; ".join(problems))


def init_distributed(config: TrainConfig) -> DistributedContext:
    """Join (or reuse) the default process group for ``config``.

    An already initialized group (e.g. from :func:`torch.multiprocessing.spawn`) is reused;
    otherwise the torchrun environment variables are required and the group is created
    with the backend of ``config.dist_backend`` and the timeout ``config.dist_timeout``.
    """
    if not dist.is_available():
        raise ValueError("torch.distributed is not available in this torch build")
    if dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        local_rank = int(os.environ.get("LOCAL_RANK", rank))
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
        device = _rank_device(config.device, local_rank, local_world)
        return DistributedContext(rank, world, local_rank, device, str(dist.get_backend()), False)
    missing = [name for name in _TORCHRUN_ENV if name not in os.environ]
    if missing:
        raise ValueError(
            f"not started by torchrun (missing environment variables {', '.join(missing)}); "
            f"launch with 'torchrun --nproc-per-node K -m torch_isda.train ...' or "
            f"'isda train --nproc K ...'")
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ["LOCAL_RANK"])
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    device = _rank_device(config.device, local_rank, local_world)
    backend = choose_backend(config.dist_backend, device)
    seconds = float(config.dist_timeout) if config.dist_timeout else DEFAULT_TIMEOUT[backend]
    if device.type == "cuda":
        torch.cuda.set_device(device)
    kwargs: dict[str, Any] = {}
    if backend == "nccl":
        kwargs["device_id"] = device
    dist.init_process_group(backend, rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=seconds), **kwargs)
    return DistributedContext(rank, world, local_rank, device, backend, True)


# ---------------------------------------------------------------------------- SyncBatchNorm


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
                self.num_batches_tracked.add_(1)
                factor = (1.0 / float(self.num_batches_tracked) if self.momentum is None
                          else self.momentum)
                total = float(n)
                unbiased = var.detach() * (total / max(total - 1.0, 1.0))
                self.running_mean.mul_(1 - factor).add_(mean.detach().to(self.running_mean.dtype),
                                                        alpha=factor)
                self.running_var.mul_(1 - factor).add_(unbiased.to(self.running_var.dtype),
                                                       alpha=factor)
        return out.to(input.dtype)


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


# ---------------------------------------------------------------------------- data sharding


def shard_bounds(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """``[lo, hi)`` of rank ``rank``'s contiguous share of ``n`` items: sizes differ by at
    most one, earlier ranks get the extra items (``n = 10, K = 4``: 3, 3, 2, 2)."""
    base, extra = divmod(int(n), int(world_size))
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (1 if rank < extra else 0)


class GlobalBatchShards:
    """Iterate rank ``rank``'s contiguous slice of every global batch of ``batches``.

    ``batches`` yields global ``(x, y)`` batches identically on every rank (same seeded
    generator); a global batch smaller than ``world_size`` is skipped on all ranks. After
    each batch, :attr:`global_size` and :attr:`local_size` hold its sizes; :attr:`seen`
    counts this rank's samples in the current pass.
    """

    def __init__(self, batches: Any, rank: int, world_size: int) -> None:
        self.batches, self.rank, self.world_size = batches, int(rank), int(world_size)
        self.global_size = self.local_size = self.seen = self.skipped = 0

    def _last_batch(self) -> Optional[int]:
        n = getattr(self.batches, "num_samples", None)
        bs = getattr(self.batches, "batch_size", None)
        if n is None or bs is None or getattr(self.batches, "drop_last", False):
            return None
        return int(n) - (len(self.batches) - 1) * int(bs)

    def __len__(self) -> int:
        last = self._last_batch()
        return len(self.batches) - (1 if last is not None and last < self.world_size else 0)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        self.seen = self.skipped = 0
        for x, y in self.batches:
            n = int(y.shape[0])
            if n < self.world_size:
                self.skipped += n
                continue
            lo, hi = shard_bounds(n, self.rank, self.world_size)
            self.global_size, self.local_size = n, hi - lo
            self.seen += hi - lo
            yield x[lo:hi], y[lo:hi]


class _CountingLoader:
    """A per-rank DataLoader (DistributedSampler) that records the batch sizes like
    :class:`GlobalBatchShards` (every rank's batch has the same size: ``drop_last``)."""

    def __init__(self, loader: Any, world_size: int) -> None:
        self.loader, self.world_size = loader, int(world_size)
        self.global_size = self.local_size = self.seen = self.skipped = 0

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Any]:
        self.seen = 0
        for x, y in self.loader:
            self.local_size = int(y.shape[0])
            self.global_size = self.local_size * self.world_size
            self.seen += self.local_size
            yield x, y


# ---------------------------------------------------------------------------- the DDP module


class TrainForward(nn.Module):
    """``x -> (features, logits)`` of a training step as one module, for DDP.

    ``features = transform_features(features_fn(x))``, ``logits = model.get_classifier()
    (features)``. Only ``model`` is a submodule (its parameters and buffers are what DDP
    synchronizes); ``features_fn`` (``model.forward_features``, possibly compiled) and
    ``transform_features`` (the criterion's hook) are plain callables.
    """

    def __init__(self, model: nn.Module, features_fn: Callable[[Tensor], Tensor],
                 transform_features: Callable[[Tensor], Tensor]) -> None:
        super().__init__()
        self.model = model
        self.features_fn = features_fn
        self.transform_features = transform_features

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        features = self.transform_features(self.features_fn(x))
        return features, self.model.get_classifier()(features)


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def _rank_seed(seed: int, rank: int) -> int:
    """A distinct seed per rank for model-internal randomness (rank 0 keeps ``seed``)."""
    return (int(seed) + 0x9E3779B97F4A7C15 * int(rank)) % (2**63)


# ---------------------------------------------------------------------------- trainer


class DistributedTrainer(Trainer):
    """:class:`~torch_isda.train.trainer.Trainer` for one rank of a data-parallel run (see
    the module docstring). Build it after :func:`init_distributed`; most users call
    :func:`train_distributed` (or launch ``torchrun -m torch_isda.train``).
    """

    def __init__(self, config: TrainConfig, context: DistributedContext, **kwargs: Any) -> None:
        kwargs["quiet"] = bool(kwargs.get("quiet", False)) or not context.is_main
        super().__init__(config, **kwargs)
        self.context = context
        self.rank, self.world_size = context.rank, context.world_size
        self.device = context.device
        self.isda_sync = config.isda_sync == "on"
        self._step = 0
        fail_rank = os.environ.get(FAIL_RANK_ENV)
        self._fail_step = (int(os.environ.get(FAIL_STEP_ENV, "0"))
                           if fail_rank is not None and int(fail_rank) == self.rank else None)

    # ------------------------------------------------------------------ setup

    def build(self) -> None:
        """The single-process build, then the per-rank pieces: sharded data, SyncBatchNorm
        (``--sync-bn``), the DDP module, gradient averaging of criterion parameters, ISDA
        synchronization (``--isda-sync``) and a per-rank torch seed."""
        super().build()
        ctx, cfg = self.context, self.config
        if cfg.sync_bn:
            converted = convert_sync_batchnorm(self.model, self.device)
            if converted is not self.model:  # pragma: no cover - a bare BatchNorm "model"
                raise ValueError("--sync-bn: the model itself is a BatchNorm layer")
        for module in self.criterion.modules():
            if isinstance(module, CovarianceEstimator):
                module.sync = self.isda_sync
        from torch.nn.parallel import DistributedDataParallel

        forward = TrainForward(self.model, self.features_fn, self.criterion.transform_features)
        # without --sync-bn, every forward broadcasts rank 0's BatchNorm statistics
        ddp_args = inspect.signature(DistributedDataParallel).parameters
        sync_buffers = ("forward_sync_buffers" if "forward_sync_buffers" in ddp_args
                        else "broadcast_buffers")  # the name before torch 2.13
        self.ddp = DistributedDataParallel(
            forward, device_ids=[self.device.index] if self.device.type == "cuda" else None,
            **{sync_buffers: not cfg.sync_bn})
        for p in self.criterion.parameters():
            if p.requires_grad:
                p.register_post_accumulate_grad_hook(self._average_grad)
        if ctx.rank > 0:  # model init above is identical on all ranks; now decorrelate
            seed_everything(_rank_seed(cfg.seed, ctx.rank))

    def _average_grad(self, param: Tensor) -> None:
        if param.grad is not None:
            dist.all_reduce(param.grad)
            param.grad.div_(self.world_size)

    def _build_data(self) -> None:
        cfg, ctx = self.config, self.context
        if cfg.dataset == "imagefolder":  # per-rank loaders: DistributedSampler / ShardSampler
            from ..data import create_imagefolder_loaders

            loaders = create_imagefolder_loaders(
                cfg.data_dir, cfg.batch_size // ctx.world_size, cfg.workers, seed=cfg.seed,
                distributed=True, rank=ctx.rank, world_size=ctx.world_size,
                val_batch_size=-(-cfg.eval_batch_size // ctx.world_size), **cfg.dataset_kwargs)
            if cfg.augment not in (None, "none"):
                self.log(f"note: --augment {cfg.augment} is ignored for imagefolder "
                         f"(RandomResizedCrop + flip are used)")
            self.data_generator = loaders.train.generator
            if self.data_generator is not None:  # per-rank augmentation streams in the workers
                self.data_generator.manual_seed(_rank_seed(cfg.seed, ctx.rank))
            self.train_batches = _CountingLoader(loaders.train, ctx.world_size)
            self.test_batches = loaders.val
            self.test_count = len(loaders.val.sampler)
            self.num_classes = loaders.data.num_classes
            self.image_size = tuple(loaders.data.image_size)
            self.augment = "random_resized_crop_flip"
            self.train_size, self.test_size = len(loaders.data.train), len(loaders.data.val)
            return
        super()._build_data()  # global iterators, identical on every rank
        from ..data import DeviceBatchIterator

        train = self.train_batches
        self.train_batches = GlobalBatchShards(train, ctx.rank, ctx.world_size)
        skipped = train.num_samples % train.batch_size
        if 0 < skipped < ctx.world_size and not train.drop_last:
            self.log(f"note: the last batch of each epoch ({skipped} samples) is smaller than "
                     f"the world size {ctx.world_size} and is skipped")
        test = self.test_batches
        lo, hi = shard_bounds(test.num_samples, ctx.rank, ctx.world_size)
        per_rank = max(1, -(-cfg.eval_batch_size // ctx.world_size))
        self.test_batches = DeviceBatchIterator(test.images[lo:hi], test.labels[lo:hi], per_rank,
                                                shuffle=False, transform=test.transform)
        self.test_count = hi - lo

    # ------------------------------------------------------------------ steps

    def forward_train(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Features and logits through DDP (one forward for the reducer)."""
        if self._fail_step is not None and self._step >= self._fail_step:
            raise RuntimeError(f"deliberate failure of rank {self.rank} at step {self._step} "
                               f"({FAIL_RANK_ENV})")
        self._step += 1
        return self.ddp(x)

    def loss_for_backward(self, loss: Tensor) -> Tensor:
        """Weight ``K n_r / n`` for uneven shards, so DDP's average is the global mean."""
        batches = self.train_batches
        if batches.local_size * self.world_size == batches.global_size:
            return loss
        return loss * (self.world_size * batches.local_size / batches.global_size)

    def _all_sum(self, values: list[float]) -> list[float]:
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()

    def train_epoch(self, epoch: int) -> tuple[float, float]:
        """One epoch on this rank's shards; returns the global (loss, error %)."""
        sampler = getattr(getattr(self.train_batches, "loader", None), "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        loss, error = super().train_epoch(epoch)
        n = self.train_batches.seen
        total_loss, wrong, seen = self._all_sum([loss * n, error / 100.0 * n, float(n)])
        return total_loss / seen, 100.0 * round(wrong) / seen

    @torch.no_grad()
    def evaluate(self) -> tuple[float, float]:
        """Sharded evaluation with rank 0's model buffers; global (loss, error %)."""
        if not self.config.sync_bn:  # BN running statistics: rank 0's (what is saved)
            for buffer in self.model.buffers():
                dist.broadcast(buffer, 0)
        n = self.test_count
        loss, error = super().evaluate() if n > 0 else (0.0, 0.0)
        total_loss, wrong, seen = self._all_sum([loss * n, error / 100.0 * n, float(n)])
        if seen == 0:
            raise ValueError("the test set is empty")
        return total_loss / seen, 100.0 * round(wrong) / seen

    # ------------------------------------------------------------------ state

    def save(self) -> None:
        """Gather every rank's RNG state (and, with ``--isda-sync off``, criterion state)
        to rank 0, which writes the checkpoint."""
        state = self.state_dict()
        mine = {"rng": state["rng"]}
        if not self.isda_sync:
            mine["criterion"] = state["criterion"]
        gathered: Optional[list] = [None] * self.world_size if self.is_main else None
        dist.gather_object(_to_cpu(mine), gathered, dst=0)
        if self.is_main:
            state["rank_states"] = gathered
            save_checkpoint(state, self.out / CHECKPOINT_NAME)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)  # checks the world size
        ranks = state.get("rank_states")
        if ranks:
            mine = ranks[self.rank]
            set_rng_state(mine["rng"], {"data": self.data_generator})
            if "criterion" in mine:
                self.criterion.load_state_dict(mine["criterion"])

    def result(self) -> dict[str, Any]:
        return {**super().result(), "world_size": self.world_size,
                "dist_backend": self.context.backend}

    def write_config(self) -> None:
        if self.is_main:
            super().write_config()


# ---------------------------------------------------------------------------- entry points


def _decide_on_rank0(fn: Callable[[], Any], context: DistributedContext) -> Any:
    """Run ``fn`` on rank 0 and give its value (or its user error) to every rank."""
    payload: list[Any] = [None]
    if context.is_main:
        try:
            payload = [("ok", fn())]
        except tuple(_USER_ERRORS.values()) as err:
            payload = [("error", type(err).__name__, str(err))]
            if context.world_size > 1:
                dist.broadcast_object_list(payload, src=0)
            raise _mirrored(err)
    if context.world_size > 1:
        dist.broadcast_object_list(payload, src=0)
    if payload[0][0] == "error":
        raise _mirrored(_USER_ERRORS[payload[0][1]](payload[0][2]))
    return payload[0][1]


def train_distributed(config: TrainConfig, *, resume: bool = False, force: bool = False,
                      quiet: bool = False, stop_after: Optional[int] = None,
                      log: Optional[Callable[[str], None]] = None, epoch_log: bool = True,
                      callbacks: Sequence[Any] = ()) -> dict[str, Any]:
    """:func:`~torch_isda.train.trainer.train` for one rank of a data-parallel run.

    Call it in every process, under torchrun (the process group is created from its
    environment and destroyed at the end) or with a process group already initialized.
    Same arguments, run-directory rules and return value as ``train`` (every rank returns
    the result; rank 0 alone writes files and messages; ``callbacks`` run on every rank,
    see :attr:`torch_isda.train.Trainer.is_main`). ``config.batch_size`` is global.
    """
    try:  # identical on every rank: rank 0 alone reports these errors
        cfg = resolve_config(config)
        world = (dist.get_world_size() if dist.is_available() and dist.is_initialized()
                 else int(os.environ.get("WORLD_SIZE", "1")))
        check_distributed_config(cfg, world)
        context = init_distributed(cfg)
    except ValueError as err:
        raise _mirrored(err) from None
    try:
        out = Path(cfg.out)
        say = (lambda msg: None) if quiet or not context.is_main else (
            log or (lambda msg: print(msg, flush=True)))
        reused = _decide_on_rank0(
            lambda: prepare_run_dir(cfg, resume=resume, force=force, say=say), context)
        if reused is not None:
            return reused
        if context.is_main:
            out.mkdir(parents=True, exist_ok=True)
        extra = {"callbacks": callbacks} if callbacks else {}  # called on every rank
        trainer = DistributedTrainer(cfg, context, quiet=quiet, log=log, epoch_log=epoch_log,
                                     **extra)
        with deterministic_mode(cfg.deterministic), num_threads(cfg.threads):
            trainer.build()
            if resume and not force:
                state = load_checkpoint(out / CHECKPOINT_NAME)
                diff = config_differences(TrainConfig.from_dict(state["config"]), cfg)
                if diff:
                    trainer.log("resuming with changed settings: " + ", ".join(
                        f"{k} {a!r} -> {b!r}" for k, (a, b) in diff.items()))
                try:
                    trainer.load_state_dict(state)
                except ValueError as err:  # e.g. another world size: identical on all ranks
                    raise _mirrored(err) from None
                if context.is_main:
                    (out / RESULT_NAME).unlink(missing_ok=True)
                    write_metrics(out, trainer.rows)
                trainer.log(f"resumed '{out}' after epoch {trainer.start_epoch}/{cfg.epochs}")
            trainer.write_config()
            per_rank = cfg.batch_size // context.world_size
            trainer.log(
                f"training {cfg.model} on {cfg.dataset} with {cfg.loss} (seed {cfg.seed}, "
                f"{cfg.epochs} epochs, preset {cfg.preset}) on {context.world_size} processes "
                f"({context.backend}, {context.device}; global batch {cfg.batch_size} = "
                f"{context.world_size} x {per_rank}; isda-sync {cfg.isda_sync}, sync-bn "
                f"{'on' if cfg.sync_bn else 'off'}) -> '{out}'")
            finished = trainer.fit(stop_after=stop_after)
        result = trainer.result()
        if not finished:  # the caller reports it (isda train: "stopped after ...")
            return {**result, "status": "stopped", "out": str(out)}
        if context.is_main:
            atomic_write_json(out / RESULT_NAME, result)
        dist.barrier()
        return {**result, "status": "trained", "out": str(out)}
    finally:
        if context.created and dist.is_initialized():
            dist.destroy_process_group()


def run_cli(args: Any, report: Callable[[dict[str, Any]], int]) -> int:
    """``isda train`` in a torchrun worker: train, and on rank 0 ``report`` the result.

    Errors that every rank raises identically are reported by rank 0 only (the other
    ranks exit with status 2 silently).
    """
    from .command_train import build_config

    rank = int(os.environ.get("RANK", "0"))
    try:
        result = train_distributed(build_config(args), resume=args.resume, force=args.force,
                                   quiet=args.quiet, stop_after=args.stop_after)
    except tuple(_USER_ERRORS.values()) as err:
        if rank != 0 and getattr(err, "torch_isda_mirrored", False):
            return 2
        raise
    return report(result) if rank == 0 else 0
