"""Compare training criteria over several seeds (``isda compare``).

Every ``(loss, seed)`` pair is trained into ``OUT/<loss>/seed<k>/`` (sequentially, in this
process). Finished runs are reused and interrupted ones resumed, so re-running an
interrupted comparison continues where it stopped. Then:

* ``OUT/table.md`` / ``OUT/table.csv``: mean ± sample std over seeds of the final test
  error per method, in the form of Table 2: the mean test error of the last K epochs
  (Section 6.1; K = ``--final-epochs``, by default the paper's 10 but at most a tenth of
  the run, see :func:`~torch_isda.train.reporting.final_window`), recomputed from each
  run's ``metrics.json``, so finished runs are re-summarized with the requested window;
* ``OUT/curves.png``: test error vs. epoch per method, mean line with a ±std band (as in
  Fig. 5).

Segmentation configs get a Table-7-style mIoU table and mIoU curves instead
(:mod:`torch_isda.train.segmentation_compare`).
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from .checkpoint import CHECKPOINT_NAME, atomic_write, atomic_write_text
from .config import TrainConfig
from .criteria import parse_criterion_spec, spec_dirname
from .curve_inset import INSET_MIN_METHODS, add_last_epochs_inset
from .method_names import PAPER_NAMES, display_name
from .metrics import final_error
from .presets import resolve_config
from .reporting import (SweepEta, bold_note, clear_best, counts_text, final_window, plural,
                        window_text)
from .trainer import RESULT_NAME, config_differences, train

__all__ = ["DISPLAY_NAMES", "MethodSummary", "parse_losses", "parse_seeds", "plot_curves",
           "run_comparison", "summarize_method", "write_tables"]

#: The paper's names of the criteria (see :mod:`torch_isda.train.method_names`).
DISPLAY_NAMES = PAPER_NAMES

#: Up to this many methods the summary is one row with a column per method (Table 2
#: style); with more, one row per method named by its spec (Table 5 style).
WIDE_TABLE_MAX_METHODS = 4


#: What ``--seeds`` accepts (the message of its errors).
SEEDS_HELP = ("a count N >= 1 (seeds 0..N-1, e.g. 5) or a comma-separated list of seeds "
              "(0,3,7; a single seed with a trailing comma: 3,)")


def parse_seeds(value: Union[int, str, Sequence[int]]) -> list[int]:
    """``5`` or ``"5"`` -> seeds 0..4; ``"0,3,7"`` or ``[0, 3, 7]`` -> those seeds; a
    single seed is ``"3,"`` (or ``[3]``)."""
    if isinstance(value, int):
        if value < 1:
            raise ValueError(f"--seeds expects {SEEDS_HELP}; got {value}: a count must be "
                             f"at least 1")
        return list(range(value))
    if isinstance(value, str):
        text = value.strip()
        if "," not in text:
            try:
                count = int(text)
            except ValueError:
                raise ValueError(f"--seeds expects {SEEDS_HELP}; got {value!r}") from None
            return parse_seeds(count)
        try:
            seeds = [int(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise ValueError(f"--seeds expects {SEEDS_HELP}; got {value!r}") from None
    else:
        seeds = [int(v) for v in value]
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be a non-empty list without repeats; got {value!r}")
    return seeds


def parse_losses(value: Union[str, Sequence[str]]) -> list[str]:
    """``"ce,isda"`` -> ``["ce", "isda"]`` (commas inside parentheses are kept, so
    ``"ce,isda(lambda0=1,kind=diagonal)"`` works); each spec is validated."""
    if isinstance(value, str):
        parts, depth, current = [], 0, []
        for ch in value:
            depth += ch == "("
            depth -= ch == ")"
            if ch == "," and depth == 0:
                parts.append("".join(current))
                current = []
            else:
                current.append(ch)
        parts.append("".join(current))
        losses = [p.strip() for p in parts if p.strip()]
    else:
        losses = [str(v).strip() for v in value]
    if not losses:
        raise ValueError("no losses to compare")
    for spec in losses:
        parse_criterion_spec(spec, check_registered=True)
    dirs = [spec_dirname(s) for s in losses]
    if len(set(dirs)) != len(dirs):
        raise ValueError(f"losses {losses} are not distinct (directory names {dirs})")
    return losses


@dataclass
class MethodSummary:
    loss: str
    seeds: list[int]
    final_errors: list[float]
    best_errors: list[float]
    num_parameters: Optional[int]
    curves: list[list[float]] = field(default_factory=list)  # test error per epoch, per seed
    window: int = 1  # the last epochs averaged into each final error

    @property
    def display(self) -> str:
        return display_name(self.loss)

    @staticmethod
    def _mean_std(values: list[float]) -> tuple[float, Optional[float]]:
        mean = statistics.fmean(values)
        std = statistics.stdev(values) if len(values) > 1 else None  # sample std (n - 1)
        return mean, std

    @property
    def final(self) -> tuple[float, Optional[float]]:
        return self._mean_std(self.final_errors)

    @property
    def best(self) -> tuple[float, Optional[float]]:
        return self._mean_std(self.best_errors)


def summarize_method(loss: str, run_dirs: Sequence[tuple[int, Path]],
                     final_epochs: Optional[int] = None) -> MethodSummary:
    """Read ``result.json`` and ``metrics.json`` of a method's runs; each final error is
    the mean test error of the run's last :func:`~torch_isda.train.reporting.final_window`
    epochs (``final_epochs`` or the default window)."""
    finals, bests, curves, params, seeds = [], [], [], None, []
    windows = set()
    for seed, run_dir in run_dirs:
        result = json.loads((run_dir / RESULT_NAME).read_text())
        rows = json.loads((run_dir / "metrics.json").read_text())
        window = final_window(int(result.get("epochs") or len(rows)), final_epochs)
        windows.add(window)
        finals.append(final_error([r["test_error"] for r in rows], window) if rows else math.nan)
        bests.append(float(result["best_error"]) if result["best_error"] is not None else math.nan)
        curves.append([math.nan if r["test_error"] is None else float(r["test_error"]) for r in rows])
        params = result.get("num_parameters", params)
        seeds.append(seed)
    return MethodSummary(loss, seeds, finals, bests, params, curves, window=max(windows, default=1))


def _pm(mean: float, std: Optional[float], unit: str = "%") -> str:
    return f"{mean:.2f}{unit}" if std is None else f"{mean:.2f} ± {std:.2f}{unit}"


def _params(n: Optional[int]) -> str:
    if n is None:
        return "-"
    if n >= 1e6:
        return f"{n / 1e6:.1f}M"
    if n >= 1e3:
        return f"{n / 1e3:.1f}K"
    return str(n)


def render_table(methods: Sequence[MethodSummary], config: TrainConfig) -> str:
    """The markdown of ``table.md``."""
    seeds_text = counts_text([len(m.seeds) for m in methods], "seed")
    marked = clear_best([m.final[0] for m in methods], [m.final[1] for m in methods])
    spread = all(m.final[1] is not None for m in methods)
    cells = []
    for i, m in enumerate(methods):
        text = _pm(*m.final)
        cells.append(f"**{text}**" if i == marked else text)
    params = _params(methods[0].num_parameters)
    lines = [
        f"Test error of {config.model} on {config.dataset}: mean ± std (sample std) over "
        f"{seeds_text}; each run's error is the mean test error of its "
        f"{window_text(methods[0].window)} (Section 6.1; --final-epochs). {config.epochs} "
        f"epochs, preset {config.preset}.{bold_note(marked, len(methods), spread)}",
        "",
    ]
    if len(methods) <= WIDE_TABLE_MAX_METHODS:  # Table 2 style: one column per method
        lines += [
            "| Network | Params | " + " | ".join(m.display for m in methods) + " |",
            "|---|---|" + "---|" * len(methods),
            f"| {config.model} | {params} | " + " | ".join(cells) + " |",
        ]
    else:  # Table 5 style: one row per method
        lines += [f"| Method | Spec | {config.model} ({params}) on {config.dataset} |",
                  "|---|---|---|"]
        lines += [f"| {m.display} | `{m.loss}` | {cell} |" for m, cell in zip(methods, cells)]
    lines += [
        "",
        "| Method | Spec | Final error (%) | Best error (%) | Seeds | Final error per seed (%) |",
        "|---|---|---|---|---|---|",
    ]
    for m in methods:
        per_seed = ", ".join(f"{e:.2f}" for e in m.final_errors)
        lines.append(f"| {m.display} | `{m.loss}` | {_pm(*m.final, unit='')} | "
                     f"{_pm(*m.best, unit='')} | {len(m.seeds)} | {per_seed} |")
    return "\n".join(lines) + "\n"


def write_tables(out: Path, methods: Sequence[MethodSummary], config: TrainConfig) -> str:
    """Write ``table.md`` and ``table.csv``; returns the markdown."""
    text = render_table(methods, config)
    atomic_write_text(out / "table.md", text)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["method", "name", "dataset", "model", "epochs", "final_epochs", "n_seeds",
                     "final_error_mean", "final_error_std", "best_error_mean", "best_error_std",
                     "num_parameters", "seeds", "final_errors"])
    for m in methods:
        (fm, fs), (bm, bs) = m.final, m.best
        writer.writerow([m.loss, m.display, config.dataset, config.model, config.epochs,
                         m.window, len(m.seeds), f"{fm:.4f}", "" if fs is None else f"{fs:.4f}",
                         f"{bm:.4f}", "" if bs is None else f"{bs:.4f}",
                         "" if m.num_parameters is None else m.num_parameters,
                         ";".join(str(s) for s in m.seeds),
                         ";".join(f"{e:.4f}" for e in m.final_errors)])
    atomic_write_text(out / "table.csv", buf.getvalue())
    return text


def plot_curves(path: Path, methods: Sequence[MethodSummary], config: TrainConfig
                ) -> tuple[str, list[str]]:
    """Test error vs. epoch per method: mean over seeds with a ±std band (Fig. 5 style).
    Returns the legend's title and entries (the names and window of the table)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    import numpy as np

    inset = len(methods) >= INSET_MIN_METHODS  # a zoom on the last epochs, legend outside
    fig, ax = plt.subplots(figsize=(9.2 if inset else 6.4, 4.6 if inset else 4.2), dpi=120)
    tops, series = [], []
    for m in methods:
        length = min(len(c) for c in m.curves)
        curves = np.array([c[:length] for c in m.curves], dtype=float)
        epochs = np.arange(1, length + 1)
        mean = np.nanmean(curves, axis=0)
        std = np.nanstd(curves, axis=0, ddof=1) if curves.shape[0] > 1 else np.zeros_like(mean)
        (line,) = ax.plot(epochs, mean, lw=1.6, label=f"{m.display} ({_pm(*m.final)})")
        ax.fill_between(epochs, mean - std, mean + std, color=line.get_color(), alpha=0.2, lw=0)
        series.append((epochs, mean, std, line.get_color()))
        skip = max(1, int(math.ceil(0.1 * length)))  # zoom past the first 10% of training
        if length > skip:
            tops.append(float(np.nanmax((mean + std)[skip:])))
    longest = max(len(c) for m in methods for c in m.curves)
    window = methods[0].window
    if longest > 1:  # the epochs averaged into the final error
        ax.axvspan(max(0.5, longest - window + 0.5), longest + 0.5, color="0.95", zorder=0, lw=0)
    finite_tops = [t for t in tops if math.isfinite(t)]
    if finite_tops:
        ax.set_ylim(bottom=0.0, top=max(finite_tops) * 1.1 + 1e-6)
    ax.set_xlabel("epoch")
    ax.set_ylabel("test error (%)")
    n = sorted({len(m.seeds) for m in methods})
    ax.set_title(f"{config.model} on {config.dataset}: mean ± std over "
                 f"{counts_text(n, 'seed')}")
    ax.grid(True, alpha=0.3)
    legend = ax.legend(title=f"final error ({window_text(window)})",
                       fontsize="small" if len(methods) > WIDE_TABLE_MAX_METHODS else None,
                       **({"loc": "upper left", "bbox_to_anchor": (1.02, 1.0)} if inset else {}))
    if inset:
        add_last_epochs_inset(ax, series, window)
    fig.tight_layout()
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png")
    plt.close(fig)
    return legend.get_title().get_text(), [t.get_text() for t in legend.get_texts()]


def _check_same_config(run_dir: Path, config: TrainConfig, state: str = "an unfinished") -> None:
    """A run in a comparison's directory is only resumed or reused with the configuration
    it was started with (the message names only options ``isda compare`` has)."""
    saved_path = run_dir / "config.json"
    if not saved_path.is_file():
        return
    diff = config_differences(TrainConfig.load(saved_path), resolve_config(config))
    if diff:
        changes = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in diff.items())
        raise FileExistsError(
            f"'{run_dir}' holds {state} run with a different configuration ({changes}); "
            f"use --force to retrain it, or another --out (without --out, each "
            f"configuration gets its own directory)")


@dataclass
class ComparisonResult:
    out: Path
    methods: list[MethodSummary]
    table: str
    table_md: Path
    table_csv: Path
    curves_png: Path
    trained: int
    reused: int


def train_or_reuse(cfg: TrainConfig, *, force: bool = False,
                   quiet: bool = False) -> tuple[dict[str, Any], str]:
    """Train the run in ``cfg.out`` for a comparison: resume it if interrupted (after
    checking it has the same configuration), reuse it if finished, retrain with ``force``.
    Returns its ``result.json`` and what happened ("trained", "resumed" or "reused")."""
    run_dir = Path(cfg.out)
    finished = (run_dir / RESULT_NAME).is_file()
    unfinished = (run_dir / CHECKPOINT_NAME).is_file() and not finished
    if (unfinished or finished) and not force:
        _check_same_config(run_dir, cfg, "an unfinished" if unfinished else "a finished")
    result = train(cfg, resume=unfinished and not force, force=force, quiet=quiet,
                   log=lambda msg: None, epoch_log=False)
    status = result["status"]
    note = {"reused": "reused", "trained": "resumed" if unfinished else "trained"}.get(status, status)
    return result, note


def run_comparison(base: TrainConfig, losses: Union[str, Sequence[str]],
                   seeds: Union[int, str, Sequence[int]], out: Union[str, Path], *,
                   force: bool = False, quiet: bool = False,
                   log: Optional[Callable[[str], None]] = None) -> ComparisonResult:
    """Train every ``(loss, seed)`` into ``out/<loss>/seed<k>/`` and write the table and
    the curves (see the module docstring). ``base`` supplies everything else."""
    say = (lambda msg: None) if quiet else (log or (lambda msg: print(msg, flush=True)))
    losses = parse_losses(losses)
    seeds = parse_seeds(seeds)
    out = Path(out)
    resolved = resolve_config(base.replace(loss=losses[0], seed=seeds[0], out=str(out)))
    say(f"comparing {', '.join(losses)} on {base.dataset} / {resolved.model} over seeds "
        f"{', '.join(map(str, seeds))} ({plural(resolved.epochs, 'epoch')} each) -> '{out}'")
    total = len(losses) * len(seeds)
    counts = {"trained": 0, "reused": 0}
    done = 0
    eta = SweepEta(total)
    runs: dict[str, list[tuple[int, Path]]] = {}
    for loss in losses:
        for seed in seeds:
            run_dir = out / spec_dirname(loss) / f"seed{seed}"
            cfg = base.replace(loss=loss, seed=seed, out=str(run_dir))
            t0 = time.perf_counter()
            result, note = train_or_reuse(cfg, force=force, quiet=quiet)
            done += 1
            counts["reused" if result["status"] == "reused" else "trained"] += 1
            score = (f"final error {result['final_error']:.2f}% (best {result['best_error']:.2f}%)"
                     if result.get("task") != "segmentation" else
                     f"mIoU {result['miou_single']:.2f}% (multi-scale + flip "
                     f"{result['miou_multiscale_flip']:.2f}%)")
            seconds = time.perf_counter() - t0
            left = eta.update(seconds, worked=result["status"] != "reused")
            say(f"[{done}/{total}] {loss} seed {seed}: {score}, {note} in {seconds:.1f}s{left}")
            if result.get("predicted_classes") == 1:  # a degenerate segmentation model
                from .segmentation_trainer import single_class_warning

                print(single_class_warning(result, f"{loss} seed {seed}"), file=sys.stderr)
            runs.setdefault(loss, []).append((seed, run_dir))
    if resolved.task == "segmentation":  # Table 7 columns: torch_isda.train.segmentation_compare
        from .segmentation_compare import write_segmentation_comparison

        methods, table, curves = write_segmentation_comparison(out, losses, runs, resolved)
        return ComparisonResult(out, list(methods), table, out / "table.md", out / "table.csv",
                                curves, counts["trained"], counts["reused"])
    methods = [summarize_method(loss, runs[loss], base.final_epochs) for loss in losses]
    table = write_tables(out, methods, resolved)
    curves = out / "curves.png"
    plot_curves(curves, methods, resolved)
    return ComparisonResult(out, methods, table, out / "table.md", out / "table.csv", curves,
                            counts["trained"], counts["reused"])
