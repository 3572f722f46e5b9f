"""One run of a sweep as data (:class:`SweepRun`), where its bookkeeping lives under
``OUT/sweep/``, and :func:`execute_run`, the function every executor runs for it (in a child
process of ``isda compare --jobs N``, or as a submitit job on Slurm).

A run's bookkeeping (``OUT/sweep/runs/<slug>.*``, written atomically):

* ``<slug>.json``: the run (:meth:`SweepRun.to_dict`);
* ``<slug>.state.json``: ``running`` / ``done`` / ``failed`` with host, PID, job id,
  times and, when failed, the error;
* ``<slug>.progress.json``: the epoch and the fraction of the steps done (for the live
  display and ``isda status``);
* ``<slug>.log``: the run's output (``--jobs``; submitit jobs log into ``OUT/sweep/submitit``).

The run itself lands where a sequential ``isda compare`` puts it (``OUT/<loss>/seed<k>/``),
so a sweep can be continued by any executor, or sequentially.
"""

from __future__ import annotations

import json
import os
import socket
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from ..checkpoint import atomic_write_json
from ..config import ResolvedConfig
from ..progress_file import PROGRESS_FILE_ENV, ProgressWriter

__all__ = ["SWEEP_DIR", "ProgressWriter", "SweepRun", "execute_run", "read_json", "runs_dir"]

#: The sweep's bookkeeping folder inside a comparison's OUT.
SWEEP_DIR = "sweep"


def runs_dir(out: str | os.PathLike[str]) -> Path:
    return Path(out) / SWEEP_DIR / "runs"


def read_json(path: Path) -> Optional[dict[str, Any]]:
    """The JSON object in ``path``, or ``None`` when it is missing or being replaced."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


@dataclass(frozen=True)
class SweepRun:
    """One (variant, seed) run of a comparison: ``name`` ("isda seed 0") is what the log and
    ``isda status`` show; ``config`` is the run's resolved configuration (its ``out`` is
    the run directory)."""

    name: str
    key: str
    seed: int
    sweep_out: str
    config: ResolvedConfig
    force: bool = False
    nproc: int = 1

    @property
    def slug(self) -> str:
        return f"{self.key.replace('/', '--')}-seed{self.seed}"

    @property
    def run_dir(self) -> Path:
        return Path(self.config.out)

    def path(self, suffix: str) -> Path:
        """``OUT/sweep/runs/<slug><suffix>`` (``.json``, ``.state.json``, ...)."""
        return runs_dir(self.sweep_out) / f"{self.slug}{suffix}"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "key": self.key, "seed": self.seed,
                "sweep_out": self.sweep_out, "config": self.config.to_dict(),
                "force": self.force, "nproc": self.nproc}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SweepRun:
        """The run of :meth:`to_dict`; its config was resolved when the sweep was planned,
        so it comes back as that :class:`ResolvedConfig`."""
        return cls(data["name"], data["key"], int(data["seed"]), data["sweep_out"],
                   ResolvedConfig.from_dict(data["config"]), bool(data.get("force", False)),
                   int(data.get("nproc", 1)))

    def with_threads(self, threads: Optional[int]) -> SweepRun:
        """This run with ``threads`` CPU threads (not part of what it computes)."""
        return SweepRun.from_dict({**self.to_dict(),
                                   "config": {**self.config.to_dict(), "threads": threads}})

    def save(self) -> Path:
        path = self.path(".json")
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, self.to_dict())
        return path

    def state(self) -> Optional[dict[str, Any]]:
        return read_json(self.path(".state.json"))

    def progress(self) -> Optional[dict[str, Any]]:
        return read_json(self.path(".progress.json"))

    def write_state(self, state: str, **fields: Any) -> None:
        record = {"state": state, "name": self.name, "host": socket.gethostname(),
                  "pid": os.getpid(), "time": time.time(), **fields}
        path = self.path(".state.json")
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, record)


def _train_with_torchrun(run: SweepRun) -> tuple[dict[str, Any], str]:
    """One run over ``run.nproc`` local processes (torchrun, the GPUs of the job's node);
    an interrupted run resumes (``--resume auto``)."""
    from ..launch import launch_config
    from ..rundir import RESULT_NAME

    resuming = (run.run_dir / "checkpoint.pt").is_file() and not run.force
    code = launch_config(run.nproc, run.config, run.config,
                         ["--resume", "auto", "--quiet", *(["--force"] if run.force else [])],
                         env={PROGRESS_FILE_ENV: str(run.path(".progress.json"))})
    if code != 0:
        raise RuntimeError(f"torchrun with {run.nproc} processes exited with status {code}")
    result = read_json(run.run_dir / RESULT_NAME)
    if result is None:
        raise RuntimeError(f"torchrun finished without writing {run.run_dir / RESULT_NAME}")
    return {**result, "status": "trained"}, "resumed" if resuming else "trained"


def execute_run(run: SweepRun, job_id: Optional[str] = None) -> dict[str, Any]:
    """Train (or resume, or reuse) ``run`` as a sequential comparison would, recording its
    state; never raises for a failed run: returns ``{"state": "done"|"failed", ...}`` (the
    traceback goes to stderr, i.e. the run's log)."""
    from ..compare import train_or_reuse

    started = time.time()
    run.write_state("running", job_id=job_id, started=started)
    try:
        if run.nproc > 1:
            result, note = _train_with_torchrun(run)
        else:
            result, note = train_or_reuse(run.config, force=run.force, quiet=True,
                                          callbacks=[ProgressWriter(run.path(".progress.json"))])
    except Exception as err:  # a failed run is recorded, the sweep goes on
        traceback.print_exc()
        error = f"{type(err).__name__}: {err}"
        run.write_state("failed", job_id=job_id, started=started, error=error,
                        seconds=time.time() - started)
        return {"state": "failed", "name": run.name, "error": error}
    seconds = time.time() - started
    run.write_state("done", job_id=job_id, started=started, note=note, seconds=seconds)
    return {"state": "done", "name": run.name, "note": note, "seconds": seconds,
            "result": {k: v for k, v in result.items() if k != "status"},
            "reused": result["status"] == "reused"}
