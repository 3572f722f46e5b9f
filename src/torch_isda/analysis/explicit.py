"""Explicit vs implicit semantic data augmentation (TPAMI paper, Section 6.5.3, Fig. 10).

For every number of samples ``M`` the network is trained with Eq. (5) on ``M`` augmented
features per sample (``explicit_sda(m=M)``, the estimated class covariances of ISDA);
``M = 0`` is the cross-entropy baseline (``ce``) and ``M = infinity`` is ISDA (``isda``).
The "Cov" baseline learns the covariances by gradient descent instead
(``learned_cov(m=M)`` explicit, ``learned_cov(m=inf)`` implicit, see
:mod:`torch_isda.train.criteria.explicit_augmentation` for our reading of it). All runs go through
``isda compare``'s machinery (``OUT/runs``); the table reports mean ± std of the final test
error over seeds.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional, Union

from ..train.config import TrainConfig
from ..train.reporting import plural
from .common import Logger, Table, fmt_pm, mean_std, pyplot, save_figure, sweep, write_table

__all__ = ["PAPER_MS", "parse_ms", "run_explicit"]

#: The sample numbers of Fig. 10.
PAPER_MS = (1, 2, 5, 10, 20)


def parse_ms(value: Union[str, Sequence[int]]) -> list[int]:
    """``"1,2,5"`` -> ``[1, 2, 5]`` (positive, distinct, sorted)."""
    if isinstance(value, str):
        try:
            ms = [int(v) for v in value.split(",") if v.strip()]
        except ValueError:
            raise ValueError(f"--ms expects comma-separated positive integers such as 1,2,5; "
                             f"got {value!r}") from None
    else:
        ms = [int(v) for v in value]
    if not ms or any(m < 1 for m in ms) or len(set(ms)) != len(ms):
        raise ValueError(f"--ms expects distinct positive integers (M = 0 is the baseline and "
                         f"M = infinity ISDA, both always included); got {value!r}")
    return sorted(ms)


def _cov_spec(m: Optional[int], cov_args: str) -> str:
    args = ("m=inf" if m is None else f"m={m}") + (f",{cov_args}" if cov_args else "")
    return f"learned_cov({args})"


def run_explicit(base: TrainConfig, out: Union[str, Path], *,
                 ms: Union[str, Sequence[int]] = PAPER_MS,
                 seeds: Union[int, str, Sequence[int]] = 2, learned: bool = True,
                 cov_args: str = "", force: bool = False, quiet: bool = False,
                 log: Optional[Logger] = None) -> dict[str, Any]:
    """Train the sweep and write ``OUT/explicit.{md,csv,png}``.

    ``learned``: include the "Cov" baseline; ``cov_args``: extra ``learned_cov`` arguments,
    e.g. ``"beta=0.5,std=0.2"``.
    """
    ms = parse_ms(ms)
    out = Path(out)
    estimated = {0: "ce", **{m: f"explicit_sda(m={m})" for m in ms}, None: "isda"}
    learned_specs = {m: _cov_spec(m, cov_args) for m in [*ms, None]} if learned else {}
    losses = list(estimated.values()) + list(learned_specs.values())
    methods = sweep(base, losses, seeds, out / "runs", force=force, quiet=quiet, log=log)
    from .resolve import resolve_run

    config = resolve_run(base.replace(loss="isda", out=str(out / "runs")))

    def stats(spec: Optional[str]) -> Optional[tuple[float, Optional[float], list[float]]]:
        if spec is None:
            return None
        errors = methods[spec].final_errors
        return (*mean_std(errors), errors)

    points = [0, *ms, None]
    rows = []
    for m in points:
        est = stats(estimated[m])
        cov = stats(estimated[0] if m == 0 else learned_specs.get(m))
        rows.append((m, estimated[m], est, ("ce" if m == 0 else learned_specs.get(m)), cov))
    table = _explicit_table(rows, config)
    md, csv_path, text = write_table(out, "explicit", table)
    png = _plot(out / "explicit.png", rows, config)
    return {"table": text, "rows": rows, "table_md": md, "table_csv": csv_path, "png": png}


def _explicit_table(rows: list, config: Any) -> Table:
    """The markdown / CSV table of :func:`run_explicit` (``rows``: one per M)."""
    label = {0: "0 (Basic)", None: "∞ (implicit)"}
    md_rows, csv_rows = [], []
    for m, est_spec, est, cov_spec, cov in rows:
        name = label.get(m, str(m))
        md_rows.append([name, fmt_pm(est[0], est[1]), f"`{est_spec}`",
                        "-" if cov is None else fmt_pm(cov[0], cov[1]),
                        "-" if cov_spec is None else f"`{cov_spec}`"])
        csv_rows.append(["inf" if m is None else m, est_spec, est[0], est[1],
                         ";".join(f"{x:.4f}" for x in est[2]), cov_spec,
                         None if cov is None else cov[0], None if cov is None else cov[1],
                         "" if cov is None else ";".join(f"{x:.4f}" for x in cov[2]),
                         len(est[2]), config.dataset, config.model, config.lambda0, config.epochs])
    n_seeds = len(rows[0][2][2])
    return Table(
        caption=(f"Explicit vs implicit semantic data augmentation (Fig. 10): test error (%) of "
                 f"{config.model} on {config.dataset}, mean ± std over {plural(n_seeds, 'seed')}, vs the "
                 f"number M of sampled augmented features per sample (Eq. 5). M = 0: basic CE; "
                 f"M = ∞: ISDA's bound (Eq. 7). Estimated Σ: ISDA's online class covariances "
                 f"(kind {config.kind}); learned Σ (Cov): Σ_c = D_c D_cᵀ learned by SGD with "
                 f"DistributionNet's feature-uncertainty loss. lambda0 = {config.lambda0}, "
                 f"{plural(config.epochs, 'epoch')}."),
        headers=["M", "estimated Σ (explicit SDA / ISDA)", "criterion", "learned Σ (Cov)",
                 "criterion"],
        rows=md_rows,
        csv_headers=["m", "estimated_criterion", "estimated_mean", "estimated_std",
                     "estimated_errors", "learned_criterion", "learned_mean", "learned_std",
                     "learned_errors", "n_seeds", "dataset", "model", "lambda0", "epochs"],
        csv_rows=csv_rows,
    )


def _plot(path: Path, rows: list, config: TrainConfig) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    x = list(range(len(rows)))
    labels = ["0" if m == 0 else ("∞" if m is None else str(m)) for m, *_ in rows]
    est = [r[2] for r in rows]
    ax.errorbar(x, [e[0] for e in est], yerr=[e[1] or 0.0 for e in est], fmt="o-",
                color="tab:blue", capsize=4, lw=1.6, label="estimated Σ (explicit SDA → ISDA)")
    cov_points = [(xi, r[4]) for xi, r in zip(x, rows) if r[4] is not None]
    if len(cov_points) > 1:
        ax.errorbar([p[0] + 0.08 for p in cov_points], [p[1][0] for p in cov_points],
                    yerr=[p[1][1] or 0.0 for p in cov_points], fmt="s-", color="tab:red",
                    capsize=4, lw=1.6, label="learned Σ (Cov)")
    ax.axhline(est[0][0], color="0.3", ls="--", lw=1.0, label="Basic (M = 0)")
    ax.axvline(len(rows) - 1.5, color="0.7", ls=":", lw=1.0)
    ax.set_xticks(x, labels)
    ax.set_xlabel("M (sampled augmented features per sample; ∞ = implicit)")
    ax.set_ylabel("test error (%)")
    ax.set_title(f"{config.model} on {config.dataset}: explicit vs implicit SDA")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)
