"""Semi-supervised comparisons in the form of Table 6 (``isda compare --semi ...``).

Every ``(method, loss, seed)`` is trained into ``OUT/<method>/<loss>/seed<k>/`` with
``--loss ce`` (the base method alone, "without ISDA") and/or ``--loss isda`` (Eq. 19,
"with ISDA"), sequentially in this process. Finished runs are reused and interrupted
ones resumed, exactly as ``isda compare`` does. Then:

* ``OUT/table.md`` / ``OUT/table.csv``: one row per base method, columns "without ISDA"
  and "with ISDA" holding the mean ± sample std over seeds of the final test error (mean
  of the last K epochs, Section 6.1, K as in ``isda compare``), the difference paired by
  seed (a seed fixes the labeled split and the initialization of both columns), and, when
  the dataset and label count are those of a Table 6 column, the paper's numbers;
* ``OUT/curves.png``: test error vs. epoch, one panel per method, mean line with a ±std
  band for each column.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

from .checkpoint import atomic_write, atomic_write_text
from .compare import MethodSummary, _pm, parse_seeds, summarize_method, train_or_reuse
from .config import TrainConfig
from .presets import resolve_config
from .reporting import SweepEta, clear_best, counts_text, plural, window_text
from .semi_config import canonical_semi

__all__ = ["ISDA_MODES", "METHOD_NAMES", "SemiComparisonResult", "parse_isda_mode",
           "parse_semi_methods", "plot_semi_curves", "render_semi_table", "run_semi_command",
           "run_semi_comparison", "write_semi_tables"]

#: ``--isda`` values and the losses (columns) they train.
ISDA_MODES = {"off": ("ce",), "on": ("isda",), "both": ("ce", "isda")}

#: Row names of Table 6.
METHOD_NAMES = {"pi": "Π-model", "temporal-ensembling": "Temp-ensemble",
                "mean-teacher": "Mean Teacher", "vat": "VAT"}

_COLUMNS = {"ce": "without ISDA", "isda": "with ISDA"}


def parse_semi_methods(value: Union[str, Sequence[str]]) -> list[str]:
    """``"vat,mean-teacher"`` -> ``["vat", "mean-teacher"]`` (canonical names, aliases such
    as ``mt`` accepted; ``none`` and repeats are errors)."""
    items = value.split(",") if isinstance(value, str) else list(value)
    methods = [canonical_semi(str(v).strip()) for v in items if str(v).strip()]
    if not methods:
        raise ValueError("--semi needs at least one method: pi, temporal-ensembling, "
                         "mean-teacher, vat")
    if "none" in methods:
        raise ValueError("--semi none cannot be compared here; use isda compare without --semi")
    if len(set(methods)) != len(methods):
        raise ValueError(f"--semi lists a method twice: {value!r}")
    return methods


def parse_isda_mode(value: Optional[str]) -> tuple[str, ...]:
    """The losses of an ``--isda`` value (``off``: ce, ``on``: isda, ``both``: ce and isda)."""
    mode = "both" if value is None else str(value).strip().lower()
    if mode not in ISDA_MODES:
        raise ValueError(f"--isda must be one of {', '.join(ISDA_MODES)}; got {value!r}")
    return ISDA_MODES[mode]


@dataclass
class SemiComparisonResult:
    out: Path
    methods: list[str]
    summaries: dict[tuple[str, str], MethodSummary]
    table: str
    table_md: Path
    table_csv: Path
    curves_png: Path
    trained: int
    reused: int


def _paper(method: str, config: TrainConfig) -> Optional[str]:
    from ..semi.methods import PAPER_TABLE6

    entry = PAPER_TABLE6.get((method, config.dataset, int(config.labels)))
    if entry is None:
        return None
    (bm, bs), (im, is_) = entry
    return f"{bm:.2f} ± {bs:.2f} / {im:.2f} ± {is_:.2f}"


def _paired_difference(base: MethodSummary, isda: MethodSummary) -> str:
    """``with - without``: mean ± std of the per-seed differences when both columns ran
    the same seeds (same labeled split and initialization), else the difference of means."""
    if base.seeds != isda.seeds:
        return f"{isda.final[0] - base.final[0]:+.2f}"
    diffs = [b - a for a, b in zip(base.final_errors, isda.final_errors)]
    mean = statistics.fmean(diffs)
    if len(diffs) < 2:
        return f"{mean:+.2f}"
    return f"{mean:+.2f} ± {statistics.stdev(diffs):.2f}"


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
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for m in methods:
        cells = [_pm(*summaries[(m, loss)].final) for loss in losses]
        if both:
            base, isda = summaries[(m, "ce")], summaries[(m, "isda")]
            marked = clear_best([base.final[0], isda.final[0]], [base.final[1], isda.final[1]])
            cells = [f"**{c}**" if i == marked else c for i, c in enumerate(cells)]
            cells.append(_paired_difference(base, isda))
        if show_paper:
            cells.append(papers[m] or "-")
        lines.append(f"| {METHOD_NAMES.get(m, m)} | " + " | ".join(cells) + " |")
    lines += ["", "| Method | Column | Spec | Final error (%) | Best error (%) | Seeds | "
                  "Final error per seed (%) |", "|---|---|---|---|---|---|---|"]
    for m in methods:
        for loss in losses:
            s = summaries[(m, loss)]
            per_seed = ", ".join(f"{e:.2f}" for e in s.final_errors)
            lines.append(f"| {METHOD_NAMES.get(m, m)} | {_COLUMNS[loss]} | `--semi {m} --loss "
                         f"{loss}` | {_pm(*s.final, unit='')} | "
                         f"{_pm(*s.best, unit='')} | {len(s.seeds)} | {per_seed} |")
    return "\n".join(lines) + "\n"


def write_semi_tables(out: Path, methods: Sequence[str], losses: Sequence[str],
                      summaries: dict[tuple[str, str], MethodSummary], config: TrainConfig) -> str:
    """Write ``table.md`` and ``table.csv``; returns the markdown."""
    text = render_semi_table(methods, losses, summaries, config)
    atomic_write_text(out / "table.md", text)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["method", "name", "loss", "isda", "dataset", "model", "labels", "epochs",
                     "final_epochs", "n_seeds", "final_error_mean", "final_error_std",
                     "best_error_mean", "best_error_std", "seeds", "final_errors"])
    for m in methods:
        for loss in losses:
            s = summaries[(m, loss)]
            (fm, fs), (bm, bs) = s.final, s.best
            writer.writerow([m, METHOD_NAMES.get(m, m), loss, int(loss == "isda"), config.dataset,
                             config.model, config.labels, config.epochs, s.window,
                             len(s.seeds),
                             f"{fm:.4f}", "" if fs is None else f"{fs:.4f}", f"{bm:.4f}",
                             "" if bs is None else f"{bs:.4f}",
                             ";".join(str(k) for k in s.seeds),
                             ";".join(f"{e:.4f}" for e in s.final_errors)])
    atomic_write_text(out / "table.csv", buf.getvalue())
    return text


def plot_semi_curves(path: Path, methods: Sequence[str], losses: Sequence[str],
                     summaries: dict[tuple[str, str], MethodSummary], config: TrainConfig) -> None:
    """Test error vs. epoch, one panel per method, mean ± std band per column."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    import numpy as np

    cols = min(len(methods), 2)
    rows = int(math.ceil(len(methods) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.8 * rows), dpi=110,
                             squeeze=False)
    for ax, m in zip(axes.flat, methods):
        tops = []
        for loss in losses:
            s = summaries[(m, loss)]
            length = min(len(c) for c in s.curves)
            curves = np.array([c[:length] for c in s.curves], dtype=float)
            epochs = np.arange(1, length + 1)
            mean = np.nanmean(curves, axis=0)
            std = np.nanstd(curves, axis=0, ddof=1) if curves.shape[0] > 1 else np.zeros_like(mean)
            (line,) = ax.plot(epochs, mean, lw=1.5, label=f"{_COLUMNS[loss]} ({_pm(*s.final)})")
            ax.fill_between(epochs, mean - std, mean + std, color=line.get_color(), alpha=0.2, lw=0)
            skip = max(1, int(math.ceil(0.1 * length)))
            if length > skip:
                tops.append(float(np.nanmax((mean + std)[skip:])))
        finite = [t for t in tops if math.isfinite(t)]
        if finite:
            ax.set_ylim(bottom=0.0, top=max(finite) * 1.1 + 1e-6)
        ax.set_title(METHOD_NAMES.get(m, m))
        ax.set_xlabel("epoch")
        ax.set_ylabel("test error (%)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, title=f"final error ({window_text(s.window)})",
                  title_fontsize=8)
    for ax in list(axes.flat)[len(methods):]:
        ax.set_visible(False)
    n = sorted({len(s.seeds) for s in summaries.values()})
    fig.suptitle(f"{config.model} on {config.dataset}, {config.labels} labels: mean ± std over "
                 f"{counts_text(n, 'seed')}", fontsize=10)
    fig.tight_layout()
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png")
    plt.close(fig)


def run_semi_comparison(base: TrainConfig, methods: Union[str, Sequence[str]],
                        seeds: Union[int, str, Sequence[int]], out: Union[str, Path], *,
                        isda: Optional[str] = "both", force: bool = False, quiet: bool = False,
                        log: Optional[Callable[[str], None]] = None) -> SemiComparisonResult:
    """Train every ``(method, loss, seed)`` into ``out/<method>/<loss>/seed<k>/`` and write
    the Table-6-style table and the curves (see the module docstring).

    Args:
        base: Everything else (dataset, model, labels, epochs, eta1, ...); its ``semi``,
            ``loss``, ``seed`` and ``out`` are replaced per run.
        methods: Base methods, a list or a comma-separated string.
        seeds: A count (``5`` = seeds 0-4) or a list.
        isda: ``"off"`` (ce), ``"on"`` (isda) or ``"both"``.
    """
    say = (lambda msg: None) if quiet else (log or (lambda msg: print(msg, flush=True)))
    methods = parse_semi_methods(methods)
    losses = parse_isda_mode(isda)
    seeds = parse_seeds(seeds)
    out = Path(out)
    resolved = resolve_config(base.replace(semi=methods[0], loss=losses[-1], seed=seeds[0],
                                           out=str(out)))
    what = {("ce",): "without", ("isda",): "with"}.get(losses, "with and without")
    say(f"comparing {', '.join(methods)} {what} ISDA on {resolved.dataset} / {resolved.model} "
        f"with {resolved.labels} labels over seeds {', '.join(map(str, seeds))} "
        f"({plural(resolved.epochs, 'epoch')} each) -> '{out}'")
    total = len(methods) * len(losses) * len(seeds)
    counts = {"trained": 0, "reused": 0}
    done = 0
    eta = SweepEta(total)
    summaries: dict[tuple[str, str], MethodSummary] = {}
    for method in methods:
        for loss in losses:
            runs = []
            for seed in seeds:
                run_dir = out / method / loss / f"seed{seed}"
                cfg = base.replace(semi=method, loss=loss, seed=seed, out=str(run_dir))
                t0 = time.perf_counter()
                result, note = train_or_reuse(cfg, force=force, quiet=quiet)
                done += 1
                counts["reused" if result["status"] == "reused" else "trained"] += 1
                seconds = time.perf_counter() - t0
                left = eta.update(seconds, worked=result["status"] != "reused")
                say(f"[{done}/{total}] {method} {loss} seed {seed}: final error "
                    f"{result['final_error']:.2f}% (best {result['best_error']:.2f}%), {note} in "
                    f"{seconds:.1f}s{left}")
                runs.append((seed, run_dir))
            summaries[(method, loss)] = summarize_method(loss, runs, base.final_epochs)
    table = write_semi_tables(out, methods, losses, summaries, resolved)
    curves = out / "curves.png"
    plot_semi_curves(curves, methods, losses, summaries, resolved)
    return SemiComparisonResult(out, methods, summaries, table, out / "table.md",
                                out / "table.csv", curves, counts["trained"], counts["reused"])


def run_semi_command(args: argparse.Namespace, base: TrainConfig, default_losses: str) -> int:
    """``isda compare --semi M1,M2 [--isda off|on|both]``: called by
    :mod:`~torch_isda.train.command_compare` when ``--semi`` is given."""
    if args.losses != default_losses:
        raise ValueError("with --semi the columns are chosen by --isda off|on|both (ce = the "
                         "base method alone, isda = Eq. 19), not --losses; set ISDA options "
                         "with --lambda0, --kind, --eta1")
    methods = parse_semi_methods(base.semi)
    out = args.out
    if out is None:
        labels = base.labels
        if labels is None:
            from .semi_config import dataset_semi_defaults

            labels = dataset_semi_defaults(base.dataset).get("labels")
        suffix = "" if labels is None else f"-{int(labels)}labels"
        from .compare_out import default_comparison_out  # keyed by configuration

        first = base.replace(semi=methods[0])
        reference = TrainConfig(dataset=base.dataset, model=base.model, semi=methods[0])
        out = default_comparison_out(f"runs/compare-semi-{base.dataset}-{base.model}{suffix}",
                                     first, reference, ignore=("semi", "labels"))
    t0 = time.perf_counter()
    result = run_semi_comparison(base, methods, args.seeds, out, isda=args.isda, force=args.force,
                                 quiet=args.quiet)
    print()
    print(result.table)
    print(f"table: {result.table_md} (csv: {result.table_csv})")
    print(f"curves: {result.curves_png}")
    if not args.quiet:
        print(f"{plural(result.trained, 'run')} trained, {result.reused} reused, "
              f"{time.perf_counter() - t0:.1f}s")
    return 0
