"""An ``isda tune`` search: :class:`TuneSpec` (everything a worker needs, JSON), the study
(created or continued, refusing a changed search space), and :func:`run_worker`, which runs
trials until the study holds ``trials`` of them.

Every trial is a normal run: ``OUT/trials/trial<k>/`` with its ``config.json``, metrics and
checkpoint, trained by the same code as ``isda compare``. Its configuration is the base one
with the trial's parameters and ``dataset_kwargs`` ``val_size=M``: M images carved out of the
training set replace the test set for evaluation, so the per-epoch error reported to Optuna
(median pruning) and the objective (the run's final error) are validation errors.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from ..config import TrainConfig
from ..engine import Callback, train
from ..rundir import COMPARED_IGNORED_FIELDS, config_differences
from .space import SearchSpace
from .storage import HEARTBEAT_ATTR, fail_stale_journal_trials, open_storage

__all__ = ["SAMPLERS", "TuneSpec", "load_study", "run_worker", "trial_config"]



@contextlib.contextmanager
def _heartbeat_not_experimental() -> Iterator[None]:
    """The heartbeat and its retry callback are what make a killed worker's trial fail and
    be retried (docs/scale.md); Optuna flags them experimental, which is no news to a user."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield

SAMPLERS = ("tpe", "grid", "random")
PRUNERS = ("median", "none")
#: Trial states that count towards ``--trials`` (a failed trial is retried or replaced).
COUNTED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)


@dataclasses.dataclass
class TuneSpec:
    base: TrainConfig
    params: list[str]
    out: str
    storage: str
    study_name: str = "isda-tune"
    trials: int = 20
    sampler: str = "tpe"
    pruner: str = "median"
    val_size: int = 0
    heartbeat: int = 30
    grace: int = 120
    sampler_seed: int = 0

    @property
    def space(self) -> SearchSpace:
        return SearchSpace.parse(self.params)

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "base": self.base.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TuneSpec:
        return cls(**{**data, "base": TrainConfig.from_dict(data["base"])})


def trial_config(spec: TuneSpec, params: dict[str, Any], run_dir: Path) -> TrainConfig:
    """The run of one trial: the base config, the trial's parameters, the validation split."""
    kwargs = {**spec.base.dataset_kwargs, "val_size": int(spec.val_size)}
    return spec.base.replace(**params, dataset_kwargs=kwargs, out=str(run_dir))


def _fixed_config(spec: TuneSpec) -> dict[str, Any]:
    """The base options the study's trials share (what a continued study must keep)."""
    data = trial_config(spec, {}, Path(".")).to_dict()
    searched = {p.name for p in spec.space.params}
    return {k: v for k, v in data.items() if k not in COMPARED_IGNORED_FIELDS and k not in searched}


def _sampler(spec: TuneSpec) -> Any:
    if spec.sampler == "grid":
        return optuna.samplers.GridSampler(spec.space.grid(), seed=spec.sampler_seed)
    if spec.sampler == "random":
        return optuna.samplers.RandomSampler(seed=spec.sampler_seed)
    return optuna.samplers.TPESampler(seed=spec.sampler_seed)


def _check_same_study(study: Any, spec: TuneSpec) -> None:
    recorded = study.user_attrs.get("search_space")
    if recorded is not None and recorded != spec.space.specs():
        raise ValueError(
            f"study {spec.study_name!r} in {spec.storage} was created with the search space "
            f"{' '.join('--param ' + s for s in recorded)}; this command asks for "
            f"{' '.join('--param ' + s for s in spec.space.specs())}: repeat the original "
            f"--param options to continue it, or start a new study (--study-name or --out)")
    fixed = study.user_attrs.get("fixed_config")
    if fixed is not None:
        old = TrainConfig.from_dict({**fixed, "out": "."})
        new = TrainConfig.from_dict({**_fixed_config(spec), "out": "."})
        diff = config_differences(old, new)
        if diff:
            changes = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in diff.items())
            raise ValueError(f"study {spec.study_name!r} in {spec.storage} was created with "
                             f"other training options ({changes}); use them again, or start "
                             f"a new study (--study-name or --out)")


def load_study(spec: TuneSpec) -> tuple[Any, Any]:
    """Create the study, or continue the one in the storage; returns (study, storage)."""
    with _heartbeat_not_experimental():
        storage = open_storage(spec.storage, spec.heartbeat, spec.grace)
    pruner = (optuna.pruners.MedianPruner(n_startup_trials=2) if spec.pruner == "median"
              else optuna.pruners.NopPruner())
    study = optuna.create_study(storage=storage, study_name=spec.study_name,
                                direction="minimize", load_if_exists=True,
                                sampler=_sampler(spec), pruner=pruner)
    _check_same_study(study, spec)
    if "search_space" not in study.user_attrs:
        study.set_user_attr("search_space", spec.space.specs())
        study.set_user_attr("fixed_config", _fixed_config(spec))
        study.set_user_attr("val_size", int(spec.val_size))
    return study, storage


class _ReportValidation(Callback):
    """Reports each epoch's validation error to the trial; prunes it when told to (the
    run keeps its checkpoint); refreshes the journal heartbeat."""

    def __init__(self, trial: Any) -> None:
        self.trial = trial

    def on_epoch_end(self, engine: Any, epoch: int, row: dict[str, Any]) -> None:
        self.trial.report(float(row["test_error"]), epoch)
        if epoch < int(engine.config.epochs) and self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {epoch} (median rule)")


def _heartbeat(trial: Any, every: float, stop: threading.Event) -> None:
    while not stop.wait(every):
        trial.set_user_attr(HEARTBEAT_ATTR, time.time())


def _retried_number(trial: Any) -> Optional[int]:
    """The number of the dead trial this one retries (RDB heartbeat), or ``None``."""
    frozen = next(t for t in trial.study.get_trials(deepcopy=False) if t.number == trial.number)
    return RetryHeartbeatStaleTrialCallback.retried_trial_number(frozen)


def _objective(spec: TuneSpec, journal: bool) -> Any:
    def objective(trial: Any) -> float:
        params = spec.space.suggest(trial)
        original: Optional[int] = (_retried_number(trial) if not journal
                                   else trial.user_attrs.get("retry_of"))
        number = trial.number if original is None else original
        run_dir = Path(spec.out) / "trials" / f"trial{number}"
        trial.set_user_attr("run_dir", str(run_dir))
        stop = threading.Event()
        if journal:
            trial.set_user_attr(HEARTBEAT_ATTR, time.time())
            threading.Thread(target=_heartbeat, args=(trial, spec.heartbeat, stop),
                             daemon=True).start()
        try:  # a retried trial resumes the dead one's run; a finished run is reused
            result = train(trial_config(spec, params, run_dir), resume="auto", quiet=True,
                           callbacks=[_ReportValidation(trial)])
        finally:
            stop.set()
        return float(result["final_error"])

    return objective


def _enough(spec: TuneSpec) -> Any:
    def callback(study: Any, trial: Any) -> None:
        trials = study.get_trials(deepcopy=False)
        if sum(t.state in COUNTED for t in trials) >= spec.trials or sum(
                t.state == TrialState.FAIL for t in trials) >= max(3, spec.trials):
            study.stop()

    return callback


def run_worker(spec: TuneSpec) -> Any:
    """Run trials until the study counts ``spec.trials`` complete, pruned or running ones
    (a worker's share of a shared study); returns the study."""
    from optuna.storages.journal import JournalStorage

    study, storage = load_study(spec)
    journal = isinstance(storage, JournalStorage)
    with _heartbeat_not_experimental():
        if journal:
            fail_stale_journal_trials(study, storage, spec.grace)
        else:  # before counting: a dead worker's trial is failed (and retried), not counted
            optuna.storages.fail_stale_trials(study)
        if sum(t.state in COUNTED for t in study.get_trials(deepcopy=False)) >= spec.trials:
            return study
        study.optimize(_objective(spec, journal), callbacks=[_enough(spec)],
                       catch=(ValueError, RuntimeError), gc_after_trial=True)
    return study
