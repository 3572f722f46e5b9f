"""Shared helpers of the analyses: configs, seed sweeps, tables and figures.

Every analysis trains its runs through :func:`sweep`, a thin wrapper of
:func:`torch_isda.train.compare.run_comparison` (``isda compare``): runs go to
``OUT/runs/<loss>/seed<k>/``, finished runs are reused (also those ``isda compare``
trained with the same configuration), interrupted ones resumed, and a changed
configuration for an existing directory is refused. Tables are written as
markdown and CSV with :func:`write_table`, figures with :func:`save_figure` (atomically).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

from ..train.config import TrainConfig
from ..train.reporting import fmt_pm, mean_std  # re-exported for the analyses
from ..train.tables import markdown_table, pyplot, save_figure, write_table_files

__all__ = [
    "DEFAULT_DATASET",
    "DEFAULT_MODEL",
    "Logger",
    "Table",
    "base_config",
    "default_out",
    "default_seeds",
    "fmt_pm",
    "is_default_setting",
    "mean_std",
    "pyplot",
    "save_figure",
    "sweep",
    "write_table",
]

DEFAULT_DATASET = "digits"
DEFAULT_MODEL = "digits_cnn"

Logger = Callable[[str], None]


def is_default_setting(config: TrainConfig) -> bool:
    """Whether the run uses the embedded default (digits + digits_cnn)."""
    return (config.dataset, config.model) == (DEFAULT_DATASET, DEFAULT_MODEL)


def base_config(overrides: dict[str, Any]) -> TrainConfig:
    """The base :class:`TrainConfig` of an analysis: digits + digits_cnn unless overridden,
    and ``threads=1`` for that tiny default (as ``isda compare``) unless given."""
    config = TrainConfig(**{"dataset": DEFAULT_DATASET, "model": DEFAULT_MODEL, **overrides})
    if is_default_setting(config) and "threads" not in overrides:
        config = config.replace(threads=1)
    return config


def default_out(name: str, config: TrainConfig) -> str:
    """``runs/analyze-<name>`` for the default setting, else with dataset and model."""
    if is_default_setting(config):
        return f"runs/analyze-{name}"
    return f"runs/analyze-{name}-{config.dataset}-{config.model}"


def default_seeds(config: TrainConfig, digits: int = 2, other: int = 5) -> int:
    """Seeds of a sweep: ``digits`` for the default setting (minutes on a CPU), else
    ``other`` (the paper's five)."""
    return digits if is_default_setting(config) else other


@dataclass
class Table:
    """A table written as ``<stem>.md`` (caption + markdown table + notes) and
    ``<stem>.csv`` (machine-readable columns, which may differ from the markdown)."""

    caption: str
    headers: list[str]
    rows: list[list[str]]
    csv_headers: list[str]
    csv_rows: list[list[Any]]
    notes: str = ""

    def markdown(self) -> str:
        lines = [self.caption, "", *markdown_table(self.headers, self.rows)]
        if self.notes:
            lines += ["", self.notes]
        return "\n".join(lines) + "\n"


def write_table(out: Union[str, Path], stem: str, table: Table,
                markdown: Optional[str] = None) -> tuple[Path, Path, str]:
    """Write ``out/<stem>.md`` (``markdown``, default ``table.markdown()``) and
    ``out/<stem>.csv``; returns both paths and the markdown."""
    text = table.markdown() if markdown is None else markdown
    md, csv_path = write_table_files(Path(out), text, table.csv_headers, table.csv_rows, stem)
    return md, csv_path, text


def sweep(base: TrainConfig, losses: Sequence[str], seeds: Union[int, str, Sequence[int]],
          runs_dir: Union[str, Path], *, force: bool = False, quiet: bool = False,
          log: Optional[Logger] = None) -> dict[str, Any]:
    """Train every ``(loss, seed)`` with ``isda compare``'s machinery into ``runs_dir``.

    Returns ``{loss: MethodSummary}`` (final/best errors per seed, curves). Finished runs
    are reused and interrupted ones resumed; finished runs of ``isda compare`` with the same
    configuration are copied instead of trained again (:mod:`torch_isda.analysis.reuse`);
    ``runs_dir`` also receives compare's own ``table.md``/``table.csv``/``curves.png``.
    """
    from ..train.compare import parse_seeds, run_comparison
    from .reuse import adopt_compare_runs

    if not force:
        say = None if quiet else (log or (lambda msg: print(msg, flush=True)))
        adopt_compare_runs(base, list(losses), parse_seeds(seeds), runs_dir, say=say)
    result = run_comparison(base, list(losses), seeds, runs_dir, force=force, quiet=quiet,
                            log=log)
    return {m.loss: m for m in result.methods}
