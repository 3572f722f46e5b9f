"""Divergence under DDP: 2 gloo processes on the CPU, only rank 1's loss becomes NaN (its
classifier bias is set to NaN at the first step of epoch 2). Both ranks stop with the same
report, naming the epoch, and the checkpoint of epoch 1 is kept, intact."""

from __future__ import annotations

import json
import os
import socket
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from torch_isda.train import Callback, DivergenceError, TrainConfig, train_distributed
from torch_isda.train.checkpoint import CHECKPOINT_NAME, load_checkpoint

WORLD = 2
STEPS_PER_EPOCH = 10  # digits: 1257 training images, global batch 128


class NanOnRank1(Callback):
    def on_step_start(self, engine, step):
        if engine.rank == 1 and step == STEPS_PER_EPOCH:  # the first step of epoch 2
            with torch.no_grad():
                engine.task.classifier.bias.fill_(float("nan"))


def _worker(rank: int, port: int, tmp: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    cfg = TrainConfig(dataset="digits", model="digits_cnn", loss="isda", epochs=3, seed=1,
                      batch_size=128, threads=1, dist_timeout=60.0, data_dir=tmp,
                      model_kwargs={"width": 4}, out=os.path.join(tmp, "run"))
    report = {"rank": rank}
    try:
        train_distributed(cfg, quiet=True, callbacks=[NanOnRank1()])
        report["error"] = None
    except DivergenceError as err:
        report.update(error=str(err), type=type(err).__name__, epoch=err.epoch,
                      mirrored=bool(getattr(err, "torch_isda_mirrored", False)))
    with open(os.path.join(tmp, f"rank{rank}.json"), "w") as f:
        json.dump(report, f)
    if dist.is_initialized():
        dist.destroy_process_group()
    os._exit(0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_one_diverging_rank_stops_both_with_the_same_report(tmp_path):
    context = mp.start_processes(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD,
                                 join=False, start_method="spawn")
    deadline = time.monotonic() + 240
    while not context.join(timeout=5):  # a hang (a rank left in a collective) fails the test
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("the ranks did not stop within 240 s after one diverged")
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD)]
    assert all(r["type"] == "DivergenceError" for r in reports), reports
    assert reports[0]["error"] == reports[1]["error"]
    assert reports[0]["epoch"] == reports[1]["epoch"] == 2
    assert all(r["mirrored"] for r in reports)  # only rank 0 prints it on the command line
    message = reports[0]["error"]
    run = tmp_path / "run"
    assert "training diverged at epoch 2" in message and "nan" in message.lower()
    assert f"the checkpoint of epoch 1 in '{run}' is kept" in message
    state = load_checkpoint(run / CHECKPOINT_NAME)  # intact: its digest matches
    assert state["epoch"] == 1 and len(state["metrics"]) == 1
    assert all(bool(torch.isfinite(t).all()) for t in state["model"].values()
               if t.is_floating_point())
    assert not (run / "result.json").exists()
    assert [row["epoch"] for row in json.loads((run / "metrics.json").read_text())] == [1]
