"""``isda train --nproc K``: launch a data-parallel run with torchrun on this machine.

The command line is turned into a config (exactly as ``isda train`` would build it:
``--config`` file or the run's saved config with ``--resume``, then the options given),
checked for what the multi-process harness cannot run (e.g. ``K`` not dividing the
global ``--batch-size``) before anything starts, written to a temporary JSON file and
handed to ``K`` workers::

    python -m torch.distributed.run --standalone --nnodes 1 --nproc-per-node K \\
        -m torch_isda.train --config <tmp>.json [--resume] [--force] [--stop-after E] [--quiet]

``--standalone`` picks a free rendezvous port on localhost. torchrun stops every worker
as soon as one exits with an error, and exits non-zero itself: a failing rank ends the run.
The exit status of ``isda train --nproc K`` is torchrun's.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from .config import TrainConfig
from .distributed import check_distributed_config
from .resolve import resolve_config

__all__ = ["launch", "launch_config", "torchrun_command"]


def torchrun_command(nproc: int, train_args: Sequence[str], *,
                     python: str = sys.executable) -> list[str]:
    """The torchrun command running ``python -m torch_isda.train <train_args>`` in
    ``nproc`` local processes."""
    return [python, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
            "--nproc-per-node", str(int(nproc)), "-m", "torch_isda.train", *train_args]


def launch(nproc: int, train_args: Sequence[str], *, env: dict | None = None) -> int:
    """Run :func:`torchrun_command` and return its exit status (``128 + signal`` when it
    was killed by a signal)."""
    completed = subprocess.run(torchrun_command(nproc, train_args), env=env)
    code = completed.returncode
    return 128 - code if code < 0 else code


def launch_config(nproc: int, config: TrainConfig, run_args: Sequence[str] = ()) -> int:
    """``isda train --nproc K ...``: check ``config`` for ``K`` processes, write it to a
    temporary file, then :func:`launch` the workers with the run-control ``run_args``."""
    nproc = int(nproc)
    if nproc < 1:
        raise ValueError(f"--nproc must be a positive number of processes; got {nproc}")
    check_distributed_config(resolve_config(config), nproc)
    with tempfile.TemporaryDirectory(prefix="isda-launch-") as tmp:
        path = Path(tmp) / "config.json"
        path.write_text(config.to_json())
        return launch(nproc, ["--config", str(path), *run_args], env=dict(os.environ))
