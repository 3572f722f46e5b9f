"""MetaSAug under torch.distributed (gloo, 2 CPU ranks): every rank draws the same global
meta batch and keeps its slice, and the covariance gradient is averaged over the ranks, so
all ranks apply the same meta update."""

from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from torch_isda.baselines.metasaug import MetaSAugLoss, meta_covariance_step
from torch_isda.train.criteria.long_tailed import MetaBatchSource, mean_over_ranks
from test_metasaug import TinyNet

WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _inputs():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 3, generator=g)
    y = torch.arange(8) % 3
    meta_x = torch.randn(12, 3, generator=g)
    meta_y = torch.arange(12) % 3
    cov = torch.randn(3, 2, 2, generator=g)
    return x, y, meta_x, meta_y, cov @ cov.transpose(1, 2)


def _meta_step(rank: int, world: int, grad_hook=None):
    """Rank ``rank``'s meta step: its half of the training batch, its slice of the global
    meta batch (drawn alike on every rank)."""
    torch.manual_seed(0)
    net = TinyNet()
    loss = MetaSAugLoss(2, 3, kind="full", counts=[40, 9, 3], sync=world > 1)
    loss.set_progress(0.9)
    x, y, meta_x, meta_y, cov = _inputs()
    source = MetaBatchSource(meta_x, meta_y, 10, None, seed=5, learning_rate=lambda: 0.1,
                             rank=rank, world_size=world)
    images, labels = source.next_batch()
    half = slice(rank * 4, rank * 4 + 4)
    step = meta_covariance_step(net, "fc.weight", loss.augmented_loss, x[half], y[half],
                                images, labels, cov, 0.1, 0.1, grad_hook)
    return step, labels


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        step, labels = _meta_step(rank, world, mean_over_ranks)
        torch.save({"covariance": step.covariance, "labels": labels}, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_meta_update_is_the_same_on_every_rank(tmp_path):
    mp.spawn(_worker, args=(WORLD, _free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    assert torch.equal(ranks[0]["covariance"], ranks[1]["covariance"])
    # the slices of one global meta batch: together 10 distinct images
    local = [_meta_step(r, WORLD) for r in range(WORLD)]
    assert all(torch.equal(ranks[r]["labels"], local[r][1]) for r in range(WORLD))
    assert len(local[0][1]) + len(local[1][1]) == 10
    mean_gradient = (local[0][0].gradient + local[1][0].gradient) / 2
    cov = _inputs()[4]
    assert torch.allclose(ranks[0]["covariance"], cov - 0.1 * mean_gradient, atol=1e-6)
    assert not torch.allclose(local[0][0].gradient, local[1][0].gradient)
