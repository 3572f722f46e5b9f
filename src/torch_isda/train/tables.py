"""Tables and curves of an ``isda compare`` sweep of classification runs (Table 2 / Table 5).

* ``OUT/table.md`` / ``OUT/table.csv``: mean ± sample std over seeds of the final test
  error (mean of the last 10 epochs, Section 6.1) per method, in the form of Table 2 (up
  to :data:`WIDE_TABLE_MAX_METHODS` methods) or Table 5 (one row per method); runs that
  diverged are marked failed and left out of the statistics;
* ``OUT/curves.png``: test error vs. epoch per method, mean line with a ±std band (Fig. 5).

:class:`MethodSummary` and :func:`summarize_method` are shared with the semi-supervised
and segmentation tables.
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from .checkpoint import atomic_write, atomic_write_text
from .config import TrainConfig
from .rundir import RESULT_NAME

__all__ = ["DISPLAY_NAMES", "WIDE_TABLE_MAX_METHODS", "MethodSummary", "format_params",
           "plot_band", "plot_curves", "pm", "pyplot", "render_table", "save_figure",
           "seeds_text", "summarize_method", "write_classification_comparison", "write_tables",
           "zoom_top"]

#: Column headers of the paper's Table 2 for the known specs.
DISPLAY_NAMES = {"ce": "Basic", "isda": "ISDA"}

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
    failed: list[int] = field(default_factory=list)  # seeds whose run diverged

    @property
    def display(self) -> str:
        return DISPLAY_NAMES.get(self.loss, self.loss)

    @staticmethod
    def mean_std(values: list[float]) -> tuple[float, Optional[float]]:
        if not values:
            return math.nan, None
        mean = statistics.fmean(values)
        std = statistics.stdev(values) if len(values) > 1 else None  # sample std (n - 1)
        return mean, std

    @property
    def final(self) -> tuple[float, Optional[float]]:
        return self.mean_std(self.final_errors)

    @property
    def best(self) -> tuple[float, Optional[float]]:
        return self.mean_std(self.best_errors)


def summarize_method(loss: str, run_dirs: Sequence[tuple[int, Path]]) -> MethodSummary:
    """Read ``result.json`` and ``metrics.json`` of a method's runs (a run without
    ``result.json`` diverged: its seed is listed in ``failed``)."""
    finals, bests, curves, params, seeds, failed = [], [], [], None, [], []
    for seed, run_dir in run_dirs:
        if not (run_dir / RESULT_NAME).is_file():
            failed.append(seed)
            continue
        result = json.loads((run_dir / RESULT_NAME).read_text())
        rows = json.loads((run_dir / "metrics.json").read_text())
        finals.append(float(result["final_error"]) if result["final_error"] is not None else math.nan)
        bests.append(float(result["best_error"]) if result["best_error"] is not None else math.nan)
        curves.append([math.nan if r["test_error"] is None else float(r["test_error"]) for r in rows])
        params = result.get("num_parameters", params)
        seeds.append(seed)
    return MethodSummary(loss, seeds, finals, bests, params, curves, failed)


def pm(mean: float, std: Optional[float], unit: str = "%") -> str:
    return f"{mean:.2f}{unit}" if std is None else f"{mean:.2f} ± {std:.2f}{unit}"


def format_params(n: Optional[int]) -> str:
    if n is None:
        return "-"
    if n >= 1e6:
        return f"{n / 1e6:.1f}M"
    if n >= 1e3:
        return f"{n / 1e3:.1f}K"
    return str(n)


def render_table(methods: Sequence[MethodSummary], config: TrainConfig) -> str:
    """The markdown of ``table.md``."""
    n_seeds = sorted({len(m.seeds) for m in methods})
    seeds_text = "/".join(str(n) for n in n_seeds)
    best_mean = min((m.final[0] for m in methods if m.seeds), default=math.nan)
    bold = len(methods) > 1
    cells = []
    for m in methods:
        text = pm(*m.final) if m.seeds else "failed"
        text = f"**{text}**" if bold and m.final[0] == best_mean else text
        cells.append(text + (f" ({len(m.failed)} failed)" if m.failed and m.seeds else ""))
    params = format_params(methods[0].num_parameters)
    lines = [
        f"Test error of {config.model} on {config.dataset}: mean ± std (sample std) over "
        f"{seeds_text} seeds; each run's error is the mean test error of its last 10 epochs "
        f"(Section 6.1). {config.epochs} epochs, preset {config.preset}.",
        "",
    ]
    if len(methods) <= WIDE_TABLE_MAX_METHODS:  # Table 2 style: one column per method
        lines += [
            "| Network | Params | " + " | ".join(m.display for m in methods) + " |",
            "|---|---|" + "---|" * len(methods),
            f"| {config.model} | {params} | " + " | ".join(cells) + " |",
        ]
    else:  # Table 5 style: one row per method, named by its spec
        lines += [f"| Method | {config.model} ({params}) on {config.dataset} |", "|---|---|"]
        lines += [f"| {m.loss} | {cell} |" for m, cell in zip(methods, cells)]
    lines += [
        "",
        "| Method | Final error (%) | Best error (%) | Seeds | Final error per seed (%) |",
        "|---|---|---|---|---|",
    ]
    for m in methods:
        per_seed = ", ".join([f"{e:.2f}" for e in m.final_errors]
                             + [f"seed {s} failed (diverged)" for s in m.failed])
        lines.append(f"| {m.loss} | {pm(*m.final, unit='')} | {pm(*m.best, unit='')} | "
                     f"{len(m.seeds)} | {per_seed} |")
    return "\n".join(lines) + "\n"


def write_tables(out: Path, methods: Sequence[MethodSummary], config: TrainConfig) -> str:
    """Write ``table.md`` and ``table.csv``; returns the markdown."""
    text = render_table(methods, config)
    atomic_write_text(out / "table.md", text)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["method", "name", "dataset", "model", "epochs", "n_seeds",
                     "final_error_mean", "final_error_std", "best_error_mean", "best_error_std",
                     "num_parameters", "seeds", "final_errors", "failed_seeds"])
    for m in methods:
        (fm, fs), (bm, bs) = m.final, m.best
        writer.writerow([m.loss, m.display, config.dataset, config.model, config.epochs,
                         len(m.seeds), f"{fm:.4f}", "" if fs is None else f"{fs:.4f}",
                         f"{bm:.4f}", "" if bs is None else f"{bs:.4f}",
                         "" if m.num_parameters is None else m.num_parameters,
                         ";".join(str(s) for s in m.seeds),
                         ";".join(f"{e:.4f}" for e in m.final_errors),
                         ";".join(str(s) for s in m.failed)])
    atomic_write_text(out / "table.csv", buf.getvalue())
    return text


def pyplot() -> Any:
    """matplotlib's pyplot with the non-interactive backend."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_band(ax: Any, curves: Sequence[Sequence[float]], label: str, lw: float = 1.6) -> Any:
    """Mean over seeds of ``curves`` (per-epoch values, cut to the shortest) with a ±std
    band; returns ``mean + std`` (for the y-limits)."""
    import numpy as np

    length = min(len(c) for c in curves)
    values = np.array([c[:length] for c in curves], dtype=float)
    epochs = np.arange(1, length + 1)
    mean = np.nanmean(values, axis=0)
    std = np.nanstd(values, axis=0, ddof=1) if values.shape[0] > 1 else np.zeros_like(mean)
    (line,) = ax.plot(epochs, mean, lw=lw, label=label)
    ax.fill_between(epochs, mean - std, mean + std, color=line.get_color(), alpha=0.2, lw=0)
    return mean + std


def zoom_top(ax: Any, tops: Sequence[Any]) -> None:
    """y from 0 to 1.1 x the highest ``mean + std`` past the first 10% of training."""
    import numpy as np

    finite = [float(np.nanmax(t[max(1, int(math.ceil(0.1 * len(t)))):])) for t in tops
              if len(t) > max(1, int(math.ceil(0.1 * len(t))))]
    finite = [t for t in finite if math.isfinite(t)]
    if finite:
        ax.set_ylim(bottom=0.0, top=max(finite) * 1.1 + 1e-6)


def save_figure(fig: Any, path: Path) -> None:
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png")
    pyplot().close(fig)


def seeds_text(summaries: Sequence[MethodSummary]) -> str:
    return "/".join(str(n) for n in sorted({len(m.seeds) for m in summaries}))


def plot_curves(path: Path, methods: Sequence[MethodSummary], config: TrainConfig) -> None:
    """Test error vs. epoch per method: mean over seeds with a ±std band (Fig. 5 style)."""
    fig, ax = pyplot().subplots(figsize=(6.4, 4.2), dpi=120)
    tops = [plot_band(ax, m.curves, f"{m.display} ({pm(*m.final)})") for m in methods if m.curves]
    zoom_top(ax, tops)
    longest = max((len(c) for m in methods for c in m.curves), default=0)
    if longest > 1:  # the epochs averaged into the final error
        ax.axvspan(max(0.5, longest - 9.5), longest + 0.5, color="0.95", zorder=0, lw=0)
    ax.set(xlabel="epoch", ylabel="test error (%)",
           title=f"{config.model} on {config.dataset}: mean ± std over {seeds_text(methods)} seeds")
    ax.grid(True, alpha=0.3)
    ax.legend(title="final error (last 10 epochs)",
              fontsize="small" if len(methods) > WIDE_TABLE_MAX_METHODS else None)
    fig.tight_layout()
    save_figure(fig, path)


def write_classification_comparison(out: Path, variants: Sequence[Any],
                                    runs: dict[str, list[tuple[int, Path]]], config: TrainConfig
                                    ) -> tuple[list[MethodSummary], str, Path]:
    """Summaries, ``table.md``/``table.csv`` and ``curves.png`` of a sweep over criteria;
    returns ``(methods, markdown, curves path)``."""
    methods = [summarize_method(v.loss, runs[v.key]) for v in variants]
    table = write_tables(out, methods, config)
    curves = out / "curves.png"
    plot_curves(curves, methods, config)
    return methods, table, curves
