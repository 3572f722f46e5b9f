"""Semantic segmentation (``isda train --task segmentation``, Section 6.4, Table 7).

The step, the data and the evaluation are described in docs/segmentation.md. Callbacks'
``on_step`` gets the main head's features/logits and the full-resolution labels. Under
torchrun each rank keeps its slice of every global batch, both heads' per-pixel statistics
are all-gathered, the loss is weighted by the rank's share of valid pixels and the test set
is sharded (confusion matrices all-reduced).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from ....segmentation import resize_labels
from .criterion import ALIGN_CORNERS, SegmentationCriterion
from .metrics import ConfusionMatrix, predict_probs
from ...config import TrainConfig
from ...parallel import GlobalBatchShards, shard_bounds
from .config import (
    TABLE7_COLUMNS,
    parse_scales,
    parse_segmentation_loss,
    resolve_segmentation_config,
)
from .tables import (format_segmentation_result, single_class_warning,
                                   write_segmentation_comparison)
from ..base import StepOut, Task

__all__ = ["DeviceSegmentationBatches", "SegmentationTask", "create_segmentation_criterion"]


def create_segmentation_criterion(config: TrainConfig, model: nn.Module, num_classes: int,
                                  ignore_index: int = 255) -> SegmentationCriterion:
    """The criterion of a resolved config (spec arguments, e.g. ``isda(lambda0=5)``, win)."""
    name, kwargs = parse_segmentation_loss(config.loss)  # ce takes label_smoothing only
    if name == "isda":
        kwargs = {"lambda0": config.lambda0, "kind": config.kind,
                  "constant_lambda": config.constant_lambda, **kwargs}
    aux = int(getattr(model, "aux_num_features", 0) or 0) if getattr(model, "has_aux", False) else 0
    return SegmentationCriterion(name, int(model.num_features), aux, num_classes,
                                 loss_at=config.seg_loss_at, aux_weight=config.aux_weight,
                                 ignore_index=ignore_index, **kwargs)


class DeviceSegmentationBatches:
    """Re-iterable ``SegmentationData.batches`` with a length (training drops the last
    incomplete batch: batch norm of the ASPP image pooling needs more than one image)."""

    def __init__(self, data: Any, split: str, batch_size: int, *, train: bool, flip: bool,
                 generator: Optional[torch.Generator] = None) -> None:
        self.data, self.split, self.batch_size = data, split, int(batch_size)
        self.train, self.flip, self.generator = train, flip, generator

    def __len__(self) -> int:
        n = self.data.train_size if self.split == "train" else self.data.test_size
        return n // self.batch_size if self.train else -(-n // self.batch_size)

    def __iter__(self) -> Any:
        return self.data.batches(self.split, self.batch_size, shuffle=self.train,
                                 flip=self.flip and self.train, drop_last=self.train,
                                 generator=self.generator)


class SegmentationTask(Task):
    """Segmentation runs (see the module docstring)."""

    write_comparison = staticmethod(write_segmentation_comparison)
    result_warning = staticmethod(single_class_warning)
    run_summary = staticmethod(format_segmentation_result)
    schedule_per_step = True  # the poly schedule runs per iteration (milestones in epochs)

    def __init__(self, config: Any, engine: Any) -> None:
        super().__init__(config, engine)
        self.scales = parse_scales(config.eval_scales)
        self.final_eval: Optional[dict[str, Any]] = None

    resolve = staticmethod(resolve_segmentation_config)

    def final_window(self) -> int:
        return 1  # final_error = 100 - mIoU of the final model

    # ------------------------------------------------------------------ setup

    def build(self) -> None:
        cfg = self.config
        self.build_data()
        model = self.create_model(("forward_all", "get_classifier"))
        self.forward_fn = torch.compile(model.forward_all) if cfg.compile else model.forward_all
        self.criterion = create_segmentation_criterion(
            cfg, model, self.num_classes, self.ignore_index).to(self.device)
        self.steps_per_epoch = len(self.train_batches)
        if self.steps_per_epoch < 1:
            raise ValueError(f"the training set ({self.train_size} images) is smaller than one "
                             f"batch ({cfg.batch_size}); lower --batch-size")

    def build_data(self) -> None:
        cfg, ctx = self.config, self.context
        self.test_sharded = False
        if cfg.dataset == "cityscapes":
            self._cityscapes()
            return
        data = self.load_dataset(lambda d: hasattr(d, "batches") and hasattr(d, "train_masks"),
                                 "the segmentation trainer needs SegmentationData or cityscapes")
        if cfg.crop_size is not None:
            self.log(f"note: --crop-size applies to cityscapes only; {cfg.dataset} trains on "
                     f"whole images")
        data = data.to(self.device)
        flip = (cfg.augment or "flip") == "flip"
        self.augment = "flip" if flip else "none"
        self.data_generator = torch.Generator(device=self.device).manual_seed(cfg.seed)
        self.train_batches = DeviceSegmentationBatches(
            data, "train", cfg.batch_size, train=True, flip=flip, generator=self.data_generator)
        if ctx is not None:  # global batches, sliced per rank
            self.train_batches = GlobalBatchShards(self.train_batches, ctx.rank, ctx.world_size)
        self.test_batches = DeviceSegmentationBatches(data, "test", cfg.eval_batch_size,
                                                      train=False, flip=False)
        self.ignore_index = data.ignore_index

    def _cityscapes(self) -> None:
        cfg, ctx = self.config, self.context
        from ....data.cityscapes import create_cityscapes_loaders

        world = ctx.world_size if ctx else 1
        shard = {"rank": ctx.rank, "world_size": ctx.world_size} if ctx else {}
        crop = cfg.crop_size or 769
        try:
            loaders = create_cityscapes_loaders(
                cfg.data_dir, cfg.batch_size // world, cfg.workers, crop,
                val_batch_size=1, distributed=ctx is not None, seed=cfg.seed, **shard,
                **cfg.dataset_kwargs)
        except TypeError as err:
            raise ValueError(f"bad --dataset-kwargs {cfg.dataset_kwargs} for cityscapes: "
                             f"{err}") from None
        self.train_batches, self.test_batches = loaders.train, loaders.val
        self.test_sharded = ctx is not None
        self.data_generator = loaders.train.generator
        self.num_classes, self.ignore_index = loaders.num_classes, loaders.ignore_index
        self.image_size = (3, crop, crop)
        self.augment = "random_scale_crop_flip"
        self.train_size, self.test_size = len(loaders.train.dataset), len(loaders.val.dataset)

    # ------------------------------------------------------------------ steps

    def train_step(self, batch: Any, progress: float) -> StepOut:
        x, y = self.to_device(*batch)
        with self.engine.autocast():
            out = self.forward_fn(x, aux=self.criterion.use_aux)
        loss = self.criterion(out, y, self.model)
        with torch.no_grad():
            small = resize_labels(y, out.logits.shape[-2:])
            keep = small != self.ignore_index
            wrong = ((out.logits.detach().argmax(1) != small) & keep).sum()
        return StepOut(loss, int(y.shape[0]), {"wrong": wrong, "valid": keep.sum()},
                       backward=self._weighted(loss, y, small), features=out.features,
                       logits=out.logits, target=y)

    def _weighted(self, loss: Tensor, y: Tensor, small: Tensor) -> Optional[Tensor]:
        """Under torchrun, weight ``K v_r / v`` (``v``: valid pixels where the loss is
        taken), so that the averaged gradient is that of the global per-pixel mean."""
        if self.context is None:
            return None
        labels = small if self.criterion.loss_at == "feature" else y
        counts = (labels != self.ignore_index).sum().double().view(1)
        total = counts.clone()
        dist.all_reduce(total)
        return loss * (self.context.world_size * counts / total.clamp_min(1.0)).squeeze(0)

    def epoch_values(self, totals: dict[str, float]) -> tuple[float, float, dict[str, Any]]:
        """(mean loss, pixel error % of the main head at feature resolution, no extras)."""
        return (totals["loss"] / max(totals["n"], 1.0),
                100.0 * round(totals["wrong"]) / max(round(totals["valid"]), 1), {})

    def _test_batches(self) -> Any:
        """This rank's share of the test batches."""
        ctx = self.context
        for x, y in self.test_batches:
            if ctx is not None and not self.test_sharded:
                lo, hi = shard_bounds(int(y.shape[0]), ctx.rank, ctx.world_size)
                if lo == hi:
                    continue
                x, y = x[lo:hi], y[lo:hi]
            yield self.to_device(x, y)

    @torch.no_grad()
    def evaluate_miou(self, scales: Sequence[float] = (1.0,), flip: bool = False
                      ) -> dict[str, Any]:
        """mIoU etc. of the test split (:meth:`ConfusionMatrix.compute`) plus ``loss``: the
        mean cross-entropy of the (scale/flip-averaged) probabilities at the label size."""
        self.model.eval()
        cm = ConfusionMatrix(self.num_classes, self.ignore_index, device=self.device)
        nll = torch.zeros(2, dtype=torch.float64, device=self.device)  # sum, pixels
        for x, y in self._test_batches():
            with self.engine.autocast():
                probs = predict_probs(self.model, x, scales=scales, flip=flip,
                                      output_size=y.shape[-2:], align_corners=ALIGN_CORNERS)
            probs = probs.float()
            cm.update(probs.argmax(1), y)
            nll[0] += F.nll_loss(probs.clamp_min(1e-12).log(), y, ignore_index=self.ignore_index,
                                 reduction="sum").double()
            nll[1] += (y != self.ignore_index).sum()
        if self.context is not None:
            cm.all_reduce()
            dist.all_reduce(nll)
        metrics = cm.compute()
        total, count = nll.tolist()
        metrics["loss"] = total / count if count else float("nan")
        return metrics

    def evaluate_table7(self, single: Optional[dict[str, Any]] = None) -> dict[str, Any]:
        """The three columns of Table 7 for the current model (mIoU in %); ``single``: the
        :meth:`evaluate_miou` metrics of the single-scale column when already computed."""
        t0 = time.perf_counter()
        result: dict[str, Any] = {"eval_scales": list(self.scales)}
        for key, _, multi, flip in TABLE7_COLUMNS:
            if single is not None and not multi and not flip:
                metrics = single
            else:
                metrics = self.evaluate_miou(tuple(self.scales) if multi else (1.0,), flip)
            result[key] = 100.0 * metrics["miou"]
            result[key.replace("miou", "iou")] = [None if v != v else 100.0 * v  # nan: absent
                                                  for v in metrics["iou"]]
            result[key.replace("miou", "pixel_acc")] = 100.0 * metrics["pixel_acc"]
            # fewest classes predicted in a column: 1 = a model that has learned nothing
            result["predicted_classes"] = min(metrics["predicted_classes"],
                                              result.get("predicted_classes", self.num_classes))
        result["eval_seconds"] = time.perf_counter() - t0
        return result

    def evaluate(self, final: bool) -> dict[str, Any]:
        """Single-scale test metrics; after the last epoch also the Table 7 columns."""
        t0 = time.perf_counter()
        metrics = self.evaluate_miou()
        if final:  # the single-scale column is this evaluation (counted in eval_seconds)
            single_seconds = time.perf_counter() - t0
            self.final_eval = self.evaluate_table7(single=metrics)
            self.final_eval["eval_seconds"] += single_seconds
        return {"test_loss": metrics["loss"], "test_error": 100.0 - 100.0 * metrics["miou"],
                "test_miou": 100.0 * metrics["miou"],
                "test_pixel_acc": 100.0 * metrics["pixel_acc"]}

    def summary(self, row: dict[str, Any]) -> str:
        return (f"train loss {row['train_loss']:.4f} pixel err {row['train_error']:6.2f}%  "
                f"test loss {row['test_loss']:.4f} mIoU {row['test_miou']:6.2f}%")

    @staticmethod
    def result_line(result: dict[str, Any]) -> str:
        return (f"mIoU {result['miou_single']:.2f}% (multi-scale + flip "
                f"{result['miou_multiscale_flip']:.2f}%)")

    # ------------------------------------------------------------------ state and outputs

    def state_dict(self) -> dict[str, Any]:
        return {"final_eval": self.final_eval}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        finished = int(state["epoch"]) >= self.config.epochs
        self.final_eval = state.get("final_eval") if finished else None

    def result_fields(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        """The Table 7 columns of the final model once all epochs are done."""
        cfg = self.config
        if len(rows) >= cfg.epochs and self.final_eval is None:  # resumed after the last epoch
            self.final_eval = self.evaluate_table7()
        table7 = self.final_eval or {key: None for key, *_ in TABLE7_COLUMNS}
        return {
            "task": "segmentation", "metric": "mIoU (%)",
            "final_miou": rows[-1]["test_miou"] if rows else None, **table7,
            "seg_loss_at": cfg.seg_loss_at, "aux_weight": cfg.aux_weight,
            "iterations": len(rows) * self.steps_per_epoch,
        }

    def resolved_fields(self) -> dict[str, Any]:
        return {
            "task": "segmentation", "ignore_index": self.ignore_index,
            "steps_per_epoch": self.steps_per_epoch,
            "total_iterations": self.config.epochs * self.steps_per_epoch,
            "eval_scales": list(self.scales),
            "criterion": {"loss": self.criterion.loss, "loss_at": self.criterion.loss_at,
                          "aux": self.criterion.use_aux},
        }
