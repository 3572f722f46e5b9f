"""Table-6-style files of ``isda compare --semi ...`` (described in docs/semi_supervised.md):
one row per base method, the columns "without ISDA" (``--loss ce``) and "with ISDA"
(``--loss isda``, Eq. 19), their difference paired by seed and the paper's numbers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

from ...config import TrainConfig
from ...reporting import clear_best, counts_text, fmt_pm, mean_std, plural, window_text
from ...tables import (MethodSummary, markdown_table, plot_band, pyplot, save_figure, stats_cells,
                     summarize_method, write_table_files, zoom_top)

__all__ = ["METHOD_NAMES", "plot_semi_curves", "render_semi_table", "write_semi_comparison"]

#: Row names of Table 6.
METHOD_NAMES = {"pi": "Π-model", "temporal-ensembling": "Temp-ensemble",
                "mean-teacher": "Mean Teacher", "vat": "VAT"}

_COLUMNS = {"ce": "without ISDA", "isda": "with ISDA"}


def _paper(method: str, config: TrainConfig) -> Optional[str]:
    from ....semi.methods import PAPER_TABLE6

    entry = PAPER_TABLE6.get((method, config.dataset, int(config.labels)))
    if entry is None:
        return None
    return f"{fmt_pm(*entry[0])} / {fmt_pm(*entry[1])}"


def _failed(summary: MethodSummary) -> str:
    return f" ({len(summary.failed)} failed)" if summary.failed else ""


def _paired_difference(base: MethodSummary, isda: MethodSummary) -> str:
    """``with - without``: mean ± std of the per-seed differences when both columns ran
    the same seeds, else the difference of means; ``-`` when a column has no finished run."""
    if not base.seeds or not isda.seeds:
        return "-"
    if base.seeds != isda.seeds:
        return f"{isda.final[0] - base.final[0]:+.2f}"
    mean, std = mean_std([b - a for a, b in zip(base.final_errors, isda.final_errors)])
    return f"{mean:+.2f}" if std is None else f"{mean:+.2f} ± {std:.2f}"


def render_semi_table(methods: Sequence[str], losses: Sequence[str],
                      summaries: dict[tuple[str, str], MethodSummary], config: TrainConfig) -> str:
    """The markdown of ``table.md`` (``config``: a resolved config of the comparison)."""
    n_seeds = sorted({len(s.seeds) for s in summaries.values()})
    window = max(s.window for s in summaries.values())
    papers = {m: _paper(m, config) for m in methods}
    show_paper = any(p is not None for p in papers.values())
    both = tuple(losses) == ("ce", "isda")
    header = ["Method", *(_COLUMNS[loss] for loss in losses)]
    if both:
        header.append("Δ (with − without, paired by seed)")
    if show_paper:
        header.append(f"paper Table 6 ({config.dataset}, {config.labels} labels)")
    rows, seed_rows = [], []
    for m in methods:
        cells = [fmt_pm(*summaries[(m, loss)].final, unit="%") + _failed(summaries[(m, loss)])
                 for loss in losses]
        if both:
            base, isda = summaries[(m, "ce")], summaries[(m, "isda")]
            marked = clear_best([base.final[0], isda.final[0]], [base.final[1], isda.final[1]])
            cells = [f"**{c}**" if i == marked else c for i, c in enumerate(cells)]
            cells.append(_paired_difference(base, isda))
        if show_paper:
            cells.append(papers[m] or "-")
        rows.append([METHOD_NAMES.get(m, m), *cells])
        for loss in losses:
            s = summaries[(m, loss)]
            seed_rows.append([METHOD_NAMES.get(m, m), _COLUMNS[loss], f"`--semi {m} --loss {loss}`",
                              fmt_pm(*s.final), fmt_pm(*s.best), len(s.seeds),
                              ", ".join(f"{e:.2f}" for e in s.final_errors)])
    lines = [
        f"Test error (%) of {config.model} on {config.dataset} with {config.labels} labels "
        f"(semi-supervised, Table 6 style): mean ± std (sample std) over "
        f"{counts_text(n_seeds, 'seed')}; each run's error is the mean test error of its "
        f"{window_text(window)} (Section 6.1; --final-epochs). "
        f"{plural(config.epochs, 'epoch')}, preset {config.preset}, "
        f"lambda0 {config.lambda0:g}, eta1 {config.eta1:g}; without ISDA = the base method "
        f"alone (--loss ce), with ISDA = Eq. (19) (--loss isda)."
        + (" In bold: the better column of a row, where the difference exceeds one standard "
           "deviation of both." if both else ""),
        "",
        *markdown_table(header, rows),
        "",
        *markdown_table(["Method", "Column", "Spec", "Final error (%)", "Best error (%)", "Seeds",
                         "Final error per seed (%)"], seed_rows),
    ]
    return "\n".join(lines) + "\n"


def plot_semi_curves(path: Path, methods: Sequence[str], losses: Sequence[str],
                     summaries: dict[tuple[str, str], MethodSummary], config: TrainConfig) -> None:
    """Test error vs. epoch, one panel per method, mean ± std band per column."""
    cols = min(len(methods), 2)
    rows = int(math.ceil(len(methods) / cols))
    fig, axes = pyplot().subplots(rows, cols, figsize=(5.2 * cols, 3.8 * rows), dpi=110,
                                  squeeze=False)
    for ax, m in zip(axes.flat, methods):
        runs = [(loss, summaries[(m, loss)]) for loss in losses if summaries[(m, loss)].curves]
        zoom_top(ax, [plot_band(ax, s.curves, f"{_COLUMNS[loss]} ({fmt_pm(*s.final, unit='%')})",
                                lw=1.5) for loss, s in runs])
        ax.set(title=METHOD_NAMES.get(m, m), xlabel="epoch", ylabel="test error (%)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, title=f"final error ({window_text(runs[0][1].window)})"
                  if runs else None, title_fontsize=8)
    for ax in list(axes.flat)[len(methods):]:
        ax.set_visible(False)
    fig.suptitle(f"{config.model} on {config.dataset}, {config.labels} labels: mean ± std over "
                 f"{counts_text(sorted({len(s.seeds) for s in summaries.values()}), 'seed')}",
                 fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


def write_semi_comparison(out: Path, variants: Sequence[Any],
                          runs: dict[str, list[tuple[int, Path]]], config: TrainConfig
                          ) -> tuple[list[MethodSummary], str, Path]:
    """Summaries, ``table.md``/``table.csv`` and ``curves.png`` of a sweep over
    semi-supervised methods; returns ``(summaries, markdown, curves path)``."""
    methods = list(dict.fromkeys(v.semi for v in variants))
    losses = list(dict.fromkeys(v.loss for v in variants))
    summaries = {(v.semi, v.loss): summarize_method(v.loss, runs[v.key], config.final_epochs)
                 for v in variants}
    header = ["method", "name", "loss", "isda", "dataset", "model", "labels", "epochs",
              "final_epochs", "n_seeds", "final_error_mean", "final_error_std",
              "best_error_mean", "best_error_std", "seeds", "final_errors"]
    rows = []
    for m in methods:
        for loss in losses:
            s = summaries[(m, loss)]
            rows.append([m, METHOD_NAMES.get(m, m), loss, int(loss == "isda"), config.dataset,
                         config.model, config.labels, config.epochs, s.window, len(s.seeds),
                         *stats_cells(*s.final), *stats_cells(*s.best),
                         ";".join(str(k) for k in s.seeds),
                         ";".join(f"{e:.4f}" for e in s.final_errors)])
    table = render_semi_table(methods, losses, summaries, config)
    write_table_files(out, table, header, rows)
    curves = out / "curves.png"
    plot_semi_curves(curves, methods, losses, summaries, config)
    return list(summaries.values()), table, curves
