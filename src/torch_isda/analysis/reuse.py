"""Analyses reuse the runs that ``isda compare`` already trained.

An analysis trains its runs into ``OUT/runs/<loss>/seed<k>/`` (:func:`~torch_isda.analysis.
common.sweep`). Before it does, :func:`adopt_compare_runs` looks for each ``(loss, seed)``
in the directory ``isda compare`` uses for the same configuration (its default ``--out``,
:func:`~torch_isda.train.compare_out.comparison_dir`, e.g. ``runs/compare-digits`` for the
default ``ce``/``isda`` runs): a finished run there with the same configuration is copied
instead of trained again. Runs already present in ``OUT/runs`` are left alone.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Optional, Union

from ..train.compare_out import comparison_dir, suffix_configs
from ..train.config import TrainConfig
from ..train.criteria import spec_dirname
from .resolve import resolve_run
from ..train.rundir import CONFIG_NAME, RESULT_NAME, RUN_FILES, config_differences

__all__ = ["adopt_compare_runs"]


def adopt_compare_runs(base: TrainConfig, losses: Sequence[str], seeds: Sequence[int],
                       runs_dir: Union[str, Path], *,
                       say: Optional[Callable[[str], None]] = None) -> list[Path]:
    """Copy the finished ``isda compare`` runs that match ``(loss, seed)`` of ``base``
    into ``runs_dir/<loss>/seed<k>/``; returns the directories filled."""
    reference = TrainConfig(dataset=base.dataset, model=base.model)
    source_root = Path(comparison_dir(*(resolve_run(c) for c in suffix_configs(base, reference))))
    runs_dir = Path(runs_dir)
    if source_root.resolve() == runs_dir.resolve():
        return []
    adopted = []
    for loss in losses:
        for seed in seeds:
            src = source_root / spec_dirname(loss) / f"seed{seed}"
            dst = runs_dir / spec_dirname(loss) / f"seed{seed}"
            if not (src / RESULT_NAME).is_file() or not (src / CONFIG_NAME).is_file():
                continue
            if any((dst / name).exists() for name in RUN_FILES):
                continue  # the analysis has (part of) this run already
            wanted = resolve_run(base.replace(loss=loss, seed=seed, out=str(dst)))
            if config_differences(TrainConfig.load(src / CONFIG_NAME), wanted):
                continue
            dst.mkdir(parents=True, exist_ok=True)
            for name in RUN_FILES:
                if (src / name).is_file():
                    shutil.copy2(src / name, dst / name)
            adopted.append(dst)
    if adopted and say is not None:
        say(f"reusing {len(adopted)} finished run{'s' if len(adopted) != 1 else ''} of "
            f"isda compare from '{source_root}'")
    return adopted
