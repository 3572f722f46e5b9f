"""Ablation study of ISDA (TPAMI paper, Section 6.5.5, Table 8).

Settings (all with the run's ``lambda0``): basic cross-entropy; the identity matrix instead
of the covariance; only its diagonal; a single covariance pooled over classes; a constant
``lambda = lambda0`` instead of ``lambda0 t / T``; full ISDA. Trained over seeds with
``isda compare``'s machinery (runs in ``OUT/runs``); the table reports mean ± sample std of
the final test error.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional, Union

from ..train.config import TrainConfig
from ..train.reporting import bold_note, clear_best, plural, window_text
from .common import Logger, Table, fmt_pm, mean_std, pyplot, save_figure, sweep, write_table

__all__ = ["ABLATION_SETTINGS", "run_ablation"]

#: ``(Table 8 row, criterion spec)``.
ABLATION_SETTINGS = (
    ("Basic", "ce"),
    ("Identity matrix", "isda(kind=identity)"),
    ("Diagonal matrix", "isda(kind=diagonal)"),
    ("Single covariance matrix", "isda(kind=shared)"),
    ("Constant lambda0", "isda(kind=full,constant_lambda=True)"),
    ("ISDA", "isda(kind=full)"),
)


def run_ablation(base: TrainConfig, out: Union[str, Path], *,
                 seeds: Union[int, str, Sequence[int]] = 2, force: bool = False,
                 quiet: bool = False, log: Optional[Logger] = None) -> dict[str, Any]:
    """Train the settings of :data:`ABLATION_SETTINGS`; writes ``OUT/ablation.{md,csv,png}``."""
    out = Path(out)
    losses = [spec for _, spec in ABLATION_SETTINGS]
    methods = sweep(base, losses, seeds, out / "runs", force=force, quiet=quiet, log=log)
    from .resolve import resolve_run

    config = resolve_run(base.replace(loss="isda", out=str(out / "runs")))
    rows = []
    for name, spec in ABLATION_SETTINGS:
        errors = methods[spec].final_errors
        mean, std = mean_std(errors)
        rows.append((name, spec, mean, std, errors))
    basic, full = rows[0][2], rows[-1][2]
    marked = clear_best([r[2] for r in rows], [r[3] for r in rows])
    spread = all(r[3] is not None for r in rows)
    window = window_text(methods[ABLATION_SETTINGS[0][1]].window)
    table = Table(
        caption=(f"Ablation study (Table 8): test error (%) of {config.model} on "
                 f"{config.dataset}, mean ± std over seeds (each run: mean test error of its "
                 f"{window}); lambda0 = {config.lambda0}, {plural(config.epochs, 'epoch')}, preset "
                 f"{config.preset}.{bold_note(marked, len(rows), spread)}"),
        headers=["Setting", "criterion", "test error (%)", "Δ vs Basic", "Δ vs ISDA", "seeds",
                 "per seed"],
        rows=[[name, f"`{spec}`", f"**{fmt_pm(m, s)}**" if i == marked else fmt_pm(m, s),
               f"{m - basic:+.2f}", f"{m - full:+.2f}", len(e), ", ".join(f"{x:.2f}" for x in e)]
              for i, (name, spec, m, s, e) in enumerate(rows)],
        csv_headers=["setting", "criterion", "error_mean", "error_std", "delta_vs_basic",
                     "delta_vs_isda", "n_seeds", "errors", "dataset", "model", "lambda0",
                     "epochs"],
        csv_rows=[[name, spec, m, s, m - basic, m - full, len(e),
                   ";".join(f"{x:.4f}" for x in e), config.dataset, config.model,
                   config.lambda0, config.epochs] for name, spec, m, s, e in rows],
    )
    md, csv_path, text = write_table(out, "ablation", table)
    png = _plot(out / "ablation.png", rows, config)
    return {"table": text, "rows": rows, "table_md": md, "table_csv": csv_path, "png": png}


def _plot(path: Path, rows: list, config: TrainConfig) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.8), dpi=120)
    names = [r[0] for r in rows][::-1]
    means = [r[2] for r in rows][::-1]
    stds = [r[3] or 0.0 for r in rows][::-1]
    colors = ["tab:red" if n == "ISDA" else ("0.45" if n == "Basic" else "tab:blue") for n in names]
    y = list(range(len(rows)))
    for yi, m, s, c, r in zip(y, means, stds, colors, rows[::-1]):
        ax.errorbar([m], [yi], xerr=[s], fmt="o", color=c, ms=8, capsize=5, lw=1.6)
        ax.scatter(r[4], [yi] * len(r[4]), s=14, color="k", zorder=3, lw=0, alpha=0.6)
    ax.axvline(rows[0][2], color="0.45", ls="--", lw=1.0, label="Basic")
    ax.set_yticks(y, names)
    low = min(m - s for m, s in zip(means, stds))
    high = max(m + s for m, s in zip(means, stds))
    pad = max(0.1, 0.15 * (high - low))
    ax.set_xlim(max(0.0, low - pad), high + pad)
    ax.set_xlabel("test error (%)  (mean ± std; small dots: seeds)")
    ax.set_title(f"{config.model} on {config.dataset}: ISDA ablation")
    ax.grid(True, axis="x", alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)
