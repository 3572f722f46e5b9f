"""Sensitivity of ISDA to ``lambda0`` (TPAMI paper, Section 6.5.4, Fig. 11a).

Trains ``isda(lambda0=v)`` for every ``v`` of the grid and every seed (``isda compare``'s
machinery, runs in ``OUT/runs``) and reports the final test error (mean of the last K
epochs) as mean ± sample std over seeds. ``lambda0 = 0`` is exactly the cross-entropy
baseline (the bound reduces to CE and the estimator consumes no randomness), drawn as the
dashed reference line of Fig. 11.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional, Union

from ..train.config import TrainConfig
from ..train.reporting import bold_note, clear_best, window_text
from .common import Logger, Table, fmt_pm, mean_std, pyplot, save_figure, sweep, write_table

__all__ = ["PAPER_LAMBDAS", "parse_floats", "run_sensitivity"]

#: The grid of Fig. 11 (supervised).
PAPER_LAMBDAS = (0.0, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0)


def parse_floats(value: Union[str, Sequence[float]], name: str = "values") -> list[float]:
    """``"0,0.5,1"`` -> ``[0.0, 0.5, 1.0]`` (non-negative, distinct)."""
    if isinstance(value, str):
        try:
            values = [float(v) for v in value.split(",") if v.strip()]
        except ValueError:
            raise ValueError(f"{name} must be comma-separated numbers such as 0,0.5,1; got "
                             f"{value!r}") from None
    else:
        values = [float(v) for v in value]
    if not values:
        raise ValueError(f"no {name} given")
    if any(not v >= 0 for v in values):
        raise ValueError(f"{name} must be non-negative; got {values}")
    if len(set(values)) != len(values):
        raise ValueError(f"{name} must be distinct; got {values}")
    return values


def _spec(value: float) -> str:
    return f"isda(lambda0={value:g})"


def run_sensitivity(base: TrainConfig, out: Union[str, Path], *,
                    lambdas: Union[str, Sequence[float]] = PAPER_LAMBDAS,
                    seeds: Union[int, str, Sequence[int]] = 2, force: bool = False,
                    quiet: bool = False, log: Optional[Logger] = None) -> dict[str, Any]:
    """Sweep ``lambda0`` over ``lambdas`` and ``seeds``; writes ``OUT/sensitivity.{md,csv,png}``.

    Returns ``{"table": markdown, "rows": [(lambda0, mean, std, errors)], ...paths}``.
    """
    lambdas = parse_floats(lambdas, "lambdas")
    out = Path(out)
    losses = [_spec(v) for v in lambdas]
    methods = sweep(base, losses, seeds, out / "runs", force=force, quiet=quiet, log=log)
    from .resolve import resolve_run

    config = resolve_run(base.replace(loss=losses[0], out=str(out / "runs")))
    rows = []
    for value, spec in zip(lambdas, losses):
        errors = methods[spec].final_errors
        mean, std = mean_std(errors)
        rows.append((value, mean, std, errors))
    baseline = next((r for r in rows if r[0] == 0.0), None)
    marked = clear_best([r[1] for r in rows], [r[2] for r in rows])
    spread = all(r[2] is not None for r in rows)
    md_rows = []
    for i, (value, mean, std, errors) in enumerate(rows):
        cell = fmt_pm(mean, std)
        cell = f"**{cell}**" if i == marked else cell
        delta = "-" if baseline is None else f"{mean - baseline[1]:+.2f}"
        label = f"{value:g}" + (" (= Basic, CE)" if value == 0.0 else "")
        md_rows.append([label, cell, delta, len(errors), ", ".join(f"{e:.2f}" for e in errors)])
    table = Table(
        caption=(f"Sensitivity to lambda0 (Fig. 11): test error (%) of {config.model} on "
                 f"{config.dataset} with ISDA (kind {config.kind}), mean ± std over seeds; each "
                 f"run's error is the mean test error of its "
                 f"{window_text(methods[losses[0]].window)}. {config.epochs} "
                 f"epochs, preset {config.preset}.{bold_note(marked, len(rows), spread)}"),
        headers=["lambda0", "test error (%)", "Δ vs lambda0 = 0", "seeds", "per seed"],
        rows=md_rows,
        csv_headers=["lambda0", "error_mean", "error_std", "delta_vs_basic", "n_seeds", "errors",
                     "dataset", "model", "kind", "epochs"],
        csv_rows=[[v, m, s, None if baseline is None else m - baseline[1], len(e),
                   ";".join(f"{x:.4f}" for x in e), config.dataset, config.model, config.kind,
                   config.epochs] for v, m, s, e in rows],
    )
    md, csv_path, text = write_table(out, "sensitivity", table)
    png = _plot(out / "sensitivity.png", rows, config)
    return {"table": text, "rows": rows, "table_md": md, "table_csv": csv_path, "png": png}


def _plot(path: Path, rows: list, config: TrainConfig) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    x = list(range(len(rows)))
    means = [r[1] for r in rows]
    stds = [r[2] or 0.0 for r in rows]
    ax.errorbar(x, means, yerr=stds, fmt="o-", color="tab:red", capsize=4, lw=1.6,
                label="ISDA (mean ± std over seeds)")
    for xi, (_, _, _, errors) in zip(x, rows):
        ax.scatter([xi] * len(errors), errors, s=10, color="tab:red", alpha=0.35, lw=0)
    base = next((r for r in rows if r[0] == 0.0), None)
    if base is not None:
        ax.axhline(base[1], color="0.3", ls="--", lw=1.2, label="Basic (lambda0 = 0, CE)")
        if base[2]:
            ax.axhspan(base[1] - base[2], base[1] + base[2], color="0.5", alpha=0.12, lw=0)
    ax.set_xticks(x, [f"{r[0]:g}" for r in rows])
    ax.set_xlabel(r"$\lambda_0$")
    ax.set_ylabel("test error (%)")
    ax.set_title(f"{config.model} on {config.dataset}: sensitivity to " + r"$\lambda_0$")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)
