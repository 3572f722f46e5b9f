"""``isda compare`` for segmentation runs: Table-7-style ``OUT/table.md``, ``OUT/table.csv``
and ``OUT/curves.png`` (described in docs/segmentation.md), and one run's summary lines.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from ...config import TrainConfig
from ...reporting import clear_best, counts_text, fmt_pm, plural
from ...rundir import RESULT_NAME
from .config import TABLE7_COLUMNS
from ...tables import (MethodSummary, format_params, markdown_table, plot_band, pyplot,
                     save_figure, stats_cells, write_table_files)

__all__ = ["SegmentationMethodSummary", "format_segmentation_result", "plot_miou_curves",
           "render_segmentation_table", "single_class_warning", "summarize_segmentation_method",
           "write_segmentation_comparison"]

COLUMN_KEYS = tuple(key for key, *_ in TABLE7_COLUMNS)


@dataclass
class SegmentationMethodSummary(MethodSummary):
    """A method's runs: ``miou[column]`` per seed (%), ``miou_curves`` per seed and epoch.
    ``final_errors`` (``100 - single-scale mIoU``) keep the classification interface."""

    miou: dict[str, list[float]] = field(default_factory=dict)
    miou_curves: list[list[float]] = field(default_factory=list)
    eval_scales: list[float] = field(default_factory=list)
    predicted_classes: list[Optional[int]] = field(default_factory=list)  # per seed

    def column(self, key: str) -> tuple[float, Optional[float]]:
        return self.stats(self.miou[key])


def _number(value: Any) -> float:
    return math.nan if value is None else float(value)


def summarize_segmentation_method(loss: str, run_dirs: Sequence[tuple[int, Path]]
                                  ) -> SegmentationMethodSummary:
    """Read ``result.json`` and ``metrics.json`` of a method's segmentation runs."""
    summary = SegmentationMethodSummary(loss, [], [], [], None, miou={k: [] for k in COLUMN_KEYS})
    for seed, run_dir in run_dirs:
        if not (run_dir / RESULT_NAME).is_file():  # diverged
            continue
        result = json.loads((run_dir / RESULT_NAME).read_text())
        rows = json.loads((run_dir / "metrics.json").read_text())
        if result.get("task") != "segmentation":
            raise ValueError(f"'{run_dir}' does not hold a segmentation run")
        for key in COLUMN_KEYS:
            summary.miou[key].append(_number(result.get(key)))
        summary.final_errors.append(_number(result.get("final_error")))
        summary.best_errors.append(_number(result.get("best_error")))
        summary.miou_curves.append([_number(r.get("test_miou")) for r in rows])
        summary.curves.append([_number(r.get("test_error")) for r in rows])
        summary.num_parameters = result.get("num_parameters", summary.num_parameters)
        summary.eval_scales = list(result.get("eval_scales") or summary.eval_scales)
        summary.predicted_classes.append(result.get("predicted_classes"))
        summary.seeds.append(seed)
    return summary


def _model_text(config: TrainConfig) -> str:
    kwargs = ", ".join(f"{k}={v}" for k, v in sorted(config.model_kwargs.items()))
    return f"{config.model} ({kwargs})" if kwargs else config.model


def degenerate_runs(methods: Sequence[SegmentationMethodSummary]) -> list[str]:
    """One sentence per method with runs whose final model predicts a single class."""
    out = []
    for m in methods:
        seeds = [s for s, n in zip(m.seeds, m.predicted_classes) if n == 1]
        if seeds:
            out.append(f"{m.display} (`{m.loss}`) predicts a single class for every test "
                       f"pixel with seed{'s' if len(seeds) > 1 else ''} "
                       f"{', '.join(map(str, seeds))}: its mIoU only reflects the class "
                       f"frequencies (train longer, e.g. more --epochs)")
    return out


def render_segmentation_table(methods: Sequence[SegmentationMethodSummary],
                              config: TrainConfig) -> str:
    """The markdown of ``table.md`` (Table 7 layout)."""
    n_seeds = counts_text([len(m.seeds) for m in methods], "seed")
    scale_text = ", ".join(f"{s:g}" for s in methods[0].eval_scales)
    marked = {key: clear_best([m.column(key)[0] for m in methods],
                              [m.column(key)[1] for m in methods], lower_is_better=False)
              for key in COLUMN_KEYS}
    baseline = methods[0]
    lines = [
        f"mIoU (%) of {_model_text(config)} on {config.dataset}: mean ± std (sample std) over "
        f"{n_seeds} of the final model after {plural(config.epochs, 'epoch')} (preset "
        f"{config.preset}, loss at {config.seg_loss_at} resolution, aux weight "
        f"{config.aux_weight:g}). Multi-scale: probabilities averaged over scales "
        f"{{{scale_text}}}; + Flip: and their left-right flips (Table 7). In brackets: the "
        f"change relative to {baseline.display}. In bold: the best mean of a column, ahead "
        f"of every other by more than one standard deviation of both"
        f"{'' if any(v is not None for v in marked.values()) else ' (none here)'}.",
        "",
    ]
    rows = []
    for i, m in enumerate(methods):
        cells = []
        for key in COLUMN_KEYS:
            mean, std = m.column(key)
            text = fmt_pm(mean, std)
            if i == marked[key]:
                text = f"**{text}**"
            if m is not baseline:
                delta = mean - baseline.column(key)[0]
                text += f" ({'↑' if delta >= 0 else '↓'} {abs(delta):.2f})"
            cells.append(text)
        rows.append([m.display, f"`{m.loss}`", format_params(m.num_parameters), *cells])
    lines += markdown_table(["Method", "Spec", "Params", *(h for _, h, *_ in TABLE7_COLUMNS)], rows)
    warnings = degenerate_runs(methods)
    if warnings:
        lines += ["", *(f"**Warning**: {w}" for w in warnings)]
    lines += ["", *markdown_table(
        ["Method", "Spec", "Seeds", *(f"{h} per seed" for _, h, *_ in TABLE7_COLUMNS)],
        [[m.display, f"`{m.loss}`", ", ".join(map(str, m.seeds)),
          *(", ".join(f"{v:.2f}" for v in m.miou[key]) for key in COLUMN_KEYS)] for m in methods])]
    return "\n".join(lines) + "\n"


def plot_miou_curves(path: Path, methods: Sequence[SegmentationMethodSummary],
                     config: TrainConfig) -> None:
    """Single-scale test mIoU vs. epoch per method: mean over seeds with a ±std band."""
    fig, ax = pyplot().subplots(figsize=(6.4, 4.2), dpi=120)
    for m in [m for m in methods if m.miou_curves]:  # runs that diverged have none
        plot_band(ax, m.miou_curves, f"{m.display} ({fmt_pm(*m.column('miou_single'))}%)")
    n = sorted({len(m.seeds) for m in methods})
    ax.set(xlabel="epoch", ylabel="test mIoU (%), single scale",
           title=f"{config.model} on {config.dataset}: mean ± std over {counts_text(n, 'seed')}")
    ax.grid(True, alpha=0.3)
    ax.legend(title="final single-scale mIoU")
    fig.tight_layout()
    save_figure(fig, path)


def write_segmentation_comparison(out: Path, variants: Sequence[Any],
                                  runs: dict[str, list[tuple[int, Path]]], config: TrainConfig
                                  ) -> tuple[list[SegmentationMethodSummary], str, Path]:
    """Summaries, ``table.md``/``table.csv`` and ``curves.png`` of a segmentation
    comparison; returns ``(methods, markdown, curves path)``."""
    methods = [summarize_segmentation_method(v.loss, runs[v.key]) for v in variants]
    header = ["method", "name", "dataset", "model", "epochs", "n_seeds",
              *(f"{key}_{stat}" for key in COLUMN_KEYS for stat in ("mean", "std")),
              "eval_scales", "num_parameters", "seeds", *COLUMN_KEYS]
    rows = [[m.loss, m.display, config.dataset, config.model, config.epochs, len(m.seeds),
             *(cell for key in COLUMN_KEYS for cell in stats_cells(*m.column(key))),
             ";".join(f"{s:g}" for s in m.eval_scales), m.num_parameters,
             ";".join(str(s) for s in m.seeds),
             *(";".join(f"{v:.4f}" for v in m.miou[key]) for key in COLUMN_KEYS)]
            for m in methods]
    table = render_segmentation_table(methods, config)
    write_table_files(out, table, header, rows)
    curves = out / "curves.png"
    plot_miou_curves(curves, methods, config)
    return methods, table, curves


def format_segmentation_result(result: dict[str, Any]) -> str:
    """The one-run summary line of ``isda train`` for segmentation (Table 7 columns)."""
    cells = [f"{header.lower()} {'-' if result.get(key) is None else f'{result[key]:.2f}%'}"
             for key, header, *_ in TABLE7_COLUMNS]
    scales = ",".join(f"{s:g}" for s in result.get("eval_scales") or [])
    return f"test mIoU: {'  '.join(cells)}" + (f"  (scales {scales})" if scales else "")


def single_class_warning(result: dict[str, Any], name: str = "the model") -> Optional[str]:
    """A warning when the final model of a segmentation run predicts a single class for
    every test pixel (``predicted_classes == 1`` in ``result.json``), else ``None``."""
    if result.get("predicted_classes") != 1:
        return None
    return (f"warning: {name} predicts a single class for every test pixel (its mIoU only "
            f"reflects the class frequencies); train longer (more --epochs) or check --lr")
