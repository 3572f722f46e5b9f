"""``isda train --nproc K``: launch a data-parallel run with torchrun on this machine.

The config built from the command line (as ``isda train`` builds it) is checked for ``K``
processes before anything starts, written to a temporary JSON file and handed to ``K``
workers (:func:`torchrun_command`; ``--standalone`` picks a free port on localhost).
torchrun stops every worker as soon as one fails; its exit status is the command's.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Optional

from .config import ResolvedConfig, TrainConfig
from .parallel import check_distributed_config

__all__ = ["launch_config", "torchrun_command"]


def torchrun_command(nproc: int, train_args: Sequence[str], *,
                     python: str = sys.executable) -> list[str]:
    """The torchrun command running ``python -m torch_isda.train <train_args>`` in
    ``nproc`` local processes."""
    return [python, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
            "--nproc-per-node", str(int(nproc)), "-m", "torch_isda.train", *train_args]


def launch_config(nproc: int, config: TrainConfig, resolved: ResolvedConfig,
                  run_args: Sequence[str] = (), *, env: Optional[Mapping[str, str]] = None
                  ) -> int:
    """``isda train --nproc K ...``: check ``config`` (``resolved`` by the command) for ``K``
    processes, write it to a temporary file (each worker resolves it, as any torchrun
    worker does), then run the workers with the run-control ``run_args`` (and ``env`` added
    to their environment); returns torchrun's exit status (``128 + signal`` when it was
    killed by a signal)."""
    nproc = int(nproc)
    if nproc < 1:
        raise ValueError(f"--nproc must be a positive number of processes; got {nproc}")
    check_distributed_config(resolved, nproc)
    with tempfile.TemporaryDirectory(prefix="isda-launch-") as tmp:
        path = Path(tmp) / "config.json"
        path.write_text(config.to_json())
        command = torchrun_command(nproc, ["--config", str(path), *run_args])
        code = subprocess.run(command, env=None if env is None else {**os.environ, **env}
                              ).returncode
    return 128 - code if code < 0 else code
