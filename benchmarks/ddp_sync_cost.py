"""Cost per training step of synchronizing the ISDA statistics over ranks.

Multi-process training (``torchrun -m torch_isda.train``, ``--isda-sync on``) makes every
rank's :class:`~torch_isda.CovarianceEstimator` fold the *global* batch. Two ways to get
there, both timed in the same run on ``--world`` gloo ranks (CPU, 127.0.0.1):

* **all-gather the batch** (what :func:`torch_isda.distributed.all_gather_batch` does): a
  tiny size/validation collective, then the ``N/K x A`` features and the ``N/K`` labels of
  every rank; every rank then folds the ``N x A`` global batch itself. Payload per rank:
  ``N/K (A + 1)`` numbers.
* **all-reduce sufficient statistics**: each rank computes its batch's per-class sums
  (``C x A``), sums of outer products (``C x A x A``) and counts (``C``) and the ranks
  all-reduce them (payload ``C (A^2 + A + 1)`` numbers; the merge into the running
  statistics is not timed). Timed: the all-reduce alone, and the local computation of
  the sums of outer products.

Also timed: the estimator update alone (folding the ``N x A`` global batch, no
communication) and the complete synchronized update (all-gather + fold, one call of
``CovarianceEstimator.update``). Times are the median over repetitions, each started
after a barrier, of the slowest rank (a step waits for it).

Default shape: WRN-28-10 on CIFAR-100 (global ``N = 128``, ``A = 640``, ``C = 100``,
full covariances), 2 ranks, 1 thread per rank.

Run: ``OMP_NUM_THREADS=1 python benchmarks/ddp_sync_cost.py`` (``--world``, ``--n``,
``--a``, ``--c``, ``--repeats``). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, os.path.dirname(__file__))
from _measure import markdown_table  # noqa: E402

from torch_isda import CovarianceEstimator  # noqa: E402
from torch_isda.distributed import all_gather_batch  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _timed(fn, repeats: int, warmup: int = 1) -> list[float]:
    for _ in range(warmup):
        dist.barrier()
        fn()
    times = []
    for _ in range(repeats):
        dist.barrier()
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return times


def _sufficient_statistics(x: torch.Tensor, y: torch.Tensor, C: int) -> torch.Tensor:
    """One flat ``C (A^2 + A + 1)`` tensor: per-class sums of outer products ``X_c^T X_c``
    (one batched product over the present classes), sums and counts."""
    A = x.shape[1]
    classes, inverse, counts = torch.unique(y, return_inverse=True, return_counts=True)
    order = torch.argsort(inverse, stable=True)
    inv_sorted = inverse[order]
    pos = torch.arange(y.numel()) - (torch.cumsum(counts, 0) - counts)[inv_sorted]
    block = x.new_zeros(classes.numel(), int(counts.max()), A)
    block[inv_sorted, pos] = x[order]
    flat = x.new_zeros(C * (A * A + A + 1))
    outer = flat[:C * A * A].view(C, A, A)
    outer.index_copy_(0, classes, torch.bmm(block.transpose(1, 2), block))
    flat[C * A * A:C * A * (A + 1)].view(C, A).index_add_(0, y, x)
    flat[C * A * (A + 1):] = torch.bincount(y, minlength=C).to(x.dtype)
    return flat


def _worker(rank: int, world: int, port: int, args: argparse.Namespace, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(args.threads)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    N, A, C = args.n, args.a, args.c
    local = N // world
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(N, A, generator=g)  # the global batch (identical on every rank)
    labels = torch.randint(0, C, (N,), generator=g)
    shard = slice(rank * local, (rank + 1) * local)
    x, y = feats[shard].contiguous(), labels[shard]
    flags = torch.zeros(3, dtype=torch.long)
    est_sync = CovarianceEstimator(A, C, args.kind)
    est_local = CovarianceEstimator(A, C, args.kind, sync=False)
    def local_statistics() -> torch.Tensor:
        if args.kind == "full":
            return _sufficient_statistics(x, y, C)
        return torch.cat([torch.zeros(C, A).index_add_(0, y, x * x).view(-1),  # diagonal
                          torch.zeros(C, A).index_add_(0, y, x).view(-1),
                          torch.bincount(y, minlength=C).float()])

    stats = local_statistics()
    buffer = stats.clone()
    r = args.repeats
    times = {
        "gather": _timed(lambda: all_gather_batch(x, y, flags), r),
        "fold": _timed(lambda: est_local.update(feats, labels), r),
        "synced": _timed(lambda: est_sync.update(x, y), r),
        "allreduce": _timed(lambda: dist.all_reduce(buffer.copy_(stats)), max(3, r // 4)),
        "suffstats": _timed(local_statistics, max(3, r // 4)),
    }
    gathered = [None] * world
    dist.all_gather_object(gathered, {k: statistics.median(v) for k, v in times.items()})
    if rank == 0:
        worst = {k: max(g[k] for g in gathered) for k in gathered[0]}
        torch.save({"times": worst, "numel": stats.numel()}, out)
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--world", type=int, default=2, help="number of gloo ranks")
    parser.add_argument("--n", type=int, default=128, help="global batch size N")
    parser.add_argument("--a", type=int, default=640, help="feature dimension A")
    parser.add_argument("--c", type=int, default=100, help="number of classes C")
    parser.add_argument("--kind", choices=("full", "diagonal"), default="full")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    args = parser.parse_args()
    if args.n % args.world:
        parser.error(f"--world {args.world} must divide --n {args.n}")
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "times.pt")
        mp.start_processes(_worker, args=(args.world, _free_port(), args, out), nprocs=args.world,
                           join=True, start_method="spawn")
        res = torch.load(out)
    t, K, N, A, C = res["times"], args.world, args.n, args.a, args.c
    per_rank = N // K
    mb = lambda numel: f"{numel * 4 / 2**20:.2f} MB"  # noqa: E731  (float32)
    stat_shape = "C x A x A + C x A + C" if args.kind == "full" else "2 C x A + C"
    rows = [
        ["all-gather features + labels (ours)", f"{per_rank} x {A} + {per_rank}",
         mb(per_rank * (A + 1)), f"{t['gather']:.2f}"],
        ["estimator update alone (fold N x A)", f"{N} x {A}", "-", f"{t['fold']:.2f}"],
        ["synchronized update (gather + fold)", f"{per_rank} x {A}", mb(per_rank * (A + 1)),
         f"{t['synced']:.2f}"],
        [f"all-reduce sufficient statistics ({stat_shape})", f"{res['numel']:,}",
         mb(res["numel"]), f"{t['allreduce']:.2f}"],
        ["  + computing them locally", f"{per_rank} x {A}", "-", f"{t['suffstats']:.2f}"],
    ]
    print(f"ISDA statistics synchronization, {K} gloo ranks (CPU, {args.threads} thread(s) each), "
          f"global N={N}, A={A}, C={C}, kind={args.kind}; median ms of the slowest rank\n")
    print(markdown_table(["operation per step", "tensor per rank", "payload per rank",
                          "median ms"], rows))


if __name__ == "__main__":
    main()
