"""Data parallelism for the engine: ``torchrun --nproc-per-node K -m torch_isda.train ...``.

The user's side (global batch, ``--isda-sync``, ``--sync-bn``, backends): docs/training.md.
Every rank keeps its contiguous slice of each global batch (:class:`GlobalBatchShards`);
uneven last batches are weighted so that the averaged gradient is that of the global mean,
and one smaller than ``K`` is skipped. Gradients are averaged by DDP (classification) or
:func:`average_gradients`. Checkpoints hold every rank's RNG state and need the same world
size on resume.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .config import TrainConfig

__all__ = ["USER_ERRORS", "GlobalBatchShards", "TrainForward", "average_gradients",
           "check_distributed_config", "init_distributed", "mirrored", "resolve_device",
           "shard_bounds"]

#: Default collective timeout (seconds) per backend.
DEFAULT_TIMEOUT = {"gloo": 300.0, "nccl": 1800.0}
_TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
#: Errors a user can fix; identical on every rank, reported by rank 0 only.
USER_ERRORS = {"ValueError": ValueError, "FileNotFoundError": FileNotFoundError,
               "FileExistsError": FileExistsError}


def resolve_device(spec: str) -> torch.device:
    """``"auto"``: CUDA if available, else CPU; anything else is passed to
    :class:`torch.device` (a clear error if CUDA is requested but unavailable)."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError as err:
        raise ValueError(f"invalid device {spec!r}: {err}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {spec!r} requested but CUDA is not available; use --device cpu "
                         f"or --device auto")
    return device

# ---------------------------------------------------------------------------- process group


def launched_by_torchrun() -> bool:
    """True in a process started by torchrun or a launcher that sets its environment."""
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


def mirrored(err: BaseException) -> BaseException:
    """Mark an error that every rank raises identically (only rank 0 reports it)."""
    err.torch_isda_mirrored = True  # type: ignore[attr-defined]
    return err


def _rank_device(spec: str, local_rank: int, local_world: int) -> torch.device:
    """The device of a rank: ``auto``/``cuda`` -> ``cuda:LOCAL_RANK`` when CUDA is used."""
    device = resolve_device(spec)
    if spec in ("auto", "cuda") and device.type == "cuda":
        count = torch.cuda.device_count()
        if local_rank >= count:
            raise ValueError(f"local rank {local_rank} has no GPU: only {count} visible; start "
                             f"at most {count} processes per node or use --device cpu")
        return torch.device("cuda", local_rank)
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
    if config.semi not in (None, "none") and world_size >= 1:
        for name in ("labeled_batch_size", "unlabeled_batch_size"):
            value = getattr(config, name, None)
            if value is not None and int(value) % world_size:
                problems.append(f"the world size {world_size} does not divide --"
                                f"{name.replace('_', '-')} {value} (a global batch, split evenly "
                                f"over the ranks)")
    if problems:
        raise ValueError("invalid distributed configuration: " + "; ".join(problems))


def init_distributed(config: TrainConfig) -> DistributedContext:
    """Join the default process group for ``config`` (created from the torchrun environment
    with ``dist_backend`` and ``dist_timeout``), or reuse one already initialized (e.g. by
    :func:`torch.multiprocessing.spawn`)."""
    if not dist.is_available():
        raise ValueError("torch.distributed is not available in this torch build")
    initialized = dist.is_initialized()
    if initialized:
        rank, world = dist.get_rank(), dist.get_world_size()
    else:
        missing = [name for name in _TORCHRUN_ENV if name not in os.environ]
        if missing:
            raise ValueError(
                f"not started by torchrun (missing environment variables {', '.join(missing)}); "
                f"launch with 'torchrun --nproc-per-node K -m torch_isda.train ...' or "
                f"'isda train --nproc K ...'")
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    device = _rank_device(config.device, local_rank, local_world)
    if initialized:
        return DistributedContext(rank, world, local_rank, device, str(dist.get_backend()), False)
    backend = choose_backend(config.dist_backend, device)
    seconds = float(config.dist_timeout) if config.dist_timeout else DEFAULT_TIMEOUT[backend]
    if device.type == "cuda":
        torch.cuda.set_device(device)
    kwargs: dict[str, Any] = {"device_id": device} if backend == "nccl" else {}
    dist.init_process_group(backend, rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=seconds), **kwargs)
    return DistributedContext(rank, world, local_rank, device, backend, True)


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
    each batch, :attr:`global_size` and :attr:`local_size` hold its sizes.
    """

    def __init__(self, batches: Any, rank: int, world_size: int) -> None:
        self.batches, self.rank, self.world_size = batches, int(rank), int(world_size)
        self.global_size = self.local_size = 0

    def __len__(self) -> int:
        n = getattr(self.batches, "num_samples", None)
        bs = getattr(self.batches, "batch_size", None)
        if n is None or bs is None or getattr(self.batches, "drop_last", False):
            return len(self.batches)
        last = int(n) - (len(self.batches) - 1) * int(bs)  # the size of the last batch
        return len(self.batches) - (1 if last < self.world_size else 0)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        for x, y in self.batches:
            n = int(y.shape[0])
            if n < self.world_size:
                continue
            lo, hi = shard_bounds(n, self.rank, self.world_size)
            self.global_size, self.local_size = n, hi - lo
            yield x[lo:hi], y[lo:hi]


class CountingLoader:
    """A per-rank DataLoader (DistributedSampler) that records the batch sizes like
    :class:`GlobalBatchShards` (every rank's batch has the same size: ``drop_last``)."""

    def __init__(self, loader: Any, world_size: int) -> None:
        self.loader, self.world_size = loader, int(world_size)
        self.global_size = self.local_size = 0

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Any]:
        for x, y in self.loader:
            self.local_size = int(y.shape[0])
            self.global_size = self.local_size * self.world_size
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


def to_cpu(obj: Any) -> Any:
    if isinstance(obj, Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_cpu(v) for v in obj)
    return obj


def rank_seed(seed: int, rank: int) -> int:
    """A distinct seed per rank for model-internal randomness (rank 0 keeps ``seed``)."""
    return (int(seed) + 0x9E3779B97F4A7C15 * int(rank)) % (2**63)


# ---------------------------------------------------------------------------- collectives


def all_gather_cat(tensor: Tensor) -> Tensor:
    """Concatenate the equally shaped ``tensor`` of every rank in rank order."""
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


def average_gradients(params: Iterable[Tensor], world_size: int) -> None:
    """Replace every gradient by its mean over ranks (one flat all-reduce)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat.div_(world_size)
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


@torch.no_grad()
def broadcast_buffers(module: nn.Module) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics)."""
    for buffer in module.buffers():
        dist.broadcast(buffer, 0)


def decide_on_rank0(fn: Callable[[], Any], context: DistributedContext) -> Any:
    """Run ``fn`` on rank 0 and give its value (or its user error) to every rank."""
    payload: list[Any] = [None]
    if context.is_main:
        try:
            payload = [("ok", fn())]
        except tuple(USER_ERRORS.values()) as err:
            payload = [("error", type(err).__name__, str(err))]
            if context.world_size > 1:
                dist.broadcast_object_list(payload, src=0)
            raise mirrored(err)
    if context.world_size > 1:
        dist.broadcast_object_list(payload, src=0)
    if payload[0][0] == "error":
        raise mirrored(USER_ERRORS[payload[0][1]](payload[0][2]))
    return payload[0][1]
