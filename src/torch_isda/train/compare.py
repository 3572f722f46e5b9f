"""One comparison sweep for every task (``isda compare``, docs/training.md): the variants x
seeds are resolved first (:func:`plan_comparison`: a bad configuration fails before any run
trains), trained sequentially in this process (:func:`train_planned`; ``OUT/<loss>/seed<k>/``,
with ``--semi`` ``OUT/<method>/<loss>/seed<k>/``), then ``Task.write_comparison`` writes the
table and curves.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Optional, Union

from .tasks.semi.config import canonical_semi
from .checkpoint import CHECKPOINT_NAME
from .config import ResolvedConfig, TrainConfig
from .criteria import parse_criterion_spec, spec_dirname, split_top_level
from .engine import DivergenceError, train
from .reporting import SweepEta, plural
from .resolve import resolve_config
from .rundir import RESULT_NAME, check_out_dir, config_differences
from .tasks import task_class

__all__ = ["ISDA_MODES", "ComparisonResult", "PlannedRun", "SweepOutcome", "Variant",
           "check_same_config", "parse_isda_mode", "parse_losses", "parse_seeds",
           "parse_semi_methods", "plan_comparison", "run_comparison", "train_or_reuse",
           "train_planned", "variants_for"]

#: What ``--seeds`` accepts (the message of its errors).
SEEDS_HELP = ("a count N >= 1 (seeds 0..N-1, e.g. 5) or a comma-separated list of seeds "
              "(0,3,7; a single seed with a trailing comma: 3,)")

#: ``--isda`` values and the losses (columns) they train with ``--semi``.
ISDA_MODES = {"off": ("ce",), "on": ("isda",), "both": ("ce", "isda")}


def parse_seeds(value: Union[int, str, Sequence[int]]) -> list[int]:
    """``5`` or ``"5"`` -> seeds 0..4; ``"0,3,7"`` or ``[0, 3, 7]`` -> those seeds; a
    single seed is ``"3,"`` (or ``[3]``)."""
    seeds: Any = value
    if isinstance(value, str):
        try:
            seeds = [int(v) for v in value.split(",") if v.strip()] if "," in value else int(value)
        except ValueError:
            raise ValueError(f"--seeds expects {SEEDS_HELP}; got {value!r}") from None
    if isinstance(seeds, int):
        if seeds < 1:
            raise ValueError(f"--seeds expects {SEEDS_HELP}; got {seeds}: a count must be "
                             f"at least 1")
        return list(range(seeds))
    seeds = [int(v) for v in seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be a non-empty list without repeats; got {value!r}")
    return seeds


def parse_losses(value: Union[str, Sequence[str]]) -> list[str]:
    """``"ce,isda"`` -> ``["ce", "isda"]`` (commas inside parentheses are kept, so
    ``"ce,isda(lambda0=1,kind=diagonal)"`` works); each spec is validated."""
    if isinstance(value, str):
        losses = [p.strip() for p in split_top_level(value, ",") if p.strip()]
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


class Variant(NamedTuple):
    """One column/row of a comparison: ``key`` names it (and its directory under OUT)."""

    key: str
    loss: str
    semi: str = "none"


def variants_for(base: TrainConfig, losses: Union[str, Sequence[str]],
                 isda: Optional[str] = None) -> list[Variant]:
    """The variants of a sweep: one per loss, or (``base.semi`` naming methods) one per
    method and ``--isda`` column."""
    if base.semi in (None, "none"):
        return [Variant(spec_dirname(loss), loss) for loss in parse_losses(losses)]
    return [Variant(f"{method}/{loss}", loss, method) for method in parse_semi_methods(base.semi)
            for loss in parse_isda_mode(isda)]


@dataclass
class ComparisonResult:
    out: Path
    methods: list[Any]
    table: str
    table_md: Path
    table_csv: Path
    curves_png: Path
    trained: int
    reused: int
    failed: dict[str, str] = field(default_factory=dict)  # "key seed k" -> error message


class PlannedRun(NamedTuple):
    """One run of a comparison: its variant, its seed and its resolved configuration
    (``config.out`` is the run's directory, ``OUT/<variant key>/seed<k>``)."""

    variant: Variant
    seed: int
    config: ResolvedConfig

    @property
    def name(self) -> str:
        return f"{self.variant.key} seed {self.seed}"


def plan_comparison(base: TrainConfig, losses: Union[str, Sequence[str]],
                    seeds: Union[int, str, Sequence[int]], out: Union[str, Path], *,
                    isda: Optional[str] = None) -> list[PlannedRun]:
    """Every run of a sweep (:func:`variants_for` x seeds), resolved: a configuration that
    cannot run fails here, before the first run trains."""
    seeds = parse_seeds(seeds)
    out = Path(out)
    check_out_dir(out)
    return [PlannedRun(v, seed, resolve_config(base.replace(
                loss=v.loss, semi=v.semi, seed=seed, out=str(out / v.key / f"seed{seed}"))))
            for v in variants_for(base, losses, isda) for seed in seeds]


@dataclass
class SweepOutcome:
    """What :func:`train_planned` did: each variant's ``(seed, run directory)`` pairs, the
    counts of trained and reused runs, and the runs that failed (name -> error message)."""

    runs: dict[str, list[tuple[int, Path]]] = field(default_factory=dict)
    trained: int = 0
    reused: int = 0
    failed: dict[str, str] = field(default_factory=dict)


def check_same_config(run_dir: Path, config: ResolvedConfig,
                      state: str = "an unfinished") -> None:
    """A run in a comparison's directory is only resumed or reused with the configuration
    it was started with (the message names only options ``isda compare`` has)."""
    saved_path = run_dir / "config.json"
    if not saved_path.is_file():
        return
    diff = config_differences(TrainConfig.load(saved_path), config)
    if diff:
        changes = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in diff.items())
        raise FileExistsError(
            f"'{run_dir}' holds {state} run with a different configuration ({changes}); "
            f"use --force to retrain it, or another --out (without --out, each "
            f"configuration gets its own directory)")


def train_or_reuse(cfg: ResolvedConfig, *, force: bool = False, quiet: bool = False,
                   callbacks: Sequence[Any] = ()) -> tuple[dict[str, Any], str]:
    """Train the run in ``cfg.out`` for a comparison: resume it if interrupted (after
    checking it has the same configuration), reuse it if finished, retrain with ``force``.
    Returns its ``result.json`` and what happened ("trained", "resumed" or "reused");
    ``callbacks``: see :class:`~torch_isda.train.engine.Callback`."""
    run_dir = Path(cfg.out)
    finished = (run_dir / RESULT_NAME).is_file()
    unfinished = (run_dir / CHECKPOINT_NAME).is_file() and not finished
    if (unfinished or finished) and not force:
        check_same_config(run_dir, cfg, "an unfinished" if unfinished else "a finished")
    result = train(cfg, resume=unfinished and not force, force=force, quiet=quiet,
                   log=lambda msg: None, epoch_log=False,
                   **({"callbacks": callbacks} if callbacks else {}))
    status = result["status"]
    note = {"reused": "reused", "trained": "resumed" if unfinished else "trained"}.get(status, status)
    return result, note


def train_planned(plan: Sequence[PlannedRun], *, force: bool = False, quiet: bool = False,
                  say: Callable[[str], None] = lambda msg: None) -> SweepOutcome:
    """Run the planned runs one after another in this process (reusing finished ones,
    resuming interrupted ones); a run that diverges is recorded as failed and the sweep
    goes on. The seam of other executors: they take the same plan."""
    outcome = SweepOutcome()
    task = task_class(plan[-1].config)
    eta = SweepEta(len(plan))
    for done, run in enumerate(plan, 1):
        t0 = time.perf_counter()
        outcome.runs.setdefault(run.variant.key, []).append((run.seed, Path(run.config.out)))
        try:
            result, note = train_or_reuse(run.config, force=force, quiet=quiet)
        except DivergenceError as err:
            outcome.failed[run.name] = str(err)
            say(f"[{done}/{len(plan)}] {run.name}: FAILED ({err})")
            continue
        reused = result["status"] == "reused"
        outcome.reused += reused
        outcome.trained += not reused
        seconds = time.perf_counter() - t0
        left = eta.update(seconds, worked=not reused)
        spent = f"{note} in {seconds:.1f}s" if reused else (  # wall vs result.json's
            f"{note} in {seconds:.1f}s wall ({result.get('train_seconds', 0.0):.1f}s in epochs)")
        say(f"[{done}/{len(plan)}] {run.name}: {task.result_line(result)}, {spent}{left}")
        warning = task.result_warning(result, run.name)
        if warning:
            print(warning, file=sys.stderr)
    return outcome


def run_comparison(base: TrainConfig, losses: Union[str, Sequence[str]],
                   seeds: Union[int, str, Sequence[int]], out: Union[str, Path], *,
                   isda: Optional[str] = None, force: bool = False, quiet: bool = False,
                   log: Optional[Callable[[str], None]] = None,
                   executor: Optional[Callable[..., SweepOutcome]] = None) -> ComparisonResult:
    """Resolve every run (:func:`plan_comparison`), train them (:func:`train_planned`, or
    ``executor`` with the same signature: :mod:`torch_isda.train.sweep`), then write the
    task's table and curves. With ``base.semi`` naming methods, ``isda`` picks the columns
    and ``losses`` is ignored."""
    say = (lambda msg: None) if quiet else (log or (lambda msg: print(msg, flush=True)))
    plan = plan_comparison(base, losses, seeds, out, isda=isda)
    out = Path(out)
    variants = list(dict.fromkeys(run.variant for run in plan))
    seeds = list(dict.fromkeys(run.seed for run in plan))
    reference = next(run.config for run in plan if run.variant == variants[-1])
    say(f"comparing {', '.join(v.key for v in variants)} on {reference.dataset} / "
        f"{reference.model} over seeds {', '.join(map(str, seeds))} "
        f"({plural(reference.epochs, 'epoch')} each) -> '{out}'")
    outcome = (executor or train_planned)(plan, force=force, quiet=quiet, say=say)
    methods, table, curves = task_class(reference).write_comparison(
        out, variants, outcome.runs, reference)
    return ComparisonResult(out, list(methods), table, out / "table.md", out / "table.csv",
                            curves, outcome.trained, outcome.reused, outcome.failed)
