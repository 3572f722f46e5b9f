"""Tables and curves of ``isda compare`` sweeps (docs/training.md): the Table 2 / Table 5
layout of criteria (which the classification task and the analyses use), the summaries of
runs, the file writer and the plotting helpers the tasks' tables share. Each run's final
error is recomputed from its ``metrics.json`` with the requested window; runs that diverged
are marked failed and left out of the statistics.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from .checkpoint import atomic_write, atomic_write_text
from .config import TrainConfig
from .curve_inset import INSET_MIN_METHODS, add_last_epochs_inset
from ..data.longtail import SHOT_GROUPS
from .long_tailed import GROUP_COLUMNS, final_class_errors, final_group_errors, group_rows
from .method_names import display_name
from .metrics import final_error
from .reporting import (bold_note, clear_best, counts_text, final_window, fmt_pm, mean_std, plural,
                        window_text)
from .rundir import RESULT_NAME

__all__ = ["WIDE_TABLE_MAX_METHODS", "MethodSummary", "format_params", "markdown_table",
           "plot_band", "plot_curves", "plot_group_curves", "pyplot", "render_table",
           "save_figure", "stats_cells", "summarize_method", "write_table_files", "zoom_top"]

#: Up to this many methods the summary is one row with a column per method (Table 2
#: style); with more, one row per method named by its spec (Table 5 style).
WIDE_TABLE_MAX_METHODS = 4


@dataclass
class MethodSummary:
    loss: str
    seeds: list[int]
    final_errors: list[float]
    best_errors: list[float]
    num_parameters: Optional[int]
    curves: list[list[float]] = field(default_factory=list)  # test error per epoch, per seed
    window: int = 1  # the last epochs averaged into each final error
    failed: list[int] = field(default_factory=list)  # seeds whose run diverged
    group_errors: list[dict] = field(default_factory=list)  # long-tailed: shot groups, per seed
    class_errors: list[list] = field(default_factory=list)  # long-tailed: per class, per seed
    group_curves: list[dict] = field(default_factory=list)  # long-tailed: per group, per seed

    @property
    def display(self) -> str:
        return display_name(self.loss)

    @staticmethod
    def stats(values: list[float]) -> tuple[float, Optional[float]]:
        """:func:`~torch_isda.train.reporting.mean_std`, ``(nan, None)`` without values."""
        return mean_std(values) if values else (math.nan, None)

    @property
    def final(self) -> tuple[float, Optional[float]]:
        return self.stats(self.final_errors)

    @property
    def best(self) -> tuple[float, Optional[float]]:
        return self.stats(self.best_errors)


def summarize_method(loss: str, run_dirs: Sequence[tuple[int, Path]],
                     final_epochs: Optional[int] = None) -> MethodSummary:
    """Read a method's runs; each final error is the mean test error of the run's last
    :func:`~torch_isda.train.reporting.final_window` epochs; runs without ``result.json``
    diverged (``failed``)."""
    finals, bests, curves, params, seeds, failed = [], [], [], None, [], []
    groups, classes, group_curves = [], [], []
    windows = set()
    for seed, run_dir in run_dirs:
        if not (run_dir / RESULT_NAME).is_file():
            failed.append(seed)
            continue
        result = json.loads((run_dir / RESULT_NAME).read_text())
        rows = json.loads((run_dir / "metrics.json").read_text())
        window = final_window(int(result.get("epochs") or len(rows)), final_epochs)
        windows.add(window)
        finals.append(final_error([r["test_error"] for r in rows], window) if rows else math.nan)
        bests.append(float(result["best_error"]) if result["best_error"] is not None else math.nan)
        curves.append([math.nan if r["test_error"] is None else float(r["test_error"]) for r in rows])
        params = result.get("num_parameters", params)
        seeds.append(seed)
        if rows and GROUP_COLUMNS[0] in rows[-1]:  # a long-tailed run
            groups.append(final_group_errors(rows, window))
            classes.append(final_class_errors(rows, window))
            group_curves.append({g: [math.nan if r.get(c) is None else float(r[c]) for r in rows]
                                 for g, c in zip(SHOT_GROUPS, GROUP_COLUMNS)})
    return MethodSummary(loss, seeds, finals, bests, params, curves,
                         window=max(windows, default=1), failed=failed, group_errors=groups,
                         class_errors=classes, group_curves=group_curves)


def format_params(n: Optional[int]) -> str:
    if n is None:
        return "-"
    if n >= 1e6:
        return f"{n / 1e6:.1f}M"
    if n >= 1e3:
        return f"{n / 1e3:.1f}K"
    return str(n)


def markdown_table(header: Sequence[Any], rows: Sequence[Sequence[Any]]) -> list[str]:
    """The lines of a markdown table."""
    return ["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(map(str, row)) + " |" for row in rows)]


def render_table(methods: Sequence[MethodSummary], config: TrainConfig) -> str:
    """The markdown of ``table.md``."""
    seeds_text = counts_text([len(m.seeds) for m in methods], "seed")
    marked = clear_best([m.final[0] for m in methods], [m.final[1] for m in methods])
    spread = all(m.final[1] is not None for m in methods)
    cells = []
    for i, m in enumerate(methods):
        text = fmt_pm(*m.final, unit="%") if m.seeds else "failed"
        text = f"**{text}**" if i == marked else text
        cells.append(text + (f" ({len(m.failed)} failed)" if m.failed and m.seeds else ""))
    params = format_params(methods[0].num_parameters)
    lines = [
        f"Test error of {config.model} on {config.dataset}: mean ± std (sample std) over "
        f"{seeds_text}; each run's error is the mean test error of its "
        f"{window_text(methods[0].window)} (Section 6.1; --final-epochs). "
        f"{plural(config.epochs, 'epoch')}, preset {config.preset}."
        f"{bold_note(marked, len(methods), spread)}",
        "",
    ]
    if len(methods) <= WIDE_TABLE_MAX_METHODS:  # Table 2 style: one column per method
        lines += markdown_table(["Network", "Params", *(m.display for m in methods)],
                                [[config.model, params, *cells]])
    else:  # Table 5 style: one row per method
        lines += markdown_table(["Method", "Spec", f"{config.model} ({params}) on {config.dataset}"],
                                [[m.display, f"`{m.loss}`", cell] for m, cell in zip(methods, cells)])
    per_seed = [", ".join([f"{e:.2f}" for e in m.final_errors]
                          + [f"seed {s} failed (diverged)" for s in m.failed]) for m in methods]
    lines += ["", *markdown_table(
        ["Method", "Spec", "Final error (%)", "Best error (%)", "Seeds", "Final error per seed (%)"],
        [[m.display, f"`{m.loss}`", fmt_pm(*m.final), fmt_pm(*m.best), len(m.seeds), text]
         for m, text in zip(methods, per_seed)])]
    if all(m.group_errors for m in methods if m.seeds):
        rows, seeds = group_rows([m for m in methods if m.seeds])
        shots = config.dataset_kwargs or {}
        lines += ["", f"Test error by shot group (many > {shots.get('many_shot', 100)}, few < "
                  f"{shots.get('few_shot', 20)} training images per class; '-': no class in "
                  "the group):", "",
                  *markdown_table(["Method", "All (%)", "Many (%)", "Medium (%)", "Few (%)"], rows),
                  "", *markdown_table(["Method", "Many per seed (%)", "Medium per seed (%)",
                                       "Few per seed (%)"], seeds)]
    return "\n".join(lines) + "\n"


def stats_cells(mean: float, std: Optional[float]) -> list[str]:
    """``mean`` and ``std`` as ``table.csv`` cells (an empty std for a single seed)."""
    return [f"{mean:.4f}", "" if std is None else f"{std:.4f}"]


def write_table_files(out: Path, markdown: str, header: Sequence[str],
                      rows: Sequence[Sequence[Any]], stem: str = "table") -> tuple[Path, Path]:
    """Write ``out/<stem>.md`` (``markdown``) and ``out/<stem>.csv`` (``header``, then
    ``rows``; float cells as ``%.6g``, ``None`` empty); returns both paths."""
    out.mkdir(parents=True, exist_ok=True)
    md, csv_path = out / f"{stem}.md", out / f"{stem}.csv"
    atomic_write_text(md, markdown)
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(
        [header, *([f"{v:.6g}" if isinstance(v, float) else v for v in row] for row in rows)])
    atomic_write_text(csv_path, buf.getvalue())
    return md, csv_path


def pyplot() -> Any:
    """matplotlib's pyplot with the non-interactive backend."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_band(ax: Any, curves: Sequence[Sequence[float]], label: str, lw: float = 1.6) -> Any:
    """Mean over seeds of ``curves`` (per-epoch values, cut to the shortest) with a ±std
    band; returns ``(epochs, mean, std, color)``."""
    import numpy as np

    length = min(len(c) for c in curves)
    values = np.array([c[:length] for c in curves], dtype=float)
    epochs = np.arange(1, length + 1)
    mean = np.nanmean(values, axis=0)
    std = np.nanstd(values, axis=0, ddof=1) if values.shape[0] > 1 else np.zeros_like(mean)
    marker = {"marker": "o", "markersize": 4} if length <= 10 else {}  # 1 epoch: a dot
    (line,) = ax.plot(epochs, mean, lw=lw, label=label, **marker)
    ax.fill_between(epochs, mean - std, mean + std, color=line.get_color(), alpha=0.2, lw=0)
    return epochs, mean, std, line.get_color()


def zoom_top(ax: Any, series: Sequence[Any]) -> None:
    """y from 0 to 1.1 x the highest ``mean + std`` past the first 10% of training (every
    epoch of a run under 10 epochs), x over every epoch with whole-number ticks
    (``series``: what :func:`plot_band` returned)."""
    import numpy as np
    from matplotlib.ticker import MaxNLocator

    peaks = []
    for _, mean, std, _ in series:
        top = mean + std
        skip = int(0.1 * len(top))
        if len(top) > skip:
            peaks.append(float(np.nanmax(top[skip:])))
    longest = max((len(s[0]) for s in series), default=1)
    ax.set_xlim(0.5, longest + 0.5)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    peaks = [p for p in peaks if math.isfinite(p)]
    if peaks:
        ax.set_ylim(bottom=0.0, top=max(peaks) * 1.1 + 1e-6)


def save_figure(fig: Any, path: str | Path) -> Path:
    """Save ``fig`` as a PNG atomically (creating its directory) and close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png")
    pyplot().close(fig)
    return path


def plot_curves(path: Path, methods: Sequence[MethodSummary], config: TrainConfig
                ) -> tuple[str, list[str]]:
    """Test error vs. epoch per method, mean over seeds with a ±std band (Fig. 5 style);
    returns the legend's title and entries."""
    inset = len(methods) >= INSET_MIN_METHODS  # a zoom on the last epochs, legend outside
    fig, ax = pyplot().subplots(figsize=(9.2 if inset else 6.4, 4.6 if inset else 4.2), dpi=120)
    series = [plot_band(ax, m.curves, f"{m.display} ({fmt_pm(*m.final, unit='%')})")
              for m in methods if m.curves]
    zoom_top(ax, series)
    longest = max((len(c) for m in methods for c in m.curves), default=0)
    window = methods[0].window
    if longest > 1:  # the epochs averaged into the final error
        ax.axvspan(max(0.5, longest - window + 0.5), longest + 0.5, color="0.95", zorder=0, lw=0)
    n = sorted({len(m.seeds) for m in methods})
    ax.set(xlabel="epoch", ylabel="test error (%)",
           title=f"{config.model} on {config.dataset}: mean ± std over {counts_text(n, 'seed')}")
    ax.grid(True, alpha=0.3)
    legend = ax.legend(title=f"final error ({window_text(window)})",
                       fontsize="small" if len(methods) > WIDE_TABLE_MAX_METHODS else None,
                       **({"loc": "upper left", "bbox_to_anchor": (1.02, 1.0)} if inset else {}))
    if inset:
        add_last_epochs_inset(ax, series, window)
    fig.tight_layout()
    save_figure(fig, path)
    return legend.get_title().get_text(), [t.get_text() for t in legend.get_texts()]


def plot_group_curves(path: Path, methods: Sequence[MethodSummary], config: TrainConfig) -> None:
    """Long-tailed runs: test error vs. epoch of each shot group (one panel per group with a
    class in it), mean over seeds with a ±std band."""
    shown = [g for g in SHOT_GROUPS if any(e[g] is not None for m in methods
                                           for e in m.group_errors)]
    fig, axes = pyplot().subplots(1, len(shown), figsize=(4.2 * len(shown), 3.8), dpi=120,
                                  squeeze=False)
    for ax, g in zip(axes[0], shown):
        for m in methods:
            if m.group_curves:
                plot_band(ax, [c[g] for c in m.group_curves], m.display)
        ax.set(xlabel="epoch", ylabel="test error (%)", title=f"{g}-shot classes")
        ax.grid(True, alpha=0.3)
    axes[0][-1].legend(fontsize="small")
    fig.suptitle(f"{config.model} on {config.dataset} (long-tailed), by shot group")
    fig.tight_layout()
    save_figure(fig, path)

