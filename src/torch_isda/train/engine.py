"""The training engine: one loop for every task (what it owns: docs/architecture.md).

The task (:class:`~torch_isda.train.tasks.base.Task`) comes from the registry; the engine
never imports a task class.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Optional

import torch
import torch.distributed as dist

from .. import __version__
from ..estimator import CovarianceEstimator
from .sync_batchnorm import convert_sync_batchnorm
from .compiled_step import whole_step_for
from .checkpoint import (CHECKPOINT_NAME, CheckpointError, atomic_write_json,
                         load_resumable_checkpoint, save_checkpoint)
from .config import ResolvedConfig, TrainConfig
from .parallel import (
    DistributedContext,
    all_gather_cat,
    average_gradients,
    broadcast_buffers,
    check_distributed_config,
    decide_on_rank0,
    init_distributed,
    mirrored,
    rank_seed,
    resolve_device,
    to_cpu,
)
from .metrics import summarize, write_metrics
from .progress import ProgressBar, progress_enabled
from .reporting import plural
from .resolve import resolve_config
from .rundir import CONFIG_NAME, RESULT_NAME, config_differences, prepare_run_dir, wants_resume
from .schedules import lr_factor
from .seeding import deterministic_mode, get_rng_state, num_threads, seed_everything, set_rng_state
from .tasks import task_class

__all__ = ["Callback", "DivergenceError", "Engine", "Trainer", "train", "train_distributed"]


class Callback:
    """The engine's named events: the one hook mechanism of a run (docs/architecture.md).

    :meth:`Engine.emit` calls the event's method on the task, then on the criterion's
    modules, then on each callback that has it (any object with some of these methods works). The events
    fire in this order; they run on every rank of a multi-process run (see
    :attr:`Engine.is_main`).
    """

    def on_epoch_start(self, engine: Engine, epoch: int) -> None:
        """Before the first step of an epoch (``epoch``: 0-based; the task's default puts
        the model and the criterion in training mode)."""

    def on_step_start(self, engine: Engine, step: int) -> None:
        """Before the step's forward (``step``: global, 0-based; ``engine.progress`` is
        t / T, which the task's default hands to the criterion's ``set_progress``)."""

    def on_step(self, engine: Engine, step: int, features: Any, logits: Any, target: Any) -> None:
        """Loss computed, before the backward pass (parameters and criterion state are those
        the loss used; ``features``/``logits`` carry the graph: detach them)."""

    def on_after_backward(self, engine: Engine, step: int) -> None:
        """Gradients computed (averaged over ranks), before the optimizer step."""

    def on_step_end(self, engine: Engine, step: int) -> None:
        """After the optimizer step (and a per-iteration schedule step), e.g. the mean
        teacher's EMA update."""

    def on_train_epoch_end(self, engine: Engine, epoch: int) -> None:
        """After the last step of an epoch, its sums checked finite, before the evaluation
        (e.g. the temporal ensemble's update)."""

    def on_epoch_end(self, engine: Engine, epoch: int, row: dict[str, Any]) -> None:
        """After the epoch's checkpoint (``epoch``: 1-based, ``row``: its metrics)."""


class DivergenceError(ValueError):
    """The loss became NaN or infinite; the run stopped and kept its last good checkpoint."""

    def __init__(self, what: str, epoch: int, step: Optional[int], value: Any, out: Path,
                 saved_epochs: int) -> None:
        where = f"epoch {epoch}" + ("" if step is None else f", step {step}")
        kept = (f"the checkpoint of epoch {saved_epochs} in '{out}' is kept" if saved_epochs
                else "no checkpoint was written")
        super().__init__(
            f"training diverged at {where}: the {what} became {value}; {kept}. Hint: lower "
            f"the learning rate (--lr) or the ISDA strength (--lambda0), or use --amp none")
        self.epoch, self.step, self.value = epoch, step, value


class Engine:
    """Runs one task; most users call :func:`train`. The task (``engine.task``) holds the
    ``model``, ``criterion``, ``train_batches``, ``num_classes``, ...

    Args:
        config: a :class:`~torch_isda.train.config.ResolvedConfig`
            (:func:`~torch_isda.train.resolve.resolve_config`; :func:`train` resolves).
        context: the process group of a multi-process run (``None``: one process).
        quiet: no progress bar and no per-epoch lines.
        log: where messages go (default: ``print`` to stdout).
        epoch_log: print one line per epoch (unless ``quiet``).
        callbacks: :class:`Callback`-like objects.
    """

    def __init__(self, config: TrainConfig, *, context: Optional[DistributedContext] = None,
                 quiet: bool = False, log: Optional[Callable[[str], None]] = None,
                 epoch_log: bool = True, callbacks: Sequence[Any] = ()) -> None:
        if not isinstance(config, ResolvedConfig):
            raise TypeError(f"Engine needs a ResolvedConfig (resolve_config(config), which "
                            f"train() calls); got {type(config).__name__}")
        self.config = config
        self.context = context
        self.rank = context.rank if context else 0
        self.world_size = context.world_size if context else 1
        self.quiet = quiet or not self.is_main
        self.epoch_log = epoch_log and not self.quiet
        self._log = log or (lambda msg: print(msg, flush=True))
        self.out = Path(config.out)
        self.device = context.device if context else resolve_device(config.device)
        self.amp_dtype = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[config.amp]
        self.rows: list[dict[str, Any]] = []
        self.start_epoch = 0
        self.progress = 0.0  # t / T of the current step
        self._listeners: Optional[tuple[Any, ...]] = None
        self.callbacks = list(callbacks)
        self.task = task_class(config)(config, self)

    @property
    def is_main(self) -> bool:
        """True on the process that writes the run directory (rank 0)."""
        return self.rank == 0

    def log(self, message: str) -> None:
        if not self.quiet:
            self._log(message)

    def autocast(self) -> Any:
        """The AMP context of forward passes (``--amp``)."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def emit(self, event: str, *args: Any) -> None:
        """Fire the named event (a :class:`Callback` method): call ``event(engine, *args)``
        on the task, the criterion's modules (a composite's components included) and every
        callback that has it, in that order."""
        if self._listeners is None:  # fixed once the task is built
            self._listeners = (self.task, *self.task.criterion.modules())
        for listener in (*self._listeners, *self.callbacks):
            method = getattr(listener, event, None)
            if method is not None:
                method(self, *args)

    # ------------------------------------------------------------------ setup

    def build(self) -> None:
        """Seed, build the task, the optimizer, schedule and scaler (and the DDP pieces)."""
        cfg, task = self.config, self.task
        seed_everything(cfg.seed)
        task.build()
        self.optimizer = torch.optim.SGD(
            task.param_groups(), lr=cfg.lr, momentum=float(cfg.momentum),
            weight_decay=cfg.weight_decay,
            nesterov=bool(cfg.nesterov) and float(cfg.momentum) > 0)
        self._sync_params: list[torch.Tensor] = []
        self._broadcast_each_step = False
        if self.context is not None:
            self._build_distributed()
        self.steps_per_epoch = len(task.train_batches)
        self.lr_factor = lr_factor(cfg, self.steps_per_epoch if task.schedule_per_step else None)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, [self.lr_factor] * len(self.optimizer.param_groups))
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.amp == "fp16")
        self.compiled_step = whole_step_for(self, Callback)  # --compile: None without

    def _build_distributed(self) -> None:
        """SyncBatchNorm, ISDA synchronization, the task's DDP preparation, gradient
        averaging of what DDP does not cover, then a per-rank torch seed."""
        cfg, task, ctx = self.config, self.task, self.context
        if cfg.sync_bn and convert_sync_batchnorm(task.model, self.device) is not task.model:
            raise ValueError("--sync-bn: the model itself is a BatchNorm layer")  # pragma: no cover
        for module in task.criterion.modules():
            if isinstance(module, CovarianceEstimator):
                module.sync = cfg.isda_sync == "on"
        uses_ddp = task.prepare_distributed(ctx)
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        if uses_ddp:  # DDP averages the model's gradients, the engine the criterion's
            params = [p for p in task.criterion.parameters() if p.requires_grad]
        self._sync_params = params
        self._broadcast_each_step = not uses_ddp and not cfg.sync_bn
        if ctx.rank > 0:  # model init above is identical on all ranks; now decorrelate
            seed_everything(rank_seed(cfg.seed, ctx.rank))

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue after the epochs in ``self.rows``."""
        task = self.task
        return {
            "format": 1,
            "epoch": len(self.rows),
            "model": task.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "criterion": task.criterion.state_dict(),
            "scaler": self.scaler.state_dict(),
            "metrics": [dict(r) for r in self.rows],
            "rng": get_rng_state(task.generators(), cuda=self.device.type == "cuda"),
            "config": self.config.to_dict(),
            "torch_isda_version": __version__,
            "world_size": self.world_size,
            **task.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved_world = int(state.get("world_size", 1))
        if saved_world != self.world_size:
            raise ValueError(
                f"cannot resume: the checkpoint in '{self.out}' was written by a run with "
                f"{saved_world} process(es) but this run has {self.world_size}; resume with the "
                f"same number of processes (isda train --nproc {saved_world} ... --resume, or "
                f"torchrun --nproc-per-node {saved_world})")
        task = self.task
        task.load_state_dict(state)
        task.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        sched = dict(state["scheduler"])
        # keep the current config's schedule parameters (e.g. more --epochs on resume)
        sched["lr_lambdas"] = [None] * len(self.optimizer.param_groups)
        self.scheduler.load_state_dict(sched)
        for group, base in zip(self.optimizer.param_groups, self.scheduler.base_lrs):
            group["lr"] = base * self.lr_factor(self.scheduler.last_epoch)
        task.criterion.load_state_dict(state["criterion"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.rows = [dict(r) for r in state["metrics"]]
        self.start_epoch = int(state["epoch"])
        mine = (state.get("rank_states") or [None] * self.world_size)[self.rank]
        set_rng_state(mine["rng"] if mine else state["rng"], task.generators())
        if mine and "criterion" in mine:
            task.criterion.load_state_dict(mine["criterion"])

    def save(self) -> None:
        """Write ``checkpoint.pt`` (rank 0; every rank's RNG states, and with ``--isda-sync
        off`` criterion states, are gathered into it)."""
        state = self.state_dict()
        if self.context is not None:
            mine = {"rng": state["rng"]}
            if self.config.isda_sync == "off":
                mine["criterion"] = state["criterion"]
            gathered: Optional[list] = [None] * self.world_size if self.is_main else None
            dist.gather_object(to_cpu(mine), gathered, dst=0)
            state["rank_states"] = gathered
        if self.is_main:  # a checkpoint damaged on disk is never kept as the previous one
            save_checkpoint(state, self.out / CHECKPOINT_NAME,
                            keep_previous=not getattr(self, "_current_damaged", False))
            self._current_damaged = False

    def resume(self, fallback: bool = False) -> None:
        """Continue from ``checkpoint.pt`` (logging the settings that changed); ``fallback``
        (``--resume auto``): from ``checkpoint.prev.pt`` when ``checkpoint.pt`` is damaged."""
        state, path = load_resumable_checkpoint(self.out, fallback, self.log)
        self._current_damaged = path.name != CHECKPOINT_NAME
        diff = config_differences(TrainConfig.from_dict(state["config"]), self.config)
        if diff:
            self.log("resuming with changed settings: " + ", ".join(
                f"{k} {a!r} -> {b!r}" for k, (a, b) in diff.items()))
        try:
            self.load_state_dict(state)
        except ValueError as err:  # e.g. another world size: identical on all ranks
            raise mirrored(err) from None
        except (RuntimeError, KeyError, TypeError) as err:  # another model, kind, optimizer...
            reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
            raise mirrored(CheckpointError(
                f"cannot resume from '{path}': it was written by another configuration "
                f"({reason}); use --force to start over or another --out")) from None
        if self.is_main:
            (self.out / RESULT_NAME).unlink(missing_ok=True)
            write_metrics(self.out, self.rows)
        self.log(f"resumed '{self.out}' after epoch {self.start_epoch}/{self.config.epochs}")

    # ------------------------------------------------------------------ loops

    def _step(self, batch: Any, step: int, progress: float) -> Any:
        """One optimization step; returns the task's :class:`StepOut`."""
        task = self.task
        self.progress = progress
        self.emit("on_step_start", step)
        if self.compiled_step is not None:
            return self._compiled_step(batch, step)
        if self._broadcast_each_step:  # rank 0's BatchNorm statistics, as DDP does
            broadcast_buffers(task.model)
        out = task.train_step(batch, progress)
        if out.features is not None:
            self.emit("on_step", step, out.features, out.logits, out.target)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(out.loss if out.backward is None else out.backward).backward()
        if self._sync_params:
            average_gradients(self._sync_params, self.world_size)
        self.emit("on_after_backward", step)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if task.schedule_per_step:
            self.scheduler.step()
        self.emit("on_step_end", step)
        return out

    def _compiled_step(self, batch: Any, step: int) -> Any:
        """:meth:`_step` under ``--compile``: forward to optimizer step in one graph."""
        out = self.compiled_step(batch)
        if self.task.schedule_per_step:
            self.scheduler.step()
        self.emit("on_step_end", step)
        return out

    def _check_deferred(self, epoch: int) -> None:
        """Raise the error of a batch that the ISDA statistics' device-side checks rejected
        (the static path defers it; one host sync per epoch)."""
        for module in self.task.criterion.modules():
            if isinstance(module, CovarianceEstimator):
                try:
                    module.check()
                except ValueError as err:
                    if "NaN" not in str(err):
                        raise
                    raise self._diverged("deep features", epoch + 1, None, "NaN/Inf") from err

    def train_epoch(self, epoch: int) -> tuple[float, float, dict[str, Any]]:
        """One pass over the training data; returns (mean loss, error %, task extras),
        global over ranks. Divergence is detected here, device-side."""
        cfg, task = self.config, self.task
        self.emit("on_epoch_start", epoch)
        steps = len(task.train_batches)
        sums: Optional[torch.Tensor] = None
        names: list[str] = []
        seen = 0
        first_bad = torch.full((2,), -1.0, dtype=torch.float64, device=self.device)
        step_t = torch.full((), float(epoch * steps), dtype=torch.float64, device=self.device)
        bar = ProgressBar(task.train_batches, steps, f"epoch {epoch + 1}/{cfg.epochs}",
                          progress_enabled(self.quiet))
        try:
            for i, batch in enumerate(bar):
                step = epoch * steps + i
                try:
                    out = self._step(batch, step, (epoch + i / steps) / cfg.epochs)
                except ValueError as err:  # e.g. the ISDA estimator refusing NaN features
                    if not self._nonfinite(err):
                        raise
                    raise self._diverged("deep features", epoch + 1, step, "NaN/Inf") from err
                loss = out.loss.detach().double()
                finite = torch.isfinite(loss)
                values = [loss * out.n, (~finite).double(),
                          *(v.detach().double() for v in out.logs.values())]
                if sums is None:
                    names = ["loss", "nonfinite", *out.logs]
                    sums = torch.zeros(len(values), dtype=torch.float64, device=self.device)
                sums += torch.stack(values)
                first_bad = torch.where((first_bad[0] < 0) & ~finite,  # no host sync
                                        torch.stack([step_t, loss]), first_bad)
                step_t += 1
                seen += out.n
                if bar.active and (i % 10 == 0 or i == steps - 1):
                    bar.set_postfix(loss=f"{float(sums[0]) / max(seen, 1):.4f}")
        finally:
            bar.close()
        if sums is None:
            raise ValueError("the training set is empty")
        totals = self._totals(names, sums, seen)
        if totals["nonfinite"] > 0:
            bad = first_bad
            if self.context is not None:  # the first bad step of any rank, with its value
                rows = all_gather_cat(first_bad).view(-1, 2)
                rows = rows[rows[:, 0] >= 0]  # not empty: some rank counted a bad step
                bad = rows[rows[:, 0].argmin()]
            step, value = bad.tolist()
            raise self._diverged("training loss", epoch + 1, int(step), value)
        self._check_deferred(epoch)
        self.emit("on_train_epoch_end", epoch)
        return task.epoch_values(totals)

    def _nonfinite(self, err: ValueError) -> bool:
        """Whether a step's error comes from non-finite values (checked on the error path
        only: no host sync per step)."""
        return ("NaN" in str(err) or "Inf" in str(err)
                or any(not bool(torch.isfinite(p).all()) for p in self.task.model.parameters()))

    def _diverged(self, what: str, epoch: int, step: Optional[int], value: Any
                  ) -> DivergenceError:
        err = DivergenceError(what, epoch, step, value, self.out, len(self.rows))
        return err if self.context is None else mirrored(err)  # rank 0 reports it

    def _totals(self, names: list[str], sums: torch.Tensor, seen: int) -> dict[str, float]:
        """The epoch's sums as floats, all-reduced over ranks (one host sync)."""
        sums = torch.cat([sums, sums.new_tensor([float(seen)])])
        if self.context is not None:
            dist.all_reduce(sums)
        values = sums.tolist()
        return {**dict(zip(names, values[:-1])), "n": values[-1]}

    def evaluate(self, final: bool = False) -> dict[str, Any]:
        """The task's test metrics (``test_loss``, ``test_error``, extras)."""
        if self.context is not None and not self.config.sync_bn:
            broadcast_buffers(self.task.model)  # rank 0's statistics (what is saved)
        return self.task.evaluate(final)

    def fit(self, stop_after: Optional[int] = None) -> bool:
        """Train from ``start_epoch`` to ``epochs``; ``True`` when finished (``False`` when
        stopped after epoch ``stop_after``, resumable)."""
        cfg, task = self.config, self.task
        for epoch in range(self.start_epoch, cfg.epochs):
            t0 = time.perf_counter()
            lr = float(self.optimizer.param_groups[0]["lr"])
            train_loss, train_error, extras = self.train_epoch(epoch)
            evals = self.evaluate(final=epoch + 1 == cfg.epochs)
            values = task.log_values()
            if not task.schedule_per_step:
                self.scheduler.step()
            row: dict[str, Any] = {
                "epoch": epoch + 1, "train_loss": train_loss, "train_error": train_error,
                "test_loss": evals.pop("test_loss"), "test_error": evals.pop("test_error"),
                "lr": lr, "lambda": values.pop("lambda", None),
                "seconds": time.perf_counter() - t0, **extras, **evals, **values,
            }
            if not math.isfinite(row["test_loss"]):
                raise self._diverged("test loss", epoch + 1, None, row["test_loss"])
            self.rows.append(row)
            if not self._end_epoch(epoch, row, stop_after):
                return False
        return True

    def _end_epoch(self, epoch: int, row: dict[str, Any], stop_after: Optional[int]) -> bool:
        """Checkpoint, metrics files, callbacks and the epoch line; ``False`` when training
        stops after this epoch (``stop_after``)."""
        cfg = self.config
        self.save()
        if self.is_main:
            write_metrics(self.out, self.rows)
        self.emit("on_epoch_end", epoch + 1, row)
        if self.epoch_log:
            lam = "" if row["lambda"] is None else f"  lambda {row['lambda']:.3f}"
            self._log(f"epoch {epoch + 1:>{len(str(cfg.epochs))}}/{cfg.epochs}  "
                      f"{self.task.summary(row)}  lr {row['lr']:.4g}{lam}"
                      f"{self.task.summary_tail(row)}  {row['seconds']:.1f}s")
        return stop_after is None or epoch + 1 < stop_after or epoch + 1 >= cfg.epochs

    # ------------------------------------------------------------------ outputs

    def result(self) -> dict[str, Any]:
        """``result.json``: the summary of the rows plus the task's fields."""
        cfg, task = self.config, self.task
        result = {
            **summarize(self.rows, task.final_window()),
            "dataset": cfg.dataset, "model": cfg.model, "loss": cfg.loss, "seed": cfg.seed,
            "epochs": cfg.epochs,
            "num_parameters": sum(p.numel() for p in task.model.parameters()),
            "device": str(self.device), "torch_isda_version": __version__,
            "torch_version": torch.__version__,
            **task.result_fields(self.rows),
        }
        if self.context is not None:
            result.update(world_size=self.world_size, dist_backend=self.context.backend)
        return result

    def write_config(self) -> None:
        """``config.json``: the config and what was resolved when building (rank 0)."""
        if not self.is_main:
            return
        task = self.task
        atomic_write_json(self.out / CONFIG_NAME, {
            "config": self.config.to_dict(),
            "resolved": {
                "device": str(self.device), "augment": task.augment,
                "num_classes": task.num_classes, "image_size": list(task.image_size),
                "train_size": task.train_size, "test_size": task.test_size,
                "family": str(getattr(task.model, "family", "")),
                "num_parameters": sum(p.numel() for p in task.model.parameters()),
                "data_source": getattr(task, "data_source", None),
                "resumed_from_previous_checkpoint": getattr(self, "_current_damaged", False),
                **task.resolved_fields(),
            },
            "torch_isda_version": __version__,
            "torch_version": torch.__version__,
            "python_version": sys.version.split()[0],
        })

    def describe(self) -> str:
        """The "training ..." line of a run."""
        cfg, ctx = self.config, self.context
        where = str(self.device)
        if ctx is not None:
            batch = (f"{cfg.batch_size} = {ctx.world_size} x {cfg.batch_size // ctx.world_size}"
                     if cfg.semi == "none" else f"{cfg.labeled_batch_size} labeled + "
                     f"{cfg.unlabeled_batch_size} unlabeled, sliced per rank")
            where = (f"{ctx.world_size} processes ({ctx.backend}, {ctx.device}; global batch "
                     f"{batch}; "
                     f"isda-sync {cfg.isda_sync}, sync-bn {'on' if cfg.sync_bn else 'off'})")
        return (f"training {cfg.model} on {cfg.dataset} with {cfg.loss} (seed {cfg.seed}, "
                f"{plural(cfg.epochs, 'epoch')}, preset {cfg.preset}) on {where} -> '{self.out}'")


#: The name of :class:`Engine` before the tasks were split out (same class).
Trainer = Engine


# ---------------------------------------------------------------------------- entry points


def _setup(config: TrainConfig, distributed: bool) -> tuple[ResolvedConfig, Any]:
    """Resolve the config and, for a multi-process run, join the process group (errors
    are identical on every rank: only rank 0 reports them)."""
    try:
        cfg = resolve_config(config)
        if not distributed:
            return cfg, None
        world = (dist.get_world_size() if dist.is_available() and dist.is_initialized()
                 else int(os.environ.get("WORLD_SIZE", "1")))
        check_distributed_config(cfg, world)
        return cfg, init_distributed(cfg)
    except ValueError as err:
        raise mirrored(err) from None


def train(config: TrainConfig, *, resume: Any = False, force: bool = False, quiet: bool = False,
          stop_after: Optional[int] = None, log: Optional[Callable[[str], None]] = None,
          epoch_log: bool = True, callbacks: Sequence[Any] = (),
          distributed: bool = False) -> dict[str, Any]:
    """Train one run into ``config.out`` and return its result (the run-directory rules of
    ``resume`` / ``force``: docs/training.md).

    * ``resume``: ``True`` continues from ``checkpoint.pt`` (``FileNotFoundError`` if there
      is none), ``"auto"`` resumes when there is one and starts fresh otherwise.
    * ``stop_after``: stop after that many epochs (resumable; ``"status": "stopped"``).
    * ``callbacks``: see :class:`Callback` (not called for a reused run).
    * ``distributed``: one rank of a multi-process run (see :func:`train_distributed`).
    * A NaN/infinite loss raises :class:`DivergenceError` (the last good checkpoint stays).

    The returned dict is ``result.json`` plus ``"status"`` (``trained``/``reused``/
    ``stopped``) and ``"out"``.
    """
    cfg, context = _setup(config, distributed)
    out = Path(cfg.out)
    is_main = context is None or context.is_main
    say = (lambda msg: None) if quiet or not is_main else (
        log or (lambda msg: print(msg, flush=True)))

    def decide() -> tuple[Optional[dict[str, Any]], bool]:
        resuming = wants_resume(out, resume) and not force
        return prepare_run_dir(cfg, resume=resume, force=force, say=say), resuming

    try:
        reused, resuming = decide() if context is None else decide_on_rank0(decide, context)
        if reused is not None:
            return reused
        engine = Engine(cfg, context=context, quiet=quiet, log=log, epoch_log=epoch_log,
                        callbacks=callbacks)
        with deterministic_mode(cfg.deterministic), num_threads(cfg.threads):
            engine.build()  # finds the data first: no empty run directory after a data error
            if is_main:
                out.mkdir(parents=True, exist_ok=True)
            if resuming:
                engine.resume(fallback=resume == "auto")
            engine.write_config()
            engine.log(engine.describe())
            finished = engine.fit(stop_after=stop_after)
            result = engine.result()
        if not finished:  # the caller reports it (isda train: "stopped after ...; continue with")
            return {**result, "status": "stopped", "out": str(out)}
        if is_main:
            atomic_write_json(out / RESULT_NAME, result)
        if context is not None:
            dist.barrier()
        return {**result, "status": "trained", "out": str(out)}
    finally:
        if context is not None and context.created and dist.is_initialized():
            dist.destroy_process_group()


def train_distributed(config: TrainConfig, **kwargs: Any) -> dict[str, Any]:
    """:func:`train` for one rank of a data-parallel run (any task), called in every process.

    Under torchrun the process group is created from its environment and destroyed at the
    end; a process group already initialized is used as is. Every rank returns the result;
    callbacks run on every rank. The batch sizes in ``config`` are global.
    """
    return train(config, distributed=True, **kwargs)
