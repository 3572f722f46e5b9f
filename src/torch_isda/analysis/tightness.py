"""Tightness of the ISDA upper bound over training (TPAMI paper, Section 6.5.2, Fig. 9).

During one ISDA training run, every ``every`` steps :class:`BoundRecorder` evaluates on the
current mini-batch, with the current classifier ``W, b``, covariance estimate and ``lambda``:

* the ISDA bound ``L̄∞`` of Eq. (7) (:func:`torch_isda.functional.isda_cross_entropy`,
  the quantity ISDA minimises);
* the expected cross-entropy ``L∞`` of Eq. (6), by Monte Carlo with ``samples`` augmented
  features per sample (1000 as in the paper;
  :func:`torch_isda.functional.expected_cross_entropy_mc`), drawn in ``splits``
  independent groups so that its standard error is known;
* the plain cross-entropy of the un-augmented features (for scale).

Jensen's inequality guarantees ``L̄∞ >= L∞``; the table reports the gap ``L̄∞ - L∞``.
The recorder draws its samples from its own generator (seeded per step), so the training
run is identical with or without it. The trace is saved after every epoch, so an
interrupted analysis resumes with the run.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from pathlib import Path
from typing import Any, Optional, Union

import torch
import torch.nn.functional as F

from ..train.checkpoint import CHECKPOINT_NAME, atomic_write_json, atomic_write_text
from ..train.config import TrainConfig
from ..train.reporting import plural, window_text
from .common import Logger, Table, pyplot, save_figure, write_table

__all__ = ["BoundRecorder", "TightnessResult", "find_isda_loss", "gap_statistics",
           "run_tightness"]

TRACE_NAME = "trace.csv"
META_NAME = "trace.json"
TRACE_FIELDS = ("step", "epoch", "progress", "lambda", "ce", "bound", "mc", "mc_se", "gap",
                "rel_gap")


def find_isda_loss(criterion: torch.nn.Module) -> Any:
    """The :class:`~torch_isda.ISDALoss` inside a training criterion (``isda``, a ``+``
    composite, ``explicit_sda``, ...); ``ValueError`` if there is none."""
    from ..loss import ISDALoss

    for module in criterion.modules():
        if isinstance(module, ISDALoss):
            return module
    raise ValueError(
        f"the tightness analysis needs an ISDA criterion with an online covariance estimate "
        f"(e.g. --loss isda or isda(kind=diagonal)); {type(criterion).__name__} has none")


class BoundRecorder:
    """Trainer callback recording ``L̄∞`` (Eq. 7) and the Monte Carlo ``L∞`` (Eq. 6).

    Args:
        every: record every ``every`` steps (``None``: about 100 records per run).
        samples: Monte Carlo samples per feature (split into ``splits`` groups).
        seed: base seed of the recorder's own generator (the step is added).
        splits: independent groups for the standard error of the Monte Carlo estimate.
        trace_path: where the trace CSV is written after each epoch (``None``: not saved).
        rows: records of earlier epochs (resume); those after the resumed epoch are dropped.
        log: called with one line per epoch.
    """

    def __init__(self, every: Optional[int] = None, samples: int = 1000, seed: int = 0,
                 splits: int = 10, trace_path: Optional[Union[str, Path]] = None,
                 rows: Optional[list[dict[str, float]]] = None,
                 log: Optional[Logger] = None) -> None:
        if every is not None and int(every) < 1:
            raise ValueError(f"every must be a positive number of steps; got {every}")
        if int(samples) < 2:
            raise ValueError(f"samples must be >= 2 (Monte Carlo samples per feature); "
                             f"got {samples}")
        self.requested_every = None if every is None else int(every)
        self.every: Optional[int] = self.requested_every
        self.splits = max(1, min(int(splits), int(samples) // 2))
        self.per_split = int(samples) // self.splits
        self.samples = self.per_split * self.splits
        self.seed = int(seed)
        self.trace_path = None if trace_path is None else Path(trace_path)
        self.rows: list[dict[str, float]] = list(rows or [])
        self.log = log
        self._started = False

    # ------------------------------------------------------------------ callbacks

    def on_step(self, trainer: Any, step: int, features: torch.Tensor, logits: torch.Tensor,
                target: torch.Tensor) -> None:
        steps = len(trainer.task.train_batches)
        if not self._started:
            self._started = True
            # resume: keep the records of the epochs the checkpoint holds
            self.rows = [r for r in self.rows if r["epoch"] <= trainer.start_epoch]
            if self.every is None:
                self.every = max(1, round(steps * trainer.config.epochs / 100))
        if step % self.every:
            return
        isda = find_isda_loss(trainer.task.criterion)
        record = self.measure(features, logits, target, trainer.task.classifier, isda,
                              self.seed * 1_000_003 + step)
        record.update(step=step, epoch=step // steps + 1,
                      progress=float(isda.progress))
        self.rows.append(record)

    def on_epoch_end(self, trainer: Any, epoch: int, row: dict[str, Any]) -> None:
        self.save()
        done = [r for r in self.rows if r["epoch"] == epoch]
        if self.log is not None and done:
            r = done[-1]
            self.log(f"  epoch {epoch}/{trainer.config.epochs}: bound {r['bound']:.4f}  "
                     f"MC {r['mc']:.4f} ± {r['mc_se']:.4f}  gap {r['gap']:+.4f}  "
                     f"(lambda {r['lambda']:.3f}, test error {row['test_error']:.2f}%)")

    # ------------------------------------------------------------------ measurement

    @torch.no_grad()
    def measure(self, features: torch.Tensor, logits: torch.Tensor, target: torch.Tensor,
                classifier: torch.nn.Linear, isda: Any, seed: int) -> dict[str, float]:
        """Bound, Monte Carlo expectation (± standard error) and plain CE of one batch."""
        from ..functional import expected_cross_entropy_mc, isda_cross_entropy

        f, z = features.detach().float(), logits.detach().float()
        weight = classifier.weight.detach()
        bias = None if classifier.bias is None else classifier.bias.detach()
        cov, kind, ratio = isda.estimator.functional_covariance(), isda.kind, float(isda.ratio)
        bound = float(isda_cross_entropy(z, weight, target, cov, ratio, kind))
        ce = float(F.cross_entropy(z, target))
        generator = torch.Generator(device=f.device).manual_seed(seed)
        parts = [float(expected_cross_entropy_mc(f, weight, bias, target, cov, ratio,
                                                 samples=self.per_split, kind=kind,
                                                 generator=generator))
                 for _ in range(self.splits)]
        mc = statistics.fmean(parts)
        se = statistics.stdev(parts) / math.sqrt(len(parts)) if len(parts) > 1 else math.nan
        return {"lambda": ratio, "ce": ce, "bound": bound, "mc": mc, "mc_se": se,
                "gap": bound - mc, "rel_gap": (bound - mc) / mc if mc > 0 else math.nan}

    # ------------------------------------------------------------------ persistence

    def save(self) -> None:
        if self.trace_path is not None:
            write_trace(self.trace_path, self.rows)


def write_trace(path: Union[str, Path], rows: list[dict[str, float]]) -> None:
    lines = [",".join(TRACE_FIELDS)]
    for r in rows:
        lines.append(",".join(str(int(r[k])) if k in ("step", "epoch") else f"{float(r[k]):.8g}"
                              for k in TRACE_FIELDS))
    atomic_write_text(path, "\n".join(lines) + "\n")


def read_trace(path: Union[str, Path]) -> list[dict[str, float]]:
    with open(path, newline="") as f:
        return [{k: (int(v) if k in ("step", "epoch") else float(v)) for k, v in row.items()}
                for row in csv.DictReader(f)]


def gap_statistics(rows: list[dict[str, float]]) -> dict[str, float]:
    """Summary of a trace: means of bound / MC, mean and max gap (absolute and relative),
    mean MC standard error and the number of records with ``bound < MC - 3 s.e.``."""
    if not rows:
        raise ValueError("no records in the trace")
    gaps = [r["gap"] for r in rows]
    rel = [r["rel_gap"] for r in rows if math.isfinite(r["rel_gap"])]
    ses = [r["mc_se"] for r in rows if math.isfinite(r["mc_se"])]
    return {
        "records": len(rows),
        "lambda_max": max(r["lambda"] for r in rows),
        "bound_mean": statistics.fmean(r["bound"] for r in rows),
        "mc_mean": statistics.fmean(r["mc"] for r in rows),
        "gap_mean": statistics.fmean(gaps),
        "gap_max": max(gaps),
        "gap_min": min(gaps),
        "rel_gap_mean": statistics.fmean(rel) if rel else math.nan,
        "rel_gap_max": max(rel) if rel else math.nan,
        "mc_se_mean": statistics.fmean(ses) if ses else math.nan,
        "violations": sum(1 for r in rows if math.isfinite(r["mc_se"])
                          and r["bound"] < r["mc"] - 3 * r["mc_se"]),
    }


class TightnessResult(dict):
    """``rows`` (the trace), ``stats`` (per scope), ``table`` (markdown) and file paths."""


def _meta(config: TrainConfig, recorder: BoundRecorder) -> dict[str, Any]:
    from ..train.rundir import COMPARED_IGNORED_FIELDS

    cfg = {k: v for k, v in config.to_dict().items() if k not in COMPARED_IGNORED_FIELDS}
    return {"config": cfg, "every": recorder.requested_every, "samples": recorder.samples,
            "splits": recorder.splits, "seed": recorder.seed}


def run_tightness(base: TrainConfig, out: Union[str, Path], *, every: Optional[int] = None,
                  samples: int = 1000, splits: int = 10, force: bool = False,
                  quiet: bool = False, log: Optional[Logger] = None) -> TightnessResult:
    """Train ``base`` (an ISDA criterion) into ``out/run`` while recording the trace, then
    write ``out/tightness.{md,csv,png}`` and ``out/trace.csv``.

    A finished run whose trace was recorded with the same settings is reused; an
    interrupted one is resumed (trace included); a finished run without a matching trace
    is an error unless ``force`` (retrain).
    """
    from ..train.criteria import create_criterion
    from .resolve import resolve_run
    from ..train.engine import train

    say = (lambda msg: None) if quiet else (log or (lambda msg: print(msg, flush=True)))
    out = Path(out)
    run_dir = out / "run"
    config = resolve_run(base.replace(out=str(run_dir)))
    if getattr(config, "semi", "none") != "none" or getattr(config, "task", None) == "segmentation":
        raise ValueError("the tightness analysis records supervised classification runs "
                         "(Fig. 9); --semi and segmentation runs are not supported")
    find_isda_loss(create_criterion(config.loss, 4, 3, config))  # clear error early
    recorder = BoundRecorder(every, samples, seed=config.seed, splits=splits,
                             trace_path=out / TRACE_NAME, log=say)
    meta = _meta(config, recorder)
    trace_path, meta_path = out / TRACE_NAME, out / META_NAME
    unfinished = _check_previous_run(out, run_dir, config, meta, recorder, force)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(meta_path, meta)
    say(f"tightness: {config.loss} on {config.dataset} / {config.model}, "
        f"{plural(config.epochs, 'epoch')}, "
        f"Monte Carlo with {recorder.samples} samples every "
        f"{'~1%' if every is None else every} steps -> '{out}'")
    result = train(config, resume=unfinished and not force, force=force, quiet=quiet,
                   log=lambda msg: None, epoch_log=False, callbacks=[recorder])
    if result["status"] == "reused":
        rows = read_trace(trace_path)
        say(f"finished run and trace reused from '{out}'")
    else:
        rows = recorder.rows
        write_trace(trace_path, rows)
    return _report(out, rows, config, recorder.samples, result)


def _check_previous_run(out: Path, run_dir: Path, config: Any, meta: dict, recorder: Any,
                        force: bool) -> bool:
    """Whether ``run_dir`` holds an interrupted run to resume (its trace loaded into
    ``recorder``); an error if a finished or interrupted run was traced with other settings."""
    from ..train.compare import check_same_config
    from ..train.rundir import RESULT_NAME

    trace_path, meta_path = out / TRACE_NAME, out / META_NAME
    saved_meta = json.loads(meta_path.read_text()) if meta_path.is_file() else None
    trace_matches = saved_meta == meta and trace_path.is_file()
    finished = (run_dir / RESULT_NAME).is_file()
    unfinished = (run_dir / CHECKPOINT_NAME).is_file() and not finished
    if force:
        trace_path.unlink(missing_ok=True)
    elif finished:
        rows = read_trace(trace_path) if trace_matches else []
        if not rows or max(r["epoch"] for r in rows) < config.epochs:
            raise FileExistsError(
                f"'{run_dir}' holds a finished run but '{trace_path}' is missing or was recorded "
                f"with other settings (every/samples/config); use --force to retrain or "
                f"another --out")
    elif unfinished:
        check_same_config(run_dir, config)
        if saved_meta is not None and saved_meta != meta:
            raise FileExistsError(
                f"'{out}' holds an interrupted trace recorded with other settings; use --force "
                f"to start over or another --out")
        if trace_matches:
            recorder.rows = read_trace(trace_path)
    return unfinished


def _scopes(rows: list[dict[str, float]]) -> list[tuple[str, list[dict[str, float]]]]:
    last = max(r["step"] for r in rows)
    return [
        ("all records", rows),
        ("lambda > 0", [r for r in rows if r["lambda"] > 0]),
        ("second half of training", [r for r in rows if r["step"] >= last / 2]),
        ("last 10% of training", [r for r in rows if r["step"] >= 0.9 * last]),
    ]


def _report(out: Path, rows: list[dict[str, float]], config: TrainConfig, samples: int,
            run: dict[str, Any]) -> TightnessResult:
    stats = [(name, gap_statistics(part)) for name, part in _scopes(rows) if part]
    headers = ["records", "mean L̄∞ (bound)", "mean L∞ (MC)", "mean gap", "max gap",
               "mean rel. gap", "max rel. gap", "mean MC s.e.", "bound < MC − 3 s.e."]
    table = Table(
        caption=(f"Tightness of the ISDA bound (Fig. 9): {config.model} on {config.dataset}, "
                 f"loss {config.loss}, {plural(config.epochs, 'epoch')}, lambda0 = {config.lambda0}. "
                 f"L̄∞: Eq. (7) on the training batch; L∞: Eq. (6) by Monte Carlo with "
                 f"{samples} samples per feature; gap = L̄∞ − L∞ (≥ 0 by Jensen)."),
        headers=["scope"] + headers,
        rows=[[name, s["records"], f"{s['bound_mean']:.4f}", f"{s['mc_mean']:.4f}",
               f"{s['gap_mean']:.4f}", f"{s['gap_max']:.4f}", f"{100 * s['rel_gap_mean']:.2f}%",
               f"{100 * s['rel_gap_max']:.2f}%", f"{s['mc_se_mean']:.4f}", s["violations"]]
              for name, s in stats],
        csv_headers=["scope", "records", "lambda_max", "bound_mean", "mc_mean", "gap_mean",
                     "gap_max", "gap_min", "rel_gap_mean", "rel_gap_max", "mc_se_mean",
                     "violations", "dataset", "model", "loss", "epochs", "samples"],
        csv_rows=[[name, s["records"], s["lambda_max"], s["bound_mean"], s["mc_mean"],
                   s["gap_mean"], s["gap_max"], s["gap_min"], s["rel_gap_mean"],
                   s["rel_gap_max"], s["mc_se_mean"], s["violations"], config.dataset,
                   config.model, config.loss, config.epochs, samples] for name, s in stats],
        notes=(f"Final test error of the run: {run['final_error']:.2f}% (mean of the "
               f"{window_text(run.get('final_error_epochs', 10))}). Per-record values: {TRACE_NAME}."),
    )
    md, csv_path, text = write_table(out, "tightness", table)
    png = plot_trace(out / "tightness.png", rows, config, samples)
    return TightnessResult(rows=rows, stats=dict(stats), table=text, table_md=md,
                           table_csv=csv_path, png=png, trace=out / TRACE_NAME, run=run)


def plot_trace(path: Path, rows: list[dict[str, float]], config: TrainConfig, samples: int
               ) -> Path:
    """Fig. 9: ``L̄∞`` and ``L∞`` vs iteration (top) and their gap with ±2 s.e. (bottom)."""
    import numpy as np

    plt = pyplot()
    step = np.array([r["step"] for r in rows], float)
    bound = np.array([r["bound"] for r in rows])
    mc = np.array([r["mc"] for r in rows])
    se = np.nan_to_num(np.array([r["mc_se"] for r in rows]))
    ce = np.array([r["ce"] for r in rows])
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(6.4, 5.6), dpi=120, sharex=True,
                                      gridspec_kw={"height_ratios": [2, 1]})
    top.plot(step, ce, color="0.6", lw=1, ls=":", label="CE of un-augmented features")
    top.plot(step, bound, color="tab:red", lw=1.6,
             label=r"$\bar{\mathcal{L}}_\infty$ (ISDA bound, Eq. 7)")
    top.plot(step, mc, color="tab:blue", lw=1.2, ls="--",
             label=rf"$\mathcal{{L}}_\infty$ (Monte Carlo, {samples} samples)")
    top.set_ylabel("training loss (batch)")
    top.set_yscale("log")
    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

    top.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    top.yaxis.set_major_formatter(FormatStrFormatter("%g"))
    top.yaxis.set_minor_formatter(NullFormatter())
    top.grid(True, alpha=0.3, which="both")
    top.legend(fontsize=8)
    top.set_title(f"{config.model} on {config.dataset}: tightness of the ISDA bound")
    bottom.fill_between(step, bound - mc - 2 * se, bound - mc + 2 * se, color="tab:purple",
                        alpha=0.25, lw=0, label="±2 s.e. of the MC estimate")
    bottom.plot(step, bound - mc, color="tab:purple", lw=1.2,
                label=r"gap $\bar{\mathcal{L}}_\infty - \mathcal{L}_\infty$")
    bottom.axhline(0, color="k", lw=0.8)
    bottom.set_xlabel("iteration")
    bottom.set_ylabel("gap")
    bottom.grid(True, alpha=0.3)
    bottom.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)
