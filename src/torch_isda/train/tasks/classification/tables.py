"""The tables and curves of an ``isda compare`` sweep of classification runs (Table 2 /
Table 5 layout, :mod:`torch_isda.train.tables`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ...config import TrainConfig
from ...long_tailed import group_csv_cells, group_csv_header
from ...tables import (MethodSummary, plot_curves, plot_group_curves, render_table, stats_cells,
                      summarize_method, write_table_files)

__all__ = ["write_classification_comparison"]


def write_classification_comparison(out: Path, variants: Sequence[Any],
                                    runs: dict[str, list[tuple[int, Path]]], config: TrainConfig
                                    ) -> tuple[list[MethodSummary], str, Path]:
    """Summaries, ``table.md``/``table.csv`` and ``curves.png`` of a sweep over criteria;
    returns ``(methods, markdown, curves path)``."""
    methods = [summarize_method(v.loss, runs[v.key], config.final_epochs) for v in variants]
    header = ["method", "name", "dataset", "model", "epochs", "final_epochs", "n_seeds",
              "final_error_mean", "final_error_std", "best_error_mean", "best_error_std",
              "num_parameters", "seeds", "final_errors", "failed_seeds"]
    rows = [[m.loss, m.display, config.dataset, config.model, config.epochs, m.window,
             len(m.seeds), *stats_cells(*m.final), *stats_cells(*m.best), m.num_parameters,
             ";".join(str(s) for s in m.seeds), ";".join(f"{e:.4f}" for e in m.final_errors),
             ";".join(str(s) for s in m.failed)] for m in methods]
    if any(m.group_errors for m in methods):  # long-tailed: shot groups and per-class errors
        header += group_csv_header()
        rows = [row + group_csv_cells(m) for row, m in zip(rows, methods)]
    table = render_table(methods, config)
    write_table_files(out, table, header, rows)
    curves = out / "curves.png"
    plot_curves(curves, methods, config)
    if any(m.group_curves for m in methods):
        plot_group_curves(out / "curves_groups.png", methods, config)
    return methods, table, curves
