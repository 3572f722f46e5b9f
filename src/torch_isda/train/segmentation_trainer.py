"""The segmentation training loop of ``isda train --task segmentation`` (Section 6.4, Table 7).

One step (the official ``train_isda.py`` recipe, ``--seg-loss-at label``, the default)::

    criterion.set_progress(iteration / total_iterations)       # lambda = lambda0 * t / T
    out = model.forward_all(x)            # features, logits (+ aux) at 1/8 resolution
    z = isda_main.augmented_logits(out.features, out.logits, y, classifier.weight)
    z_aux = isda_aux.augmented_logits(out.aux_features, out.aux_logits, y, aux_classifier.weight)
    loss = CE(up(z), y) + 0.4 * CE(up(z_aux), y)  # up: bilinear to the label size, ignore 255
    loss.backward(); sgd.step(); poly.step()                  # lr * (1 - t / T) ** 0.9

``--seg-loss-at feature`` instead evaluates Eq. (7) per feature-map pixel with the labels
resized by nearest neighbour (:meth:`SegmentationISDALoss.forward`, the paper's
formulation). ``--loss ce`` drops the augmentation (plain cross-entropy on both heads, at
the same resolution). Each head has its own :class:`SegmentationISDALoss`, hence its own
covariance estimator; both are saved in the checkpoint (``criterion`` entry,
``main.estimator.*`` / ``aux.estimator.*``).

After every epoch the test split is evaluated single-scale (mIoU from a confusion matrix,
void pixels ignored): ``metrics.csv`` gets ``test_miou`` and ``test_error = 100 - mIoU``.
When the last epoch is done, the final model is evaluated as in Table 7 (single-scale,
multi-scale ``eval_scales``, multi-scale + flip) and ``result.json`` gets ``miou_single``,
``miou_multiscale``, ``miou_multiscale_flip`` (and per-class IoUs), and
``predicted_classes``: the fewest classes the final model predicts in one of the three
evaluations (1: it predicts a single class everywhere, which ``isda train`` and ``isda
compare`` report as a warning).

Data: ``synthetic_segmentation`` lives on the device (random flips drawn from one seeded
generator); ``cityscapes`` uses :func:`~torch_isda.data.cityscapes.create_cityscapes_loaders`
(``--workers``, random scale 0.5-2 / ``--crop-size`` crop / flip). Resuming reproduces the
uninterrupted run exactly on the CPU for in-memory data (and for DataLoaders with
``--workers 0``). Callbacks (``train(..., callbacks=...)``) get the main head's
feature-resolution ``features``/``logits`` and the full-resolution labels in ``on_step``.
Single-process only (the multi-process trainer does not run segmentation).
"""

from __future__ import annotations

import time
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import __version__
from ..segmentation import SegmentationISDALoss, resize_labels
from ..segmentation_metrics import ConfusionMatrix, predict_probs
from .config import TrainConfig
from .metrics import summarize
from .progress import ProgressBar, progress_enabled
from .schedules import PolyFactor
from .segmentation_config import parse_scales, parse_segmentation_loss
from .seeding import seed_everything
from .trainer import Trainer, _CosineFactor, _StepFactor

__all__ = ["ALIGN_CORNERS", "SegmentationCriterion", "SegmentationTrainer",
           "format_segmentation_result", "single_class_warning"]

#: Bilinear upsampling of logits/probabilities as in the official code (``CriterionDSN``
#: and ``evaluate.py`` of the segmentation toolbox use ``align_corners=True``).
ALIGN_CORNERS = True

#: The Table 7 columns: (result key, header, scales?, flip).
TABLE7_COLUMNS = (
    ("miou_single", "Single scale", False, False),
    ("miou_multiscale", "Multi-scale", True, False),
    ("miou_multiscale_flip", "Multi-scale + Flip", True, True),
)


class SegmentationCriterion(nn.Module):
    """The loss of both heads: ``main + aux_weight * aux``.

    Args:
        loss: ``"ce"`` or ``"isda"``.
        num_features, aux_num_features: ``A`` of the main and auxiliary classifier inputs
            (``aux_num_features=0``: no auxiliary loss).
        num_classes: ``C``.
        loss_at: ``"label"`` (ISDA-augmented logits upsampled bilinearly to the label size,
            then cross-entropy: the official code) or ``"feature"`` (per-pixel Eq. 7 at the
            feature resolution with nearest-resized labels: the paper's formulation).
        aux_weight: weight of the auxiliary head's loss (0.4 in the toolbox).
        lambda0, kind, constant_lambda: ISDA settings (``loss="isda"``).
        label_smoothing: of the cross-entropy.
        ignore_index: void label (255).
    """

    def __init__(self, loss: str, num_features: int, aux_num_features: int, num_classes: int, *,
                 loss_at: str = "label", aux_weight: float = 0.4, lambda0: float = 7.5,
                 kind: str = "diagonal", constant_lambda: bool = False,
                 label_smoothing: float = 0.0, ignore_index: int = 255) -> None:
        super().__init__()
        if loss not in ("ce", "isda"):
            raise ValueError(f"loss must be 'ce' or 'isda'; got {loss!r}")
        if loss_at not in ("label", "feature"):
            raise ValueError(f"loss_at must be 'label' or 'feature'; got {loss_at!r}")
        self.loss, self.loss_at = loss, loss_at
        self.aux_weight = float(aux_weight)
        self.ignore_index = int(ignore_index)
        self.label_smoothing = float(label_smoothing)
        self.use_aux = aux_num_features > 0 and self.aux_weight > 0

        def isda(features: int) -> Optional[SegmentationISDALoss]:
            if loss != "isda":
                return None
            return SegmentationISDALoss(features, num_classes, lambda0, kind,
                                        constant_lambda=constant_lambda, ignore_index=ignore_index,
                                        label_smoothing=label_smoothing)

        self.main = isda(num_features)
        self.aux = isda(aux_num_features) if self.use_aux else None

    @classmethod
    def from_config(cls, config: TrainConfig, model: nn.Module, num_classes: int,
                    ignore_index: int = 255) -> "SegmentationCriterion":
        """Build from a resolved config (spec arguments, e.g. ``isda(lambda0=5)``, win)."""
        name, kwargs = parse_segmentation_loss(config.loss)
        args: dict[str, Any] = {"lambda0": config.lambda0, "kind": config.kind,
                                "constant_lambda": config.constant_lambda}
        args.update(kwargs)
        if name == "ce":
            args = {"label_smoothing": kwargs.get("label_smoothing", 0.0)}
        aux = int(getattr(model, "aux_num_features", 0) or 0)
        if not getattr(model, "has_aux", False):
            aux = 0
        return cls(name, int(model.num_features), aux, num_classes, loss_at=config.seg_loss_at,
                   aux_weight=config.aux_weight, ignore_index=ignore_index, **args)

    # ------------------------------------------------------------------ hooks

    def set_progress(self, t_over_T: float) -> None:
        for isda in (self.main, self.aux):
            if isda is not None:
                isda.set_progress(t_over_T)

    def log_values(self) -> dict[str, float]:
        return {"lambda": self.main.ratio} if self.main is not None else {}

    # ------------------------------------------------------------------ loss

    def _cross_entropy(self, logits: Tensor, target: Tensor) -> Tensor:
        if not bool((target != self.ignore_index).any()):
            return logits.sum() * 0.0  # no valid pixel: 0, not nan
        return F.cross_entropy(logits, target, ignore_index=self.ignore_index,
                               label_smoothing=self.label_smoothing)

    def head_loss(self, isda: Optional[SegmentationISDALoss], features: Tensor, logits: Tensor,
                  target: Tensor, classifier: nn.Module) -> Tensor:
        """The loss of one head (``features``/``logits`` at feature resolution)."""
        features, logits = features.float(), logits.float()
        if self.loss_at == "feature":
            if isda is not None:
                return isda(features, logits, target, classifier.weight)
            return self._cross_entropy(logits, resize_labels(target, logits.shape[-2:]))
        if isda is not None:
            # contiguous NCHW (the result is a permuted view), as the plain logits are
            logits = isda.augmented_logits(features, logits, target, classifier.weight).contiguous()
        logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear",
                               align_corners=ALIGN_CORNERS)
        return self._cross_entropy(logits, target)

    def forward(self, out: Any, target: Tensor, model: nn.Module) -> Tensor:
        """``out``: the model's :class:`~torch_isda.models.segmentation.SegmentationOutput`;
        ``target``: ``B x H x W`` labels."""
        loss = self.head_loss(self.main, out.features, out.logits, target, model.get_classifier())
        if self.use_aux and out.aux_logits is not None:
            loss = loss + self.aux_weight * self.head_loss(
                self.aux, out.aux_features, out.aux_logits, target, model.get_aux_classifier())
        return loss


class _DeviceSegmentationBatches:
    """Re-iterable ``SegmentationData.batches`` with a length (training drops the last
    incomplete batch: batch norm of the ASPP image pooling needs more than one image)."""

    def __init__(self, data: Any, split: str, batch_size: int, *, train: bool, flip: bool,
                 generator: Optional[torch.Generator] = None) -> None:
        self.data, self.split, self.batch_size = data, split, int(batch_size)
        self.train, self.flip, self.generator = train, flip, generator
        n = data.train_size if split == "train" else data.test_size
        self.size = n
        self.steps = n // self.batch_size if train else -(-n // self.batch_size)

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Any:
        return self.data.batches(self.split, self.batch_size, shuffle=self.train,
                                 flip=self.flip and self.train, drop_last=self.train,
                                 generator=self.generator)


class SegmentationTrainer(Trainer):
    """The :class:`~torch_isda.train.trainer.Trainer` of segmentation runs (see the module
    docstring). Checkpoints, metrics files, ``config.json`` and the run control of
    :func:`~torch_isda.train.trainer.train` are shared with classification."""

    def __init__(self, config: TrainConfig, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        self.scales = parse_scales(self.config.eval_scales)
        self.final_eval: Optional[dict[str, Any]] = None

    # ------------------------------------------------------------------ setup

    def build(self) -> None:
        cfg, device = self.config, self.device
        seed_everything(cfg.seed)
        self._build_data()
        model = self._create_model(("forward_all", "get_classifier"), default_in_channels=False)
        self.forward_fn = torch.compile(model.forward_all) if cfg.compile else model.forward_all
        self.criterion = SegmentationCriterion.from_config(
            cfg, model, self.num_classes, self.ignore_index).to(device)
        self.want_aux = self.criterion.use_aux
        momentum = float(cfg.momentum)
        params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=momentum,
                                         weight_decay=cfg.weight_decay,
                                         nesterov=bool(cfg.nesterov) and momentum > 0)
        self.steps_per_epoch = len(self.train_batches)
        if self.steps_per_epoch < 1:
            raise ValueError(f"the training set ({self.train_size} images) is smaller than one "
                             f"batch ({cfg.batch_size}); lower --batch-size")
        self.total_steps = cfg.epochs * self.steps_per_epoch
        # the schedule runs per iteration (milestones stay in epochs)
        if cfg.lr_schedule == "poly":
            self.lr_factor: Any = PolyFactor(self.total_steps, cfg.poly_power)
        elif cfg.lr_schedule == "cosine":
            self.lr_factor = _CosineFactor(self.total_steps)
        else:
            milestones = [int(m) * self.steps_per_epoch for m in cfg.milestones or []]
            self.lr_factor = _StepFactor(milestones, cfg.gamma)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self.lr_factor)
        self.scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp == "fp16")

    def _build_data(self) -> None:
        cfg, device = self.config, self.device
        if cfg.dataset == "cityscapes":
            from ..data.cityscapes import create_cityscapes_loaders

            try:
                loaders = create_cityscapes_loaders(
                    cfg.data_dir, cfg.batch_size, cfg.workers, cfg.crop_size or 769,
                    val_batch_size=1, distributed=False, seed=cfg.seed, **cfg.dataset_kwargs)
            except TypeError as err:
                raise ValueError(f"bad --dataset-kwargs {cfg.dataset_kwargs} for cityscapes: "
                                 f"{err}") from None
            self.train_batches, self.test_batches = loaders.train, loaders.val
            self.data_generator = loaders.train.generator
            self.num_classes, self.ignore_index = loaders.num_classes, loaders.ignore_index
            crop = cfg.crop_size or 769
            self.image_size = (3, crop, crop)
            self.augment = "random_scale_crop_flip"
            self.train_size, self.test_size = len(loaders.train.dataset), len(loaders.val.dataset)
            return
        from ..data import create_dataset

        data = create_dataset(cfg.dataset, root=cfg.data_dir, download=cfg.download,
                              **cfg.dataset_kwargs)
        if not hasattr(data, "batches") or not hasattr(data, "train_masks"):
            raise ValueError(f"dataset {cfg.dataset!r} returned {type(data).__name__}; the "
                             f"segmentation trainer needs SegmentationData or cityscapes")
        if cfg.crop_size is not None:
            self.log(f"note: --crop-size applies to cityscapes only; {cfg.dataset} trains on "
                     f"whole images")
        data = data.to(device)
        flip = (cfg.augment or "flip") == "flip"
        self.augment = "flip" if flip else "none"
        self.data_generator = torch.Generator(device=device).manual_seed(cfg.seed)
        self.train_batches = _DeviceSegmentationBatches(
            data, "train", cfg.batch_size, train=True, flip=flip, generator=self.data_generator)
        self.test_batches = _DeviceSegmentationBatches(data, "test", cfg.eval_batch_size,
                                                       train=False, flip=False)
        self.num_classes, self.ignore_index = data.num_classes, data.ignore_index
        self.image_size = tuple(data.image_size)
        self.train_size, self.test_size = data.train_size, data.test_size

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["final_eval"] = self.final_eval
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # the shared restore; the scheduler's step count is in iterations here, which
        # self.lr_factor (per iteration) expects
        super().load_state_dict(state)
        finished = self.start_epoch >= self.config.epochs
        self.final_eval = state.get("final_eval") if finished else None

    # ------------------------------------------------------------------ loops

    def train_epoch(self, epoch: int) -> tuple[float, float]:
        """One pass; returns (mean loss, pixel error % of the main head at feature
        resolution, labels resized by nearest neighbour)."""
        cfg = self.config
        self.model.train()
        self.criterion.train()
        steps = self.steps_per_epoch
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        wrong = torch.zeros((), dtype=torch.long, device=self.device)
        valid = torch.zeros((), dtype=torch.long, device=self.device)
        seen = 0
        bar = ProgressBar(self.train_batches, steps, f"epoch {epoch + 1}/{cfg.epochs}",
                          progress_enabled(self.quiet))
        try:
            for i, (x, y) in enumerate(bar):
                x, y = self._to_device(x, y)
                self.criterion.set_progress((epoch * steps + i) / self.total_steps)
                with self._autocast():
                    out = self.forward_fn(x, aux=self.want_aux)
                loss = self.criterion(out, y, self.model)
                for callback in self.callbacks:  # main head, feature resolution
                    if hasattr(callback, "on_step"):
                        callback.on_step(self, epoch * steps + i, out.features, out.logits, y)
                self.optimizer.zero_grad(set_to_none=True)
                self.scaler.scale(loss).backward()
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.scheduler.step()
                n = y.shape[0]
                seen += n
                loss_sum += loss.detach().double() * n
                with torch.no_grad():
                    small = resize_labels(y, out.logits.shape[-2:])
                    keep = small != self.ignore_index
                    wrong += ((out.logits.detach().argmax(1) != small) & keep).sum()
                    valid += keep.sum()
                if bar.active and (i % 10 == 0 or i == steps - 1):
                    bar.set_postfix(loss=f"{float(loss_sum) / seen:.4f}")
        finally:
            bar.close()
        if seen == 0:
            raise ValueError("the training set is empty")
        return float(loss_sum) / seen, 100.0 * int(wrong) / max(int(valid), 1)

    @torch.no_grad()
    def evaluate_miou(self, scales: tuple[float, ...] | list[float] = (1.0,),
                      flip: bool = False) -> dict[str, Any]:
        """mIoU etc. of the test split (:meth:`ConfusionMatrix.compute`) plus ``loss``: the
        mean cross-entropy of the (scale/flip-averaged) probabilities at the label size."""
        self.model.eval()
        cm = ConfusionMatrix(self.num_classes, self.ignore_index, device=self.device)
        nll = torch.zeros((), dtype=torch.float64, device=self.device)
        count = 0
        for x, y in self.test_batches:
            x, y = self._to_device(x, y)
            with self._autocast():
                probs = predict_probs(self.model, x, scales=scales, flip=flip,
                                      output_size=y.shape[-2:], align_corners=ALIGN_CORNERS)
            probs = probs.float()
            cm.update(probs.argmax(1), y)
            keep = y != self.ignore_index
            if bool(keep.any()):
                nll += F.nll_loss(probs.clamp_min(1e-12).log(), y, ignore_index=self.ignore_index,
                                  reduction="sum").double()
                count += int(keep.sum())
        metrics = cm.compute()
        metrics["loss"] = float(nll) / count if count else float("nan")
        return metrics

    def evaluate(self) -> tuple[float, float]:
        """Single-scale test loss and error (``100 - mIoU``, %)."""
        metrics = self.evaluate_miou()
        self._last_eval = metrics
        return metrics["loss"], 100.0 - 100.0 * metrics["miou"]

    def evaluate_table7(self) -> dict[str, Any]:
        """The three columns of Table 7 for the current model (mIoU in %)."""
        t0 = time.perf_counter()
        result: dict[str, Any] = {"eval_scales": list(self.scales)}
        for key, _, multi, flip in TABLE7_COLUMNS:
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

    def fit(self, stop_after: Optional[int] = None) -> bool:
        cfg = self.config
        for epoch in range(self.start_epoch, cfg.epochs):
            t0 = time.perf_counter()
            lr = float(self.optimizer.param_groups[0]["lr"])
            train_loss, train_error = self.train_epoch(epoch)
            test_loss, test_error = self.evaluate()
            values = self.criterion.log_values()
            metrics = self._last_eval
            row: dict[str, Any] = {
                "epoch": epoch + 1, "train_loss": train_loss, "train_error": train_error,
                "test_loss": test_loss, "test_error": test_error, "lr": lr,
                "lambda": values.pop("lambda", None), "seconds": time.perf_counter() - t0,
                "test_miou": 100.0 * metrics["miou"],
                "test_pixel_acc": 100.0 * metrics["pixel_acc"],
            }
            row.update({k: float(v) for k, v in values.items()})
            self.rows.append(row)
            if epoch + 1 == cfg.epochs:
                self.final_eval = self.evaluate_table7()
            summary = (f"train loss {train_loss:.4f} pixel err {train_error:6.2f}%  "
                       f"test loss {test_loss:.4f} mIoU {row['test_miou']:6.2f}%")
            if not self._end_epoch(epoch, row, summary, stop_after):
                return False
        return True

    def result(self) -> dict[str, Any]:
        """``result.json``: the shared summary (``final_error = 100 - miou_single`` of the
        final model) plus the Table 7 columns once all epochs are done."""
        cfg = self.config
        from ..models.flops import count_parameters

        finished = len(self.rows) >= cfg.epochs
        if finished and self.final_eval is None:  # e.g. resumed after the last checkpoint
            self.final_eval = self.evaluate_table7()
        table7 = self.final_eval or {key: None for key, *_ in TABLE7_COLUMNS}
        return {
            **summarize(self.rows, last=1),
            "task": "segmentation", "metric": "mIoU (%)",
            "final_miou": self.rows[-1]["test_miou"] if self.rows else None,
            **table7,
            "seg_loss_at": cfg.seg_loss_at, "aux_weight": cfg.aux_weight,
            "dataset": cfg.dataset, "model": cfg.model, "loss": cfg.loss, "seed": cfg.seed,
            "epochs": cfg.epochs, "iterations": len(self.rows) * self.steps_per_epoch,
            "num_parameters": int(count_parameters(self.model)),
            "device": str(self.device), "torch_isda_version": __version__,
            "torch_version": torch.__version__,
        }

    def write_config(self) -> None:
        super().write_config()
        import json

        from .checkpoint import atomic_write_json
        from .trainer import CONFIG_NAME

        path = self.out / CONFIG_NAME
        data = json.loads(path.read_text())
        data["resolved"].update({
            "task": "segmentation", "ignore_index": self.ignore_index,
            "steps_per_epoch": self.steps_per_epoch, "total_iterations": self.total_steps,
            "eval_scales": list(self.scales),
            "criterion": {"loss": self.criterion.loss, "loss_at": self.criterion.loss_at,
                          "aux": self.criterion.use_aux},
        })
        atomic_write_json(path, data)


def single_class_warning(result: dict[str, Any], name: str = "the model") -> Optional[str]:
    """A warning when the final model of a segmentation run predicts a single class for
    every test pixel (``predicted_classes == 1`` in ``result.json``), else ``None``."""
    if result.get("predicted_classes") != 1:
        return None
    return (f"warning: {name} predicts a single class for every test pixel (its mIoU only "
            f"reflects the class frequencies); train longer (more --epochs) or check --lr")


def format_segmentation_result(result: dict[str, Any]) -> str:
    """The one-run summary line of ``isda train`` for segmentation (Table 7 columns)."""
    cells = []
    for key, header, *_ in TABLE7_COLUMNS:
        value = result.get(key)
        cells.append(f"{header.lower()} {'-' if value is None else f'{value:.2f}%'}")
    scales = ",".join(f"{s:g}" for s in result.get("eval_scales") or [])
    return f"test mIoU: {'  '.join(cells)}" + (f"  (scales {scales})" if scales else "")
