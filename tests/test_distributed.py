"""Two gloo processes on CPU: synchronized statistics equal one process seeing the global batch."""

import os
import socket
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from torch_isda import CovarianceEstimator, ISDALoss


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_steps(C=5, A=4, steps=4):
    g = torch.Generator().manual_seed(0)
    out = []
    for s in range(steps):
        # uneven per-rank batch sizes; rank 1 lacks class 0 on even steps
        n0, n1 = 7 + s, 5
        x0, x1 = torch.randn(n0, A, generator=g, dtype=torch.float64), torch.randn(n1, A, generator=g, dtype=torch.float64)
        y0 = torch.randint(0, C, (n0,), generator=g)
        y1 = torch.randint(1 if s % 2 == 0 else 0, C, (n1,), generator=g)
        out.append(((x0, y0), (x1, y1)))
    return out


def init_gloo(rank, world, port):
    """Join a local gloo process group (CPU)."""
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world)


def worker(rank, world, port, outdir):
    init_gloo(rank, world, port)
    try:
        results = {}
        for kind in ("full", "diagonal", "shared"):
            est = CovarianceEstimator(4, 5, kind, dtype=torch.float64)
            local = CovarianceEstimator(4, 5, kind, dtype=torch.float64, sync=False)
            for step in make_steps():
                x, y = step[rank]
                est.update(x, y)
                local.update(x, y)
            results[kind] = (est.state_dict(), local.state_dict())
        # bad input on rank 1 only: every rank raises, nobody changes state
        est = CovarianceEstimator(4, 5, dtype=torch.float64)
        est.update(*make_steps()[0][rank])
        before = {k: v.clone() for k, v in est.state_dict().items()}
        x, y = make_steps()[1][rank]
        if rank == 1:
            x = x.clone()
            x[0, 0] = float("nan")
        try:
            est.update(x, y)
            raised = ""
        except ValueError as err:
            raised = str(err)
        unchanged = all(torch.equal(v, before[k]) for k, v in est.state_dict().items())
        # the loss module syncs through its estimator too
        crit = ISDALoss(4, 5, dtype=torch.float64)
        x, y = make_steps()[2][rank]
        logits = torch.randn(x.shape[0], 5, dtype=torch.float64)
        crit(x, logits, y, torch.randn(5, 4, dtype=torch.float64))
        # ignored samples (masks) on the default and the static path: only valid rows are gathered
        masked = {}
        for name, opts in (("default", {}), ("static", {"validate": False, "static_shapes": True})):
            for kind in ("full", "diagonal"):
                loss = ISDALoss(4, 5, kind=kind, dtype=torch.float64, **opts)
                for step in make_steps():
                    x, y = step[rank]
                    y = y.clone()
                    y[::3] = -100
                    loss(x, torch.randn(x.shape[0], 5, dtype=torch.float64), y, torch.randn(5, 4, dtype=torch.float64))
                masked[name, kind] = loss.estimator.state_dict()
        torch.save({"results": results, "raised": raised, "unchanged": unchanged, "masked": masked,
                    "loss_state": crit.state_dict()}, os.path.join(outdir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_two_process_gloo_statistics_match_single_process():
    with tempfile.TemporaryDirectory() as outdir:
        mp.start_processes(worker, args=(2, free_port(), outdir), nprocs=2, join=True, start_method="spawn")
        r0 = torch.load(os.path.join(outdir, "rank0.pt"))
        r1 = torch.load(os.path.join(outdir, "rank1.pt"))
    steps = make_steps()
    for kind in ("full", "diagonal", "shared"):
        single = CovarianceEstimator(4, 5, kind, dtype=torch.float64)
        per_rank0 = CovarianceEstimator(4, 5, kind, dtype=torch.float64)
        for (x0, y0), (x1, y1) in steps:
            single.update(torch.cat([x0, x1]), torch.cat([y0, y1]))
            per_rank0.update(x0, y0)
        synced0, local0 = r0["results"][kind]
        synced1, _ = r1["results"][kind]
        for key, value in single.state_dict().items():
            assert torch.equal(synced0[key], synced1[key]), (kind, key)  # identical on both ranks
            torch.testing.assert_close(synced0[key], value)  # equal to the global batch
            torch.testing.assert_close(local0[key], per_rank0.state_dict()[key])  # sync=False: local only
    for r in (r0, r1):
        assert "rank(s) [1]" in r["raised"]
        assert r["unchanged"]
    assert "NaN or Inf" in r1["raised"]
    x0, y0 = steps[2][0]
    x1, y1 = steps[2][1]
    assert int(r0["loss_state"]["estimator.count"].sum()) == x0.shape[0] + x1.shape[0]
    assert torch.equal(r0["loss_state"]["estimator.covariance"], r1["loss_state"]["estimator.covariance"])
    for kind in ("full", "diagonal"):
        single = CovarianceEstimator(4, 5, kind, dtype=torch.float64)
        for (x0, y0), (x1, y1) in steps:
            keep0, keep1 = torch.arange(len(y0)) % 3 != 0, torch.arange(len(y1)) % 3 != 0
            single.update(torch.cat([x0[keep0], x1[keep1]]), torch.cat([y0[keep0], y1[keep1]]))
        for name in ("default", "static"):
            for key, value in single.state_dict().items():
                torch.testing.assert_close(r0["masked"][name, kind][key], value, msg=f"{name} {kind} {key}")
                torch.testing.assert_close(r1["masked"][name, kind][key], value, msg=f"{name} {kind} {key}")
