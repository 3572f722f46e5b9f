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

import argparse
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

__all__ = ["launch", "launch_from_args", "torchrun_command"]


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


def launch_from_args(args: argparse.Namespace) -> int:
    """``isda train --nproc K ...``: validate, then :func:`launch` the workers."""
    from .command_train import build_config
    from .distributed import check_distributed_config
    from .presets import resolve_config

    nproc = int(args.nproc)
    if nproc < 1:
        raise ValueError(f"--nproc must be a positive number of processes; got {nproc}")
    config = build_config(args)
    check_distributed_config(resolve_config(config), nproc)
    run_args: list[str] = []
    if args.resume:
        run_args.append("--resume")
    if args.force:
        run_args.append("--force")
    if args.stop_after is not None:
        run_args += ["--stop-after", str(int(args.stop_after))]
    if args.quiet:
        run_args.append("--quiet")
    with tempfile.TemporaryDirectory(prefix="isda-launch-") as tmp:
        path = Path(tmp) / "config.json"
        path.write_text(config.to_json())
        return launch(nproc, ["--config", str(path), *run_args], env=dict(os.environ))
