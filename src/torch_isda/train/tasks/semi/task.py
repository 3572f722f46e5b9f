"""Semi-supervised classification (``isda train --semi METHOD``, Section 5, Eq. 19, Table 6).

Data protocol, loss, evaluation and checkpoint contents: docs/semi_supervised.md. Under
torchrun each rank keeps its slice of the labeled and of the unlabeled part of every global
batch; the estimator all-gathers the labeled features and the temporal ensemble records the
whole global batch, so every rank holds the statistics of one process.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ....semi import (
    ZCA,
    SemiBatchLoader,
    SemiBatchSampler,
    SemiISDALoss,
    TranslateFlip,
    create_method,
    global_contrast_normalize,
    labeled_split,
)
from .config import (
    dataset_semi_defaults,
    default_translate,
    method_kwargs,
    parse_semi_loss,
    resolve_semi_config,
    semi_summary,
)
from ...parallel import all_gather_cat, broadcast_buffers, shard_bounds
from ...metrics import final_error
from ...presets import apply_preset
from .tables import write_semi_comparison
from ..base import StepOut, Task

__all__ = ["SemiTask"]


class SemiTask(Task):
    """Semi-supervised training (see the module docstring)."""

    write_comparison = staticmethod(write_semi_comparison)

    def __init__(self, config: Any, engine: Any) -> None:
        super().__init__(config, engine)
        self.labeled_seen = 0
        self.eta2 = 0.0
        name, self.loss_kwargs = parse_semi_loss(config.loss)
        self.use_isda = name == "isda"

    @staticmethod
    def resolve(config: Any) -> Any:
        return resolve_semi_config(apply_preset(config))

    # ------------------------------------------------------------------ setup

    def build(self) -> None:
        """Split and pre-process the data, create model, criterion and method."""
        cfg = self.config
        self.build_data()
        model = self.create_model(in_channels=self.image_size[0])
        self.features_fn = model.forward_features
        # Eq. (19): the run's ISDA settings, overridden by the spec (isda(lambda0=...))
        args = {"lambda0": cfg.lambda0, "kind": cfg.kind, "constant_lambda": cfg.constant_lambda,
                "label_smoothing": 0.0, **self.loss_kwargs}
        self.criterion = SemiISDALoss(
            int(model.num_features), self.num_classes, float(args["lambda0"]), str(args["kind"]),
            eta1=cfg.eta1, use_isda=self.use_isda, constant_lambda=bool(args["constant_lambda"]),
            label_smoothing=float(args["label_smoothing"])).to(self.device)
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
        self.method.to(self.device)
        self.train_batches = SemiBatchLoader(
            self.train_x, self.train_y, self.sampler, augment=self.augment_fn,
            num_views=self.method.num_views, generator=self.data_generator)
        self.labeled_fraction = self.split.labeled.numel() / self.unlabeled_pool.numel()
        sizes = self.sizes
        self.log(f"{semi_summary(cfg)}; {sizes['labeled']} labeled / {sizes['unlabeled_pool']} "
                 f"unlabeled-pool / {sizes['validation']} validation images, "
                 f"{self.steps_per_epoch} steps per epoch, augmentation {self.augment}; "
                 f"{cfg.semi} options {self.method_kwargs}")

    def build_data(self) -> None:
        cfg, device = self.config, self.device
        from ....data import ImageDataset

        data = self.load_dataset(lambda d: isinstance(d, ImageDataset),
                                 "--semi supports in-memory ImageDataset datasets")
        split_seed = cfg.seed if cfg.split_seed is None else cfg.split_seed
        self.split = labeled_split(data.train_labels, cfg.labels, data.num_classes, split_seed,
                                   cfg.val_fraction)
        # the unlabeled pool: every training image except the validation set (reference code)
        self.unlabeled_pool = torch.cat([self.split.labeled, self.split.unlabeled]).sort().values
        self.sizes = {"labeled": int(self.split.labeled.numel()),
                      "validation": int(self.split.validation.numel()),
                      "unlabeled_pool": int(self.unlabeled_pool.numel())}
        data = data.to(device)
        self.zca = ZCA().fit(global_contrast_normalize(data.train_images)) if cfg.zca else None
        self.stats = (data.mean, data.std)
        self.raw = (data.train_images, data.test_images)
        self.preprocess()
        self.train_y, self.test_y = data.train_labels, data.test_labels
        translate = cfg.semi_translate if cfg.semi_translate is not None else default_translate(
            self.image_size)
        flip = bool(dataset_semi_defaults(cfg.dataset).get("flip", False))
        self.augment_fn = TranslateFlip(max_shift=int(translate), flip=flip)
        self.augment = f"translate({int(translate)})" + ("+flip" if flip else "")
        self.data_generator = torch.Generator(device=device).manual_seed(cfg.seed)

    def preprocess(self) -> None:
        """Images as float32 on the device: GCN + ZCA, or per-channel standardization."""
        mean, std = (torch.tensor(v, device=self.device).view(1, -1, 1, 1) for v in self.stats)

        def prepare(raw: Tensor) -> Tensor:
            if self.zca is not None:
                return self.channels_last(self.zca.transform(global_contrast_normalize(raw)))
            return self.channels_last((raw.float() / 255.0 - mean) / std)

        self.train_x, self.test_x = (prepare(raw) for raw in self.raw)
        if hasattr(self, "train_batches"):
            self.train_batches.images = self.train_x

    def prepare_distributed(self, context: Any) -> bool:
        """The temporal ensemble records the predictions of the whole global batch."""
        record = getattr(self.method, "record", None)
        if record is not None:
            def gathered(indices: Tensor, probs: Tensor) -> None:
                idx = torch.as_tensor(indices, device=probs.device)
                record(all_gather_cat(idx), all_gather_cat(probs.detach()))

            self.method.record = gathered
        return False

    # ------------------------------------------------------------------ steps

    def _my_share(self, batch: Any) -> Any:
        """This rank's slice of the labeled and of the unlabeled part of a global batch."""
        ctx = self.context
        lo, hi = shard_bounds(batch.y_labeled.shape[0], ctx.rank, ctx.world_size)
        ulo, uhi = shard_bounds(batch.unlabeled_indices.shape[0], ctx.rank, ctx.world_size)
        return batch._replace(
            x_labeled=batch.x_labeled[lo:hi], y_labeled=batch.y_labeled[lo:hi],
            labeled_indices=batch.labeled_indices[lo:hi],
            unlabeled_views=tuple(v[ulo:uhi] for v in batch.unlabeled_views),
            unlabeled_indices=batch.unlabeled_indices[ulo:uhi])

    def train_step(self, batch: Any, progress: float) -> StepOut:
        if self.context is not None:
            batch = self._my_share(batch)
        self.eta2 = self.method.weight(progress * self.config.epochs, self.labeled_fraction)
        x_l = self.channels_last(batch.x_labeled)
        views = tuple(self.channels_last(v) for v in batch.unlabeled_views)
        with self.engine.autocast():
            features = self.features_fn(x_l)
            logits = self.classifier(features)
            cons = self.method.consistency(self.model, views, indices=batch.unlabeled_indices)
        out = self.criterion(features.float(), logits.float(), batch.y_labeled,
                             self.classifier.weight, cons.logits.float(),
                             cons.target_probs.float(), cons.loss.float(), eta2=self.eta2)
        n = int(batch.y_labeled.shape[0])
        logs = {"supervised": out.supervised * n, "consistency": out.consistency * n,
                "regularizer": out.regularizer * n,
                "wrong": (logits.detach().argmax(1) != batch.y_labeled).sum()}
        return StepOut(out.loss, n, logs, features=features, logits=logits,
                       target=batch.y_labeled)

    def on_step_end(self, engine: Any, step: int) -> None:
        self.method.after_step(self.model, step + 1)

    def on_train_epoch_end(self, engine: Any, epoch: int) -> None:
        self.method.end_epoch()

    def epoch_values(self, totals: dict[str, float]) -> tuple[float, float, dict[str, Any]]:
        n = max(totals["n"], 1.0)
        self.labeled_seen += int(round(totals["n"]))
        extras = {"supervised_loss": totals["supervised"] / n,
                  "consistency_loss": totals["consistency"] / n,
                  "regularizer": totals["regularizer"] / n,
                  "eta1": float(self.criterion.eta1) if self.use_isda else 0.0,
                  "eta2": float(self.eta2), "labeled_seen": self.labeled_seen}
        return totals["loss"] / n, 100.0 * round(totals["wrong"]) / n, extras

    def _error(self, net: torch.nn.Module, x: Tensor, y: Tensor) -> tuple[float, float]:
        """Cross-entropy and error (%) of ``net`` (eval mode) on ``x``, ``y``."""
        was_training = net.training
        net.eval()
        bs = self.config.eval_batch_size
        try:
            loss, wrong, n = self.cross_entropy_error(
                net, ((x[i:i + bs], y[i:i + bs]) for i in range(0, x.shape[0], bs)))
        finally:
            net.train(was_training)
        return loss / max(n, 1), 100.0 * round(wrong) / max(n, 1)

    def evaluate(self, final: bool) -> dict[str, Any]:
        """Test metrics of ``method.eval_model(model)``, the student's and the validation error."""
        if self.context is not None and not self.config.sync_bn:
            broadcast_buffers(self.method)  # e.g. the teacher's BatchNorm statistics
        net = self.method.eval_model(self.model)
        loss, error = self._error(net, self.test_x, self.test_y)
        values: dict[str, Any] = {"test_loss": loss, "test_error": error}
        if net is not self.model:
            values["student_test_error"] = self._error(self.model, self.test_x, self.test_y)[1]
        val = self.split.validation
        if val.numel():
            idx = val.to(self.device)
            values["val_error"] = self._error(
                net, self.train_x.index_select(0, idx), self.train_y.index_select(0, idx))[1]
        return values

    def log_values(self) -> dict[str, Any]:
        return {"lambda": self.criterion.ratio if self.use_isda else None}

    def summary(self, row: dict[str, Any]) -> str:
        extra = "".join(f"  {k} {row[k]:.2f}%" for k in ("val_error", "student_test_error")
                        if k in row)
        return (f"train loss {row['train_loss']:.4f} labeled err {row['train_error']:6.2f}%  "
                f"test loss {row['test_loss']:.4f} err {row['test_error']:6.2f}%{extra}")

    def summary_tail(self, row: dict[str, Any]) -> str:
        return f"  eta2 {row['eta2']:.3g}"

    # ------------------------------------------------------------------ state and outputs

    def state_dict(self) -> dict[str, Any]:
        return {"semi": {
            "method": self.method.state_dict(),
            "sampler": self.sampler.state_dict(),
            "zca": None if self.zca is None else self.zca.state_dict(),
            "labeled_seen": self.labeled_seen,
            "split": {k: getattr(self.split, k).clone() for k in ("labeled", "validation")},
        }}

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
        self.method.load_state_dict(semi["method"])
        self.sampler.load_state_dict(semi["sampler"])
        if semi["zca"] is not None and self.zca is not None:
            fitted = {k: v.clone() for k, v in self.zca.state_dict().items()}
            self.zca.load_state_dict(semi["zca"])
            if any(not torch.equal(fitted[k], v.to(fitted[k].device))
                   for k, v in self.zca.state_dict().items()):
                self.preprocess()  # whiten with the checkpoint's (bit-exact) matrix
        self.labeled_seen = int(semi["labeled_seen"])

    def result_fields(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        cfg = self.config
        result = {
            "semi": cfg.semi, "isda": self.use_isda, "labels": cfg.labels, **self.sizes,
            "eta1": cfg.eta1, "labeled_seen": self.labeled_seen,
        }
        vals = [r.get("val_error") for r in rows]
        if any(v is not None for v in vals):
            result["final_val_error"] = final_error(vals, self.final_window())
        return result

    def resolved_fields(self) -> dict[str, Any]:
        return {"semi": {
            "method": self.config.semi, "isda": self.use_isda, **self.sizes,
            "labeled_fraction": self.labeled_fraction,
            "steps_per_epoch": self.steps_per_epoch,
            "preprocessing": "gcn+zca" if self.zca is not None else "standardize",
            "method_kwargs": self.method_kwargs,
        }}
