"""The run-directory policy of ``isda train``: fresh, resume, reuse a finished run,
``--force`` (the rules: docs/training.md)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional, Union

from .checkpoint import CHECKPOINT_NAME, PREVIOUS_CHECKPOINT_NAME
from .config import TrainConfig

__all__ = ["COMPARED_IGNORED_FIELDS", "CONFIG_NAME", "RESULT_NAME", "RUN_FILES", "check_out_dir",
           "config_differences", "prepare_run_dir", "wants_resume"]

RESULT_NAME = "result.json"
CONFIG_NAME = "config.json"
RUN_FILES = (RESULT_NAME, CHECKPOINT_NAME, PREVIOUS_CHECKPOINT_NAME, "metrics.csv", "metrics.json",
             CONFIG_NAME)

#: Fields that do not change what a run computes (ignored when deciding whether a
#: finished run in ``--out`` matches the requested configuration).
COMPARED_IGNORED_FIELDS = ("out", "data_dir", "download", "workers", "device", "threads",
                           "dist_backend", "dist_timeout", "final_epochs")

Resume = Union[bool, str]


def config_differences(a: TrainConfig, b: TrainConfig,
                       ignore: tuple[str, ...] = COMPARED_IGNORED_FIELDS) -> dict[str, tuple]:
    """``{field: (a_value, b_value)}`` for the fields that differ (``ignore`` skipped)."""
    da, db = a.to_dict(), b.to_dict()
    return {k: (da[k], db[k]) for k in da if k not in ignore and da[k] != db.get(k)}


def wants_resume(out: Union[str, Path], resume: Resume) -> bool:
    """Whether a run in ``out`` continues from its checkpoint: ``resume`` itself, or for
    ``"auto"`` whether ``checkpoint.pt`` exists."""
    if resume == "auto":
        return (Path(out) / CHECKPOINT_NAME).is_file()
    if isinstance(resume, str):
        raise ValueError(f"resume must be True, False or 'auto'; got {resume!r}")
    return bool(resume)


def _reuse_or_refuse(cfg: TrainConfig, resume: bool, say: Callable[[str], None]
                     ) -> Optional[dict[str, Any]]:
    out = Path(cfg.out)
    config_path = out / CONFIG_NAME
    saved = TrainConfig.load(config_path) if config_path.is_file() else None
    diff = config_differences(saved, cfg) if saved is not None else {"config.json": ("missing", "")}
    if not diff:
        result = json.loads((out / RESULT_NAME).read_text())
        say(f"{out}: finished run found (final error {result.get('final_error')}%), not "
            f"retrained (use --force to retrain)")
        return {**result, "status": "reused", "out": str(out)}
    if not resume:
        changes = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in diff.items())
        raise FileExistsError(
            f"'{out}' holds a finished run with a different configuration ({changes}); "
            f"use --force to retrain it, --resume to continue it, or another --out")
    return None


def check_out_dir(out: Union[str, Path]) -> None:
    """``FileExistsError`` unless ``out`` is a directory or can be created as one (neither
    it nor a parent is an existing file)."""
    out = Path(out)
    for path in (out, *out.parents):
        if path.exists():
            if not path.is_dir():
                what = "is" if path == out else f"is inside '{path}', which is"
                raise FileExistsError(f"--out '{out}' {what} a file, not a directory")
            return


def prepare_run_dir(cfg: TrainConfig, *, resume: Resume, force: bool,
                    say: Callable[[str], None]) -> Optional[dict[str, Any]]:
    """Apply the run-directory rules (docs/training.md) to the resolved ``cfg``.

    Returns the stored result (``"status": "reused"``) of a finished run with the same
    configuration, else ``None`` (with ``force``, after removing the run's files). Raises
    ``FileExistsError`` / ``FileNotFoundError`` with the fix.
    """
    out = Path(cfg.out)
    check_out_dir(out)
    auto = resume == "auto"
    resume = wants_resume(out, resume)
    if force:
        for name in RUN_FILES:
            (out / name).unlink(missing_ok=True)
        return None
    if (out / RESULT_NAME).is_file():
        return _reuse_or_refuse(cfg, resume, say)
    if (out / CHECKPOINT_NAME).is_file() and not resume:
        raise FileExistsError(
            f"'{out}' holds an unfinished run ({CHECKPOINT_NAME}); pass --resume to continue "
            f"it or --force to start over")
    if resume and not auto and not (out / CHECKPOINT_NAME).is_file():
        raise FileNotFoundError(
            f"cannot resume: no {CHECKPOINT_NAME} in '{out}' (start the run without --resume, "
            f"or use --resume auto)")
    return None
