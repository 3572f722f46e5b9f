"""Multi-node training as on a cluster (``srun torchrun --nnodes N ...``, docs/scale.md): two
torchrun "nodes" of one process each on localhost, joined by a c10d rendezvous on 127.0.0.1,
train the same run as one node with two processes (the same global batch)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import torch

from torch_isda.train import TrainConfig
from torch_isda.train.checkpoint import load_checkpoint
from torch_isda.train.launch import torchrun_command


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_of_one_process_equal_one_node_of_two(tmp_path):
    config = TrainConfig(epochs=1, threads=1, batch_size=64, loss="isda")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = tmp_path / "one-node.json"
    one.write_text(config.replace(out=str(tmp_path / "one")).to_json())
    assert subprocess.run(torchrun_command(2, ["--config", str(one), "--quiet"]), env=env,
                          timeout=300).returncode == 0
    two = tmp_path / "two-nodes.json"
    two.write_text(config.replace(out=str(tmp_path / "two")).to_json())
    endpoint = f"127.0.0.1:{_free_port()}"
    nodes = [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
         "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint, "--rdzv-id", "isda-test",
         "--node-rank", str(rank), "-m", "torch_isda.train", "--config", str(two), "--quiet"],
        env=env) for rank in range(2)]
    assert [node.wait(timeout=300) for node in nodes] == [0, 0]
    a = load_checkpoint(tmp_path / "one" / "checkpoint.pt")
    b = load_checkpoint(tmp_path / "two" / "checkpoint.pt")
    assert a["world_size"] == b["world_size"] == 2
    for key, value in a["model"].items():
        torch.testing.assert_close(b["model"][key], value, rtol=0, atol=0, msg=key)
    assert a["metrics"] == [{**row, "seconds": a["metrics"][i]["seconds"]}
                            for i, row in enumerate(b["metrics"])]
