"""``isda tune --jobs N``: N worker processes on one study (``python -m
torch_isda.train.tune.worker``), each with its share of the CPU threads; Ctrl-C stops them
all (their running trials are marked failed by the heartbeat and retried on the next run)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

from ..checkpoint import atomic_write_text
from .study import TuneSpec

__all__ = ["run_workers"]


def run_workers(spec: TuneSpec, jobs: int) -> list[int]:
    """Start ``jobs`` workers, wait for them; returns their exit statuses."""
    if spec.base.threads is None:
        spec = replace(spec, base=spec.base.replace(threads=max(1, (os.cpu_count() or 1) // jobs)))
    out = Path(spec.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "tune.json"
    import json

    atomic_write_text(path, json.dumps(spec.to_dict(), indent=2))
    env = {**os.environ, "OMP_NUM_THREADS": str(spec.base.threads)}
    children = []
    for k in range(jobs):
        log = open(out / f"worker{k}.log", "ab")
        children.append((subprocess.Popen(
            [sys.executable, "-m", "torch_isda.train.tune.worker", str(path)], env=env,
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True), log))
    try:
        codes = [child.wait() for child, _ in children]
    except KeyboardInterrupt:
        for child, _ in children:
            if child.poll() is None:
                os.killpg(child.pid, signal.SIGTERM)
        for child, _ in children:
            child.wait()
        raise
    finally:
        for _, log in children:
            log.close()
    return codes
