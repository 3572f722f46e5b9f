"""The training loop of ``isda train``.

One step (Algorithm 1 of the paper, with the criterion hooks)::

    criterion.set_progress((epoch + i / len(loader)) / epochs)
    x, y = criterion.transform_batch(x, y)
    features = criterion.transform_features(model.forward_features(x))
    logits = model.get_classifier()(features)
    loss = criterion(features, logits, criterion.transform_target(y), model)
    loss.backward(); sgd.step()                    # the lr schedule steps once per epoch

Small datasets (digits, CIFAR, SVHN) are moved to the device once and iterated with
:class:`~torch_isda.data.DeviceBatchIterator` (augmentation on the device, driven by one
seeded generator); ``imagefolder`` uses DataLoaders with workers. After every epoch the
test set is evaluated (plain logits, cross-entropy loss), ``metrics.csv``/``metrics.json``
are rewritten and a checkpoint is written atomically; ``result.json`` is written at the end
(final error = mean test error of the last epochs, Section 6.1; the window is
:func:`~torch_isda.train.reporting.final_window`).

On the CPU a run resumed from its checkpoint reproduces the uninterrupted run exactly
(model, optimizer, scheduler, criterion and every RNG state are restored at an epoch
boundary).
"""

from __future__ import annotations

import bisect
import contextlib
import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F

from .. import __version__
from .checkpoint import CHECKPOINT_NAME, atomic_write_json, load_checkpoint, save_checkpoint
from .config import TrainConfig
from .criteria import TrainingCriterion, create_criterion
from .metrics import summarize, write_metrics
from .presets import resolve_config
from .schedules import PolyFactor
from .progress import ProgressBar, progress_enabled
from .reporting import final_window, plural
from .seeding import (
    deterministic_mode,
    get_rng_state,
    num_threads,
    seed_everything,
    set_rng_state,
)

__all__ = ["COMPARED_IGNORED_FIELDS", "Trainer", "config_differences", "prepare_run_dir",
           "resolve_device", "train"]

RESULT_NAME = "result.json"
CONFIG_NAME = "config.json"
RUN_FILES = (RESULT_NAME, CHECKPOINT_NAME, "metrics.csv", "metrics.json", CONFIG_NAME)

#: Fields that do not change what a run computes (ignored when deciding whether a
#: finished run in ``--out`` matches the requested configuration).
COMPARED_IGNORED_FIELDS = ("out", "data_dir", "download", "workers", "device", "threads",
                           "dist_backend", "dist_timeout", "final_epochs")


def resolve_device(spec: str) -> torch.device:
    """``"auto"``: CUDA if available, else CPU; anything else is passed to
    :class:`torch.device` (a clear error if CUDA is requested but unavailable)."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError as err:
        raise ValueError(f"invalid device {spec!r}: {err}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {spec!r} requested but CUDA is not available; use --device cpu "
                         f"or --device auto")
    return device


def config_differences(a: TrainConfig, b: TrainConfig,
                       ignore: tuple[str, ...] = COMPARED_IGNORED_FIELDS) -> dict[str, tuple]:
    """``{field: (a_value, b_value)}`` for the fields that differ (``ignore`` skipped)."""
    da, db = a.to_dict(), b.to_dict()
    return {k: (da[k], db[k]) for k in da if k not in ignore and da[k] != db.get(k)}


class _StepFactor:
    """lr factor ``gamma ** (number of milestones <= epoch + offset)`` (picklable for
    LambdaLR). ``offset=1`` is the official ISDA CIFAR timing (see ``lr_offset`` in
    :mod:`~torch_isda.train.presets`): milestone ``m`` takes effect from 0-based epoch
    ``m - 1``."""

    def __init__(self, milestones: list[int], gamma: float, offset: int = 0) -> None:
        self.milestones = sorted(int(m) for m in milestones)
        self.gamma = float(gamma)
        self.offset = int(offset)

    def __call__(self, epoch: int) -> float:
        return self.gamma ** bisect.bisect_right(self.milestones, epoch + self.offset)


class _CosineFactor:
    """lr factor ``(1 + cos(pi * (epoch + offset) / epochs)) / 2``; ``offset=1`` (the
    official ISDA CIFAR timing) reaches 0 in the last epoch."""

    def __init__(self, epochs: int, offset: int = 0) -> None:
        self.epochs = int(epochs)
        self.offset = int(offset)

    def __call__(self, epoch: int) -> float:
        return 0.5 * (1.0 + math.cos(math.pi * (epoch + self.offset) / self.epochs))


class Trainer:
    """Builds data, model, criterion and optimizer from a resolved :class:`TrainConfig`
    and runs the epochs. Most users call :func:`train` instead.

    Args:
        config: a config resolved by :func:`~torch_isda.train.presets.resolve_config`.
        quiet: no progress bar and no per-epoch lines.
        log: where messages go (default: ``print`` to stdout).
        epoch_log: print one line per epoch (unless ``quiet``).
        callbacks: objects with optional methods ``on_step(trainer, step, features, logits,
            target)`` (called every training step once the loss is computed, before the
            backward pass and the optimizer step, so parameters and criterion state are those
            the loss used; ``step`` is the global 0-based step, ``features``/``logits`` carry
            the graph: detach them) and ``on_epoch_end(trainer, epoch, row)`` (after the
            epoch's checkpoint is written; ``epoch`` is 1-based, ``row`` its metrics).
            Used by :mod:`torch_isda.analysis` (e.g. the bound-tightness trace).
    """

    #: This process's rank and the number of processes (the multi-process trainer of
    #: :mod:`torch_isda.train.distributed` sets them; only rank 0 writes files).
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        """True on the process that writes the run directory (rank 0)."""
        return self.rank == 0

    def __init__(self, config: TrainConfig, *, quiet: bool = False,
                 log: Optional[Callable[[str], None]] = None, epoch_log: bool = True,
                 callbacks: Sequence[Any] = ()) -> None:
        if config.epochs is None or config.out is None:
            config = resolve_config(config)
        self.config = config
        self.quiet = quiet
        self.epoch_log = epoch_log and not quiet
        self._log = log or (lambda msg: print(msg, flush=True))
        self.out = Path(config.out)
        self.device = resolve_device(config.device)
        self.amp_dtype = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[config.amp]
        self.rows: list[dict[str, Any]] = []
        self.start_epoch = 0
        self.data_generator: Optional[torch.Generator] = None
        self.callbacks = list(callbacks)

    # ------------------------------------------------------------------ setup

    def log(self, message: str) -> None:
        if not self.quiet:
            self._log(message)

    def build(self) -> None:
        """Create data, model, criterion, optimizer and scheduler (seeded)."""
        cfg, device = self.config, self.device
        seed_everything(cfg.seed)
        self._build_data()
        model = self._create_model()
        self.features_fn = torch.compile(model.forward_features) if cfg.compile else model.forward_features
        self.criterion: TrainingCriterion = create_criterion(
            cfg.loss, int(model.num_features), self.num_classes, cfg).to(device)

        extra = []
        for group in self.criterion.parameter_groups(cfg):
            group = dict(group)
            group["params"] = list(group["params"])
            extra.append(group)
        listed = {id(p) for g in extra for p in g["params"]}
        rest = [p for p in self.criterion.parameters() if p.requires_grad and id(p) not in listed]
        groups = [{"params": [p for p in model.parameters() if p.requires_grad] + rest}, *extra]
        momentum = float(cfg.momentum)
        self.optimizer = torch.optim.SGD(
            groups, lr=cfg.lr, momentum=momentum, weight_decay=cfg.weight_decay,
            nesterov=bool(cfg.nesterov) and momentum > 0)
        offset = cfg.lr_offset or 0
        self.lr_factor = (_CosineFactor(cfg.epochs, offset) if cfg.lr_schedule == "cosine"
                          else PolyFactor(cfg.epochs, cfg.poly_power) if cfg.lr_schedule == "poly"
                          else _StepFactor(cfg.milestones or [], cfg.gamma, offset))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, [self.lr_factor] * len(self.optimizer.param_groups))
        self.scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp == "fp16")

    def _build_data(self) -> None:
        cfg, device = self.config, self.device
        from ..data import DeviceBatchIterator, ImageDataset, build_augment, create_dataset

        if cfg.dataset == "imagefolder":
            from ..data import create_imagefolder_loaders

            loaders = create_imagefolder_loaders(
                cfg.data_dir, cfg.batch_size, cfg.workers, seed=cfg.seed, distributed=False,
                val_batch_size=cfg.eval_batch_size, **cfg.dataset_kwargs)
            if cfg.augment not in (None, "none"):
                self.log(f"note: --augment {cfg.augment} is ignored for imagefolder "
                         f"(RandomResizedCrop + flip are used)")
            self.train_batches, self.test_batches = loaders.train, loaders.val
            self.data_generator = loaders.train.generator
            self.num_classes = loaders.data.num_classes
            self.image_size = tuple(loaders.data.image_size)
            self.augment = "random_resized_crop_flip"
            self.train_size, self.test_size = len(loaders.data.train), len(loaders.data.val)
            return
        data = create_dataset(cfg.dataset, root=cfg.data_dir, download=cfg.download,
                              **cfg.dataset_kwargs)
        if not isinstance(data, ImageDataset):
            raise ValueError(f"dataset {cfg.dataset!r} returned {type(data).__name__}; the "
                             f"trainer supports in-memory ImageDataset datasets and imagefolder")
        data = data.to(device)
        self.augment = cfg.augment or data.default_augment
        self.data_generator = torch.Generator(device=device).manual_seed(cfg.seed)
        self.train_batches = DeviceBatchIterator(
            data.train_images, data.train_labels, cfg.batch_size, shuffle=True,
            generator=self.data_generator, transform=build_augment(self.augment, data.mean, data.std))
        self.test_batches = DeviceBatchIterator(
            data.test_images, data.test_labels, cfg.eval_batch_size, shuffle=False,
            transform=build_augment("none", data.mean, data.std))
        self.num_classes = data.num_classes
        self.image_size = tuple(data.image_size)
        self.train_size, self.test_size = data.train_size, data.test_size

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue after the epochs in ``self.rows``."""
        return {
            "format": 1,
            "epoch": len(self.rows),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "criterion": self.criterion.state_dict(),
            "scaler": self.scaler.state_dict(),
            "metrics": [dict(r) for r in self.rows],
            "rng": get_rng_state({"data": self.data_generator}, cuda=self.device.type == "cuda"),
            "config": self.config.to_dict(),
            "torch_isda_version": __version__,
            "world_size": self.world_size,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved_world = int(state.get("world_size", 1))
        if saved_world != self.world_size:
            raise ValueError(
                f"cannot resume: the checkpoint in '{self.out}' was written by a run with "
                f"{saved_world} process(es) but this run has {self.world_size}; resume with the "
                f"same number of processes (isda train --nproc {saved_world} ... --resume, or "
                f"torchrun --nproc-per-node {saved_world})")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        sched = dict(state["scheduler"])
        # keep the current config's schedule parameters (e.g. more --epochs on resume)
        sched["lr_lambdas"] = [None] * len(self.optimizer.param_groups)
        self.scheduler.load_state_dict(sched)
        for group, base in zip(self.optimizer.param_groups, self.scheduler.base_lrs):
            group["lr"] = base * self.lr_factor(self.scheduler.last_epoch)
        self.criterion.load_state_dict(state["criterion"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.rows = [dict(r) for r in state["metrics"]]
        self.start_epoch = int(state["epoch"])
        set_rng_state(state["rng"], {"data": self.data_generator})

    def save(self) -> None:
        save_checkpoint(self.state_dict(), self.out / CHECKPOINT_NAME)

    # ------------------------------------------------------------------ loops

    def _autocast(self) -> Any:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _to_device(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        non_blocking = self.device.type == "cuda"
        x = x.to(self.device, non_blocking=non_blocking)
        y = y.to(self.device, non_blocking=non_blocking)
        if self.config.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y

    def forward_train(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Deep features (after the criterion's ``transform_features``) and logits of a
        training batch (the multi-process trainer runs this through DDP)."""
        features = self.criterion.transform_features(self.features_fn(x))
        return features, self.classifier(features)

    def loss_for_backward(self, loss: torch.Tensor) -> torch.Tensor:
        """The loss whose gradient is taken (the multi-process trainer weights uneven
        shards of a global batch); the logged loss is the unweighted one."""
        return loss

    def train_epoch(self, epoch: int) -> tuple[float, float]:
        """One pass over the training data; returns (mean loss, error %)."""
        cfg = self.config
        self.model.train()
        self.criterion.train()
        steps = len(self.train_batches)
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        wrong = torch.zeros((), dtype=torch.long, device=self.device)
        seen = 0
        bar = ProgressBar(self.train_batches, steps, f"epoch {epoch + 1}/{cfg.epochs}",
                          progress_enabled(self.quiet))
        try:
            for i, (x, y) in enumerate(bar):
                x, y = self._to_device(x, y)
                self.criterion.set_progress((epoch + i / steps) / cfg.epochs)
                x, y = self.criterion.transform_batch(x, y)
                with self._autocast():
                    features, logits = self.forward_train(x)
                target = self.criterion.transform_target(y)
                loss = self.criterion(features.float(), logits.float(), target, self.model)
                for callback in self.callbacks:
                    if hasattr(callback, "on_step"):
                        callback.on_step(self, epoch * steps + i, features, logits, target)
                self.optimizer.zero_grad(set_to_none=True)
                self.scaler.scale(self.loss_for_backward(loss)).backward()
                self.scaler.step(self.optimizer)
                self.scaler.update()
                n = y.shape[0]
                seen += n
                loss_sum += loss.detach().double() * n
                wrong += (logits.detach().argmax(1) != y).sum()
                if bar.active and (i % 10 == 0 or i == steps - 1):
                    bar.set_postfix(loss=f"{float(loss_sum) / seen:.4f}",
                                    err=f"{100.0 * int(wrong) / seen:.2f}%")
        finally:
            bar.close()
        if seen == 0:
            raise ValueError("the training set is empty")
        return float(loss_sum) / seen, 100.0 * int(wrong) / seen

    @torch.no_grad()
    def evaluate(self) -> tuple[float, float]:
        """Test loss (cross-entropy of the plain logits) and error (%)."""
        self.model.eval()
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        wrong = torch.zeros((), dtype=torch.long, device=self.device)
        seen = 0
        for x, y in self.test_batches:
            x, y = self._to_device(x, y)
            with self._autocast():
                logits = self.classifier(self.features_fn(x))
            logits = logits.float()
            loss_sum += F.cross_entropy(logits, y, reduction="sum").double()
            wrong += (logits.argmax(1) != y).sum()
            seen += y.shape[0]
        if seen == 0:
            raise ValueError("the test set is empty")
        return float(loss_sum) / seen, 100.0 * int(wrong) / seen

    def fit(self, stop_after: Optional[int] = None) -> bool:
        """Train from ``start_epoch`` to ``epochs``; returns ``True`` when finished (or
        ``False`` when stopped after epoch ``stop_after``, resumable)."""
        cfg = self.config
        for epoch in range(self.start_epoch, cfg.epochs):
            t0 = time.perf_counter()
            lr = float(self.optimizer.param_groups[0]["lr"])
            train_loss, train_error = self.train_epoch(epoch)
            test_loss, test_error = self.evaluate()
            values = self.criterion.log_values()
            self.scheduler.step()
            row: dict[str, Any] = {
                "epoch": epoch + 1, "train_loss": train_loss, "train_error": train_error,
                "test_loss": test_loss, "test_error": test_error, "lr": lr,
                "lambda": values.pop("lambda", None), "seconds": time.perf_counter() - t0,
            }
            row.update({k: float(v) for k, v in values.items()})
            self.rows.append(row)
            summary = (f"train loss {train_loss:.4f} err {train_error:6.2f}%  "
                       f"test loss {test_loss:.4f} err {test_error:6.2f}%")
            if not self._end_epoch(epoch, row, summary, stop_after):
                return False
        return True

    def _create_model(self, required: tuple[str, ...] = ("forward_features", "get_classifier"),
                      default_in_channels: bool = True) -> torch.nn.Module:
        """Build the configured model on the device (``channels_last`` if asked) and set
        ``self.model`` and ``self.classifier``."""
        cfg = self.config
        from ..models import create_model

        model_kwargs = dict(cfg.model_kwargs)
        if default_in_channels:
            model_kwargs.setdefault("in_channels", self.image_size[0])
        model = create_model(cfg.model, num_classes=self.num_classes, **model_kwargs)
        missing = [name for name in required if not hasattr(model, name)]
        if missing:
            raise ValueError(f"model {cfg.model!r} lacks {'/'.join(n + '()' for n in missing)}")
        model.to(self.device)
        if cfg.channels_last:
            model.to(memory_format=torch.channels_last)
        self.model = model
        self.classifier = model.get_classifier()
        return model

    def _end_epoch(self, epoch: int, row: dict[str, Any], summary: str,
                   stop_after: Optional[int], tail: str = "") -> bool:
        """Checkpoint, write the metrics (rank 0), run the callbacks and log the epoch whose
        ``row`` was just appended; ``False`` when training stops after it (``stop_after``)."""
        cfg = self.config
        self.save()
        if self.is_main:
            write_metrics(self.out, self.rows)
        for callback in self.callbacks:
            if hasattr(callback, "on_epoch_end"):
                callback.on_epoch_end(self, epoch + 1, row)
        if self.epoch_log:
            lam = "" if row["lambda"] is None else f"  lambda {row['lambda']:.3f}"
            self._log(f"epoch {epoch + 1:>{len(str(cfg.epochs))}}/{cfg.epochs}  {summary}  "
                      f"lr {row['lr']:.4g}{lam}{tail}  {row['seconds']:.1f}s")
        return stop_after is None or epoch + 1 < stop_after or epoch + 1 >= cfg.epochs

    def result(self) -> dict[str, Any]:
        cfg = self.config
        from ..models.flops import count_parameters

        summary = summarize(self.rows, final_window(cfg.epochs, cfg.final_epochs))
        return {
            **summary,
            "dataset": cfg.dataset, "model": cfg.model, "loss": cfg.loss, "seed": cfg.seed,
            "epochs": cfg.epochs, "num_parameters": int(count_parameters(self.model)),
            "device": str(self.device), "torch_isda_version": __version__,
            "torch_version": torch.__version__,
        }

    def write_config(self) -> None:
        atomic_write_json(self.out / CONFIG_NAME, {
            "config": self.config.to_dict(),
            "resolved": {
                "device": str(self.device), "augment": self.augment,
                "num_classes": self.num_classes, "image_size": list(self.image_size),
                "train_size": self.train_size, "test_size": self.test_size,
                "family": str(getattr(self.model, "family", "")),
                "num_parameters": sum(p.numel() for p in self.model.parameters()),
            },
            "torch_isda_version": __version__,
            "torch_version": torch.__version__,
            "python_version": sys.version.split()[0],
        })


# ---------------------------------------------------------------------------- entry point


def _read_json(path: Path) -> Any:
    import json

    return json.loads(path.read_text())


def prepare_run_dir(cfg: TrainConfig, *, resume: bool, force: bool,
                    say: Callable[[str], None]) -> Optional[dict[str, Any]]:
    """The run-directory rules of :func:`train` for the resolved ``cfg`` (before building).

    Returns the stored result (``"status": "reused"``) of a finished run with the same
    configuration, else ``None`` (with ``force``, after removing the run's files). Raises
    ``FileExistsError`` / ``FileNotFoundError`` as documented in :func:`train`.
    """
    out = Path(cfg.out)
    result_path, ckpt_path, config_path = out / RESULT_NAME, out / CHECKPOINT_NAME, out / CONFIG_NAME
    if force:
        for name in RUN_FILES:
            (out / name).unlink(missing_ok=True)
    elif result_path.is_file():
        saved = TrainConfig.load(config_path) if config_path.is_file() else None
        diff = config_differences(saved, cfg) if saved is not None else {"config.json": ("missing", "")}
        if not diff:
            result = _read_json(result_path)
            say(f"{out}: finished run found (final error {result.get('final_error')}%), not "
                f"retrained (use --force to retrain)")
            return {**result, "status": "reused", "out": str(out)}
        if not resume:
            changes = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in diff.items())
            raise FileExistsError(
                f"'{out}' holds a finished run with a different configuration ({changes}); "
                f"use --force to retrain it, --resume to continue it, or another --out")
    elif ckpt_path.is_file() and not resume:
        raise FileExistsError(
            f"'{out}' holds an unfinished run ({CHECKPOINT_NAME}); pass --resume to continue "
            f"it or --force to start over")
    if resume and not force and not ckpt_path.is_file():
        raise FileNotFoundError(
            f"cannot resume: no {CHECKPOINT_NAME} in '{out}' (start the run without --resume)")
    return None


def train(config: TrainConfig, *, resume: bool = False, force: bool = False, quiet: bool = False,
          stop_after: Optional[int] = None, log: Optional[Callable[[str], None]] = None,
          epoch_log: bool = True, callbacks: Sequence[Any] = ()) -> dict[str, Any]:
    """Train one run into ``config.out`` and return its result.

    * A finished run (``result.json`` present, same configuration) is not retrained: its
      stored result is returned with ``"status": "reused"``. A finished run with a
      different configuration is an error unless ``force`` (retrain from scratch) or
      ``resume`` (continue from its checkpoint, e.g. with more epochs).
    * ``resume`` continues from ``checkpoint.pt`` (``FileNotFoundError`` if there is none);
      without it an unfinished run in ``out`` is an error unless ``force``.
    * ``stop_after``: stop after that many epochs (resumable; ``"status": "stopped"``).
    * ``callbacks``: per-step / per-epoch hooks, see :class:`Trainer` (not called for a
      reused run).

    The returned dict is ``result.json`` plus ``"status"`` (``trained``/``reused``/
    ``stopped``) and ``"out"``.
    """
    cfg = resolve_config(config)
    out = Path(cfg.out)
    result_path, ckpt_path = out / RESULT_NAME, out / CHECKPOINT_NAME
    say = (lambda msg: None) if quiet else (log or (lambda msg: print(msg, flush=True)))
    reused = prepare_run_dir(cfg, resume=resume, force=force, say=say)
    if reused is not None:
        return reused

    trainer_cls = Trainer
    if cfg.semi != "none":  # semi-supervised (Eq. 19): torch_isda.train.semi_trainer
        from .semi_trainer import SemiTrainer as trainer_cls
    if cfg.task == "segmentation":  # Table 7: torch_isda.train.segmentation_trainer
        from .segmentation_trainer import SegmentationTrainer as trainer_cls
    trainer = trainer_cls(cfg, quiet=quiet, log=log, epoch_log=epoch_log, callbacks=callbacks)
    with deterministic_mode(cfg.deterministic), num_threads(cfg.threads):
        trainer.build()  # finds the data first: no empty run directory after a data error
        out.mkdir(parents=True, exist_ok=True)
        if resume and not force:
            state = load_checkpoint(ckpt_path)
            saved_cfg = TrainConfig.from_dict(state["config"])
            diff = config_differences(saved_cfg, cfg)
            if diff:
                trainer.log("resuming with changed settings: " + ", ".join(
                    f"{k} {a!r} -> {b!r}" for k, (a, b) in diff.items()))
            trainer.load_state_dict(state)
            result_path.unlink(missing_ok=True)
            write_metrics(out, trainer.rows)
            trainer.log(f"resumed '{out}' after epoch {trainer.start_epoch}/{cfg.epochs}")
        trainer.write_config()
        trainer.log(f"training {cfg.model} on {cfg.dataset} with {cfg.loss} (seed {cfg.seed}, "
                    f"{plural(cfg.epochs, 'epoch')}, preset {cfg.preset}) on {trainer.device} "
                    f"-> '{out}'")
        finished = trainer.fit(stop_after=stop_after)
    if not finished:  # the caller reports it (isda train: "stopped after ...; continue with")
        return {**trainer.result(), "status": "stopped", "out": str(out)}
    result = trainer.result()
    atomic_write_json(result_path, result)
    return {**result, "status": "trained", "out": str(out)}

