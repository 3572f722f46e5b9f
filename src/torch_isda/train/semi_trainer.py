"""The semi-supervised training loop of ``isda train --semi METHOD`` (Section 5, Table 6).

:class:`SemiTrainer` is a :class:`~torch_isda.train.trainer.Trainer` whose data, step and
evaluation are semi-supervised; run-directory handling (reuse, ``--resume``, ``--force``,
``--stop-after``), ``metrics.csv``/``metrics.json``, ``checkpoint.pt`` and ``result.json``
are the supervised trainer's (:func:`~torch_isda.train.trainer.train` picks this class
when ``config.semi != "none"``).

Data (all on the training device):

* ``labels`` training images, balanced over classes and chosen with ``split_seed``
  (default ``seed``), keep their labels (:func:`~torch_isda.semi.labeled_split`); with
  ``val_fraction > 0`` a part of them is held out as a validation set (evaluated every
  epoch as ``val_error``, never trained on).
* The unlabeled pool is **every** training image except the validation set, the labeled
  ones included, as in the reference implementations (Laine & Aila, Tarvainen & Valpola,
  Miyato et al.).
* Pre-processing: global contrast normalization + ZCA whitening fitted on the training
  images (``zca``, default on CIFAR), else per-channel standardization. Augmentation:
  random translation by up to ``semi_translate`` pixels (reflect padding) plus, on CIFAR,
  a random horizontal flip, drawn independently for the labeled batch and each
  unlabeled view from one seeded generator.
* Every step takes ``labeled_batch_size`` labeled and ``unlabeled_batch_size`` unlabeled
  samples (:class:`~torch_isda.semi.SemiBatchSampler`); an epoch is one pass over the
  unlabeled pool.

One step (Eq. 19)::

    criterion.set_progress((epoch + i / steps) / epochs)        # lambda = lambda0 t / T
    features = model.forward_features(x_l); logits = fc(features)
    out = method.consistency(model, unlabeled_views, indices=idx)
    loss = criterion(features, logits, y_l, fc.weight, out.logits, out.target_probs,
                     out.loss, eta2=method.weight(epoch + i / steps, M / N))
    loss.backward(); sgd.step(); method.after_step(model, global_step)
    ...                                                            method.end_epoch()

With ``--loss isda`` the criterion is :class:`~torch_isda.semi.SemiISDALoss`: the ISDA
bound on the labeled batch (the covariance estimator sees labeled features only) +
``eta1`` x the consistency bound of Eq. (15) on the unlabeled batch (``p`` = the base
method's target, a constant) + ``eta2`` x the base method's regularizer; with
``--loss ce`` it is cross-entropy + ``eta2`` x the regularizer (the base method alone).
The test (and validation) error is that of ``method.eval_model(model)``: the teacher for
the mean teacher (whose student error is logged as ``student_test_error``).

On the CPU a resumed run reproduces the uninterrupted one exactly: the checkpoint adds
the method's state (temporal ensemble, teacher), the batch sampler's streams, the
augmentation generator, the ZCA whitening and the labeled split to the supervised
trainer's.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import __version__
from ..semi import (
    ZCA,
    SemiBatchLoader,
    SemiBatchSampler,
    SemiISDALoss,
    TranslateFlip,
    create_method,
    global_contrast_normalize,
    labeled_split,
)
from .checkpoint import atomic_write_json
from .config import TrainConfig
from .metrics import final_error
from .progress import ProgressBar, progress_enabled
from .semi_config import (
    dataset_semi_defaults,
    default_translate,
    method_kwargs,
    parse_semi_loss,
    semi_summary,
)
from .seeding import seed_everything
from .trainer import CONFIG_NAME, Trainer, _CosineFactor, _StepFactor

__all__ = ["SemiTrainer"]


class SemiTrainer(Trainer):
    """Semi-supervised trainer (see the module docstring). Built by
    :func:`~torch_isda.train.trainer.train` for configs with ``semi != "none"``."""

    def __init__(self, config: TrainConfig, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        if self.config.semi == "none":
            raise ValueError("SemiTrainer needs a config with semi != 'none'")
        self.labeled_seen = 0
        self.use_isda, self.loss_kwargs = parse_semi_loss(self.config.loss)

    # ------------------------------------------------------------------ setup

    def build(self) -> None:
        """Split and pre-process the data, create model, criterion, method, optimizer."""
        cfg, device = self.config, self.device
        seed_everything(cfg.seed)
        self._build_semi_data()
        model = self._create_model()
        self.features_fn = model.forward_features

        # Eq. (19): the run's ISDA settings, overridden by the spec (isda(lambda0=...))
        args = {"lambda0": cfg.lambda0, "kind": cfg.kind, "constant_lambda": cfg.constant_lambda,
                "label_smoothing": 0.0, **self.loss_kwargs}
        self.criterion = SemiISDALoss(
            int(model.num_features), self.num_classes, float(args["lambda0"]), str(args["kind"]),
            eta1=cfg.eta1, use_isda=self.use_isda, constant_lambda=bool(args["constant_lambda"]),
            label_smoothing=float(args["label_smoothing"])).to(device)

        self.sampler = SemiBatchSampler(
            self.split.labeled, self.unlabeled_pool, cfg.labeled_batch_size,
            cfg.unlabeled_batch_size, seed=cfg.seed)
        self.steps_per_epoch = len(self.sampler)
        self.method_kwargs = method_kwargs(cfg, self.steps_per_epoch)
        try:
            self.method = create_method(cfg.semi, model=model, num_samples=self.train_size,
                                        num_classes=self.num_classes, **self.method_kwargs)
        except TypeError as err:
            raise ValueError(f"bad --semi-kwargs for {cfg.semi}: {err}") from None
        self.method.to(device)
        self.loader = SemiBatchLoader(
            self.train_x, self.train_y, self.sampler, augment=self.augment_fn,
            num_views=self.method.num_views, generator=self.data_generator)
        self.labeled_fraction = self.split.labeled.numel() / self.unlabeled_pool.numel()

        momentum = float(cfg.momentum)
        self.optimizer = torch.optim.SGD(
            [p for p in model.parameters() if p.requires_grad], lr=cfg.lr, momentum=momentum,
            weight_decay=cfg.weight_decay, nesterov=bool(cfg.nesterov) and momentum > 0)
        if cfg.lr_schedule == "cosine":
            self.lr_factor = _CosineFactor(cfg.epochs, cfg.lr_offset or 0)
        elif cfg.lr_schedule == "poly":
            from .schedules import PolyFactor

            self.lr_factor = PolyFactor(cfg.epochs, cfg.poly_power)
        else:
            self.lr_factor = _StepFactor(cfg.milestones or [], cfg.gamma, cfg.lr_offset or 0)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self.lr_factor)
        self.scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp == "fp16")
        self.log(f"{semi_summary(cfg)}; {self.split.labeled.numel()} labeled / "
                 f"{self.unlabeled_pool.numel()} unlabeled-pool / {self.split.validation.numel()} "
                 f"validation images, {self.steps_per_epoch} steps per epoch, augmentation "
                 f"{self.augment}; {cfg.semi} options {self.method_kwargs}")

    def _build_semi_data(self) -> None:
        cfg, device = self.config, self.device
        from ..data import ImageDataset, create_dataset

        data = create_dataset(cfg.dataset, root=cfg.data_dir, download=cfg.download,
                              **cfg.dataset_kwargs)
        if not isinstance(data, ImageDataset):
            raise ValueError(f"dataset {cfg.dataset!r} returned {type(data).__name__}; "
                             f"--semi supports in-memory ImageDataset datasets")
        self.num_classes = data.num_classes
        self.image_size = tuple(data.image_size)
        self.train_size, self.test_size = data.train_size, data.test_size
        split_seed = cfg.seed if cfg.split_seed is None else cfg.split_seed
        self.split = labeled_split(data.train_labels, cfg.labels, data.num_classes, split_seed,
                                   cfg.val_fraction)
        # the unlabeled pool: every training image except the validation set (reference code)
        self.unlabeled_pool = torch.cat([self.split.labeled, self.split.unlabeled]).sort().values
        data = data.to(device)
        self.zca: Optional[ZCA] = None
        self._mean, self._std = data.mean, data.std
        self._raw_train, self._raw_test = data.train_images, data.test_images
        if cfg.zca:
            self.zca = ZCA().fit(global_contrast_normalize(data.train_images))
        self._preprocess()
        self.train_y = data.train_labels
        self.test_y = data.test_labels
        translate = cfg.semi_translate if cfg.semi_translate is not None else default_translate(
            self.image_size)
        flip = bool(dataset_semi_defaults(cfg.dataset).get("flip", False))
        self.augment_fn = TranslateFlip(max_shift=int(translate), flip=flip)
        self.augment = f"translate({int(translate)})" + ("+flip" if flip else "")
        self.data_generator = torch.Generator(device=device).manual_seed(cfg.seed)

    def _preprocess(self) -> None:
        """Images as float32 on the device: GCN + ZCA, or per-channel standardization."""
        if self.zca is not None:
            self.train_x = self.zca.transform(global_contrast_normalize(self._raw_train))
            self.test_x = self.zca.transform(global_contrast_normalize(self._raw_test))
        else:
            mean = torch.tensor(self._mean, device=self.device).view(1, -1, 1, 1)
            std = torch.tensor(self._std, device=self.device).view(1, -1, 1, 1)
            self.train_x = (self._raw_train.float() / 255.0 - mean) / std
            self.test_x = (self._raw_test.float() / 255.0 - mean) / std
        if self.config.channels_last:
            self.train_x = self.train_x.contiguous(memory_format=torch.channels_last)
            self.test_x = self.test_x.contiguous(memory_format=torch.channels_last)
        if hasattr(self, "loader"):
            self.loader.images = self.train_x

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["semi"] = {
            "method": self.method.state_dict(),
            "sampler": self.sampler.state_dict(),
            "zca": None if self.zca is None else self.zca.state_dict(),
            "labeled_seen": self.labeled_seen,
            "split": {k: getattr(self.split, k).clone() for k in ("labeled", "validation")},
        }
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        semi = state.get("semi")
        if semi is None:
            raise ValueError("the checkpoint was written by a supervised run; it cannot be "
                             "resumed with --semi (use another --out or --force)")
        for key in ("labeled", "validation"):
            if not torch.equal(semi["split"][key], getattr(self.split, key)):
                raise ValueError(
                    f"the checkpoint's {key} split differs from this run's (labels, split_seed, "
                    f"val_fraction or the dataset changed); use another --out or --force")
        super().load_state_dict(state)
        self.method.load_state_dict(semi["method"])
        self.sampler.load_state_dict(semi["sampler"])
        if semi["zca"] is not None and self.zca is not None:
            fitted = {k: v.clone() for k, v in self.zca.state_dict().items()}
            self.zca.load_state_dict(semi["zca"])
            if any(not torch.equal(fitted[k], v.to(fitted[k].device))
                   for k, v in self.zca.state_dict().items()):
                self._preprocess()  # whiten with the checkpoint's (bit-exact) matrix
        self.labeled_seen = int(semi["labeled_seen"])

    # ------------------------------------------------------------------ loops

    def _channels_last(self, x: Tensor) -> Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.config.channels_last else x

    def train_epoch(self, epoch: int) -> tuple[float, float]:
        """One pass over the unlabeled pool; returns (mean Eq.-19 loss, labeled error %).

        The means of the three parts and the last ``eta2`` are kept in ``self.epoch_values``.
        """
        cfg = self.config
        self.model.train()
        self.criterion.train()
        steps = self.steps_per_epoch
        sums = torch.zeros(4, dtype=torch.float64, device=self.device)  # loss, sup, cons, reg
        wrong = torch.zeros((), dtype=torch.long, device=self.device)
        seen = 0
        eta2 = 0.0
        bar = ProgressBar(self.loader, steps, f"epoch {epoch + 1}/{cfg.epochs}",
                          progress_enabled(self.quiet))
        try:
            for i, batch in enumerate(bar):
                progress = epoch + i / steps
                self.criterion.set_progress(progress / cfg.epochs)
                eta2 = self.method.weight(progress, self.labeled_fraction)
                x_l = self._channels_last(batch.x_labeled)
                views = tuple(self._channels_last(v) for v in batch.unlabeled_views)
                with self._autocast():
                    features = self.features_fn(x_l)
                    logits = self.classifier(features)
                    cons = self.method.consistency(self.model, views,
                                                   indices=batch.unlabeled_indices)
                out = self.criterion(features.float(), logits.float(), batch.y_labeled,
                                     self.classifier.weight, cons.logits.float(),
                                     cons.target_probs.float(), cons.loss.float(), eta2=eta2)
                for callback in self.callbacks:  # labeled batch, before the backward pass
                    if hasattr(callback, "on_step"):
                        callback.on_step(self, epoch * steps + i, features, logits,
                                         batch.y_labeled)
                self.optimizer.zero_grad(set_to_none=True)
                self.scaler.scale(out.loss).backward()
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.method.after_step(self.model, epoch * steps + i + 1)
                n = batch.y_labeled.shape[0]
                seen += n
                sums += torch.stack([out.loss.detach(), out.supervised, out.consistency,
                                     out.regularizer]).double()
                wrong += (logits.detach().argmax(1) != batch.y_labeled).sum()
                if bar.active and (i % 10 == 0 or i == steps - 1):
                    bar.set_postfix(loss=f"{float(sums[0]) / (i + 1):.4f}",
                                    err=f"{100.0 * int(wrong) / seen:.2f}%")
        finally:
            bar.close()
        self.method.end_epoch()
        self.labeled_seen += seen
        means = (sums / steps).tolist()
        self.epoch_values = {"supervised_loss": means[1], "consistency_loss": means[2],
                             "regularizer": means[3], "eta1": float(self.criterion.eta1)
                             if self.use_isda else 0.0, "eta2": float(eta2),
                             "labeled_seen": self.labeled_seen}
        return means[0], 100.0 * int(wrong) / seen

    @torch.no_grad()
    def _error(self, net: torch.nn.Module, x: Tensor, y: Tensor) -> tuple[float, float]:
        """Cross-entropy and error (%) of ``net`` (eval mode) on ``x``, ``y``."""
        was_training = net.training
        net.eval()
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        wrong = torch.zeros((), dtype=torch.long, device=self.device)
        bs = self.config.eval_batch_size
        try:
            for start in range(0, x.shape[0], bs):
                xb, yb = x[start:start + bs], y[start:start + bs]
                with self._autocast():
                    logits = net(xb)
                logits = logits.float()
                loss_sum += F.cross_entropy(logits, yb, reduction="sum").double()
                wrong += (logits.argmax(1) != yb).sum()
        finally:
            net.train(was_training)
        n = max(int(y.shape[0]), 1)
        return float(loss_sum) / n, 100.0 * int(wrong) / n

    def evaluate(self) -> tuple[float, float]:
        """Test loss and error (%) of ``method.eval_model(model)`` (the teacher for the mean
        teacher); the student's test error and the validation error go to ``eval_values``."""
        net = self.method.eval_model(self.model)
        loss, error = self._error(net, self.test_x, self.test_y)
        self.eval_values: dict[str, float] = {}
        if net is not self.model:
            self.eval_values["student_test_error"] = self._error(self.model, self.test_x,
                                                                 self.test_y)[1]
        val = self.split.validation
        if val.numel():
            idx = val.to(self.device)
            self.eval_values["val_error"] = self._error(
                net, self.train_x.index_select(0, idx), self.train_y.index_select(0, idx))[1]
        return loss, error

    def fit(self, stop_after: Optional[int] = None) -> bool:
        """Train from ``start_epoch`` to ``epochs`` (see :meth:`Trainer.fit`)."""
        cfg = self.config
        for epoch in range(self.start_epoch, cfg.epochs):
            t0 = time.perf_counter()
            lr = float(self.optimizer.param_groups[0]["lr"])
            train_loss, train_error = self.train_epoch(epoch)
            test_loss, test_error = self.evaluate()
            self.scheduler.step()
            row: dict[str, Any] = {
                "epoch": epoch + 1, "train_loss": train_loss, "train_error": train_error,
                "test_loss": test_loss, "test_error": test_error, "lr": lr,
                "lambda": self.criterion.ratio if self.use_isda else None,
                "seconds": time.perf_counter() - t0,
            }
            row.update(self.epoch_values)
            row.update(self.eval_values)
            self.rows.append(row)
            extra = "".join(f"  {k} {row[k]:.2f}%" for k in ("val_error", "student_test_error")
                            if k in row)
            summary = (f"train loss {train_loss:.4f} labeled err {train_error:6.2f}%  "
                       f"test loss {test_loss:.4f} err {test_error:6.2f}%{extra}")
            if not self._end_epoch(epoch, row, summary, stop_after, tail=f"  eta2 {row['eta2']:.3g}"):
                return False
        return True

    def result(self) -> dict[str, Any]:
        cfg = self.config
        result = super().result()
        result.update({
            "semi": cfg.semi, "isda": self.use_isda, "labels": cfg.labels,
            "labeled": int(self.split.labeled.numel()),
            "validation": int(self.split.validation.numel()),
            "unlabeled_pool": int(self.unlabeled_pool.numel()), "eta1": cfg.eta1,
            "labeled_seen": self.labeled_seen,
        })
        vals = [r.get("val_error") for r in self.rows]
        if any(v is not None for v in vals):
            result["final_val_error"] = final_error(vals, result["final_error_epochs"])
        return result

    def write_config(self) -> None:
        cfg = self.config
        atomic_write_json(self.out / CONFIG_NAME, {
            "config": cfg.to_dict(),
            "resolved": {
                "device": str(self.device), "augment": self.augment,
                "num_classes": self.num_classes, "image_size": list(self.image_size),
                "train_size": self.train_size, "test_size": self.test_size,
                "family": str(getattr(self.model, "family", "")),
                "num_parameters": sum(p.numel() for p in self.model.parameters()),
                "semi": {
                    "method": cfg.semi, "isda": self.use_isda,
                    "labeled": int(self.split.labeled.numel()),
                    "validation": int(self.split.validation.numel()),
                    "unlabeled_pool": int(self.unlabeled_pool.numel()),
                    "labeled_fraction": self.labeled_fraction,
                    "steps_per_epoch": self.steps_per_epoch,
                    "preprocessing": "gcn+zca" if self.zca is not None else "standardize",
                    "method_kwargs": self.method_kwargs,
                },
            },
            "torch_isda_version": __version__,
            "torch_version": torch.__version__,
            "python_version": sys.version.split()[0],
        })
