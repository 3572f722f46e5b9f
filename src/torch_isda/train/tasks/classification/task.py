"""Supervised image classification (``isda train``, Algorithm 1 of the paper; the step is
described in docs/architecture.md). In-memory datasets are batched on the device,
``imagefolder`` uses DataLoaders; under torchrun each rank keeps its slice of every global
batch, ``x -> (features, logits)`` runs through DDP and the evaluation is sharded.
"""

from __future__ import annotations

import inspect
from typing import Any, Optional

import torch
from torch import Tensor

from ...criteria import check_classifier, create_criterion
from ...long_tailed import (LongTailReport, bind_meta_set, bind_reasoning_source, class_counts,
                            criterion_parts, is_long_tailed)
from ...parallel import CountingLoader, GlobalBatchShards, TrainForward, rank_seed, shard_bounds
from ...presets import apply_preset
from ..base import StepOut, Task
from .tables import write_classification_comparison

__all__ = ["ClassificationTask"]


class ClassificationTask(Task):
    """Supervised classification with a training criterion (``--loss``)."""

    write_comparison = staticmethod(write_classification_comparison)

    #: Training images per class, the long-tailed report and the in-memory dataset (its meta
    #: set; :mod:`torch_isda.train.long_tailed`).
    class_counts: Optional[list[int]] = None
    long_tail: Optional[LongTailReport] = None
    meta_data: Any = None
    meta_set: Optional[str] = None  # where the meta batches come from (MetaSAug)

    resolve = staticmethod(apply_preset)

    # ------------------------------------------------------------------ setup

    def build(self) -> None:
        cfg = self.config
        self.build_data()
        model = self.create_model(in_channels=self.image_size[0])
        # --compile: the engine compiles the whole step (train/compiled_step.py); a
        # multi-process run compiles the feature extractor only
        self.features_fn = (torch.compile(model.forward_features)
                            if cfg.compile and self.context is not None else model.forward_features)
        self.criterion = create_criterion(cfg.loss, int(model.num_features), self.num_classes,
                                          cfg, class_counts=self.class_counts).to(self.device)
        check_classifier(self.criterion, model.get_classifier(), cfg.loss)
        self.meta_set = bind_meta_set(self, self.meta_data)
        bind_reasoning_source(self, self.meta_data)
        self.forward = TrainForward(model, self.features_fn, self.criterion.transform_features)

    def build_data(self) -> None:
        """Training and test batches (this rank's share under torchrun)."""
        cfg = self.config
        from ....data import DeviceBatchIterator, ImageDataset, build_augment

        if cfg.dataset == "imagefolder":
            self._imagefolder()
            return
        data = self.load_dataset(lambda d: isinstance(d, ImageDataset), "the trainer supports "
                                 "in-memory ImageDataset datasets and imagefolder").to(self.device)
        self.class_counts = class_counts(data.train_labels, data.num_classes)
        self.long_tail = (LongTailReport.from_config(cfg, self.class_counts)
                          if is_long_tailed(cfg) else None)
        self.meta_data = data
        self.augment = cfg.augment or data.default_augment
        self.data_generator = torch.Generator(device=self.device).manual_seed(cfg.seed)
        self.train_batches = DeviceBatchIterator(
            data.train_images, data.train_labels, cfg.batch_size, shuffle=True,
            drop_last=bool(cfg.compile),  # one batch shape: one compiled graph
            generator=self.data_generator,
            transform=build_augment(self.augment, data.mean, data.std))
        lo, hi, per_rank = 0, data.test_size, cfg.eval_batch_size
        if self.context is not None:  # global batches sliced per rank, sharded test set
            self.train_batches = self._shards(self.train_batches)
            lo, hi = shard_bounds(data.test_size, self.context.rank, self.context.world_size)
            per_rank = max(1, -(-cfg.eval_batch_size // self.context.world_size))
        self.test_batches = DeviceBatchIterator(
            data.test_images[lo:hi], data.test_labels[lo:hi], per_rank, shuffle=False,
            transform=build_augment("none", data.mean, data.std))

    def _shards(self, train: Any) -> GlobalBatchShards:
        ctx = self.context
        shards = GlobalBatchShards(train, ctx.rank, ctx.world_size)
        if len(shards) < len(train):  # the last batch is smaller than the world size
            self.log(f"note: the last batch of each epoch ({train.num_samples % train.batch_size} "
                     f"samples) is smaller than the world size {ctx.world_size} and is skipped")
        return shards

    def _imagefolder(self) -> None:
        cfg, ctx = self.config, self.context
        from ....data import create_imagefolder_loaders

        world = ctx.world_size if ctx else 1
        shard = ({"rank": ctx.rank, "world_size": ctx.world_size} if ctx else {})
        loaders = create_imagefolder_loaders(
            cfg.data_dir, cfg.batch_size // world, cfg.workers, seed=cfg.seed,
            distributed=ctx is not None, val_batch_size=-(-cfg.eval_batch_size // world),
            **shard, **cfg.dataset_kwargs)
        if cfg.augment not in (None, "none"):
            self.log(f"note: --augment {cfg.augment} is ignored for imagefolder "
                     f"(RandomResizedCrop + flip are used)")
        self.data_generator = loaders.train.generator
        self.train_batches, self.test_batches = loaders.train, loaders.val
        if ctx is not None:
            if self.data_generator is not None:  # per-rank augmentation streams
                self.data_generator.manual_seed(rank_seed(cfg.seed, ctx.rank))
            self.train_batches = CountingLoader(loaders.train, ctx.world_size)
        self.num_classes = loaders.data.num_classes
        self.image_size = tuple(loaders.data.image_size)
        self.augment = "random_resized_crop_flip"
        self.train_size, self.test_size = len(loaders.data.train), len(loaders.data.val)

    def prepare_distributed(self, context: Any) -> bool:
        """``x -> (features, logits)`` as one DDP module (one forward for the reducer);
        without ``--sync-bn`` DDP broadcasts rank 0's BatchNorm statistics every forward."""
        from torch.nn.parallel import DistributedDataParallel

        params = inspect.signature(DistributedDataParallel).parameters
        sync_buffers = ("forward_sync_buffers" if "forward_sync_buffers" in params
                        else "broadcast_buffers")  # the name before torch 2.13
        self.forward = DistributedDataParallel(
            self.forward, device_ids=[self.device.index] if self.device.type == "cuda" else None,
            **{sync_buffers: not self.config.sync_bn})
        return True

    # ------------------------------------------------------------------ steps

    def on_epoch_start(self, engine: Any, epoch: int) -> None:
        super().on_epoch_start(engine, epoch)
        sampler = getattr(getattr(self.train_batches, "loader", None), "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)

    def train_step(self, batch: Any, progress: float) -> StepOut:
        return self.loss_step(*self.to_device(*batch))

    def loss_step(self, x: Tensor, y: Tensor) -> StepOut:
        """The loss and logs of a batch on the device (what ``--compile`` traces whole with
        the backward and the update: no host read, no data-dependent shape)."""
        x, y = self.criterion.transform_batch(x, y)
        with self.engine.autocast():
            features, logits = self.forward(x)
        target = self.criterion.transform_target(y)
        loss = self.criterion(features.float(), logits.float(), target, self.model)
        wrong = (logits.detach().argmax(1) != y).sum()
        return StepOut(loss, int(y.shape[0]), {"wrong": wrong}, backward=self._weighted(loss),
                       features=features, logits=logits, target=target)

    def _weighted(self, loss: Tensor) -> Tensor:
        """Weight ``K n_r / n`` for uneven shards, so DDP's average is the global mean."""
        batches = self.train_batches
        if self.context is None or batches.local_size * batches.world_size == batches.global_size:
            return loss
        return loss * (batches.world_size * batches.local_size / batches.global_size)

    @torch.no_grad()
    def evaluate(self, final: bool) -> dict[str, Any]:
        """Test loss (cross-entropy of the plain logits) and error (%), global over ranks."""
        self.model.eval()
        per_class = self.num_classes if self.long_tail is not None else 0
        loss, wrong, seen, *classes = self.cross_entropy_error(
            lambda x: self.classifier(self.features_fn(x)), self.test_batches, sharded=True,
            per_class=per_class)
        if seen == 0:
            raise ValueError("the test set is empty")
        groups = self.long_tail.row(*classes) if self.long_tail is not None else {}
        return {"test_loss": loss / seen, "test_error": 100.0 * round(wrong) / seen, **groups}

    def resolved_fields(self) -> dict[str, Any]:
        fields = self.long_tail.resolved() if self.long_tail is not None else {}
        return {**fields, **({"meta_set": self.meta_set} if self.meta_set else {})}

    def generators(self) -> dict[str, Any]:
        meta = [p.meta_source.generator for p in criterion_parts(self.criterion)
                if getattr(p, "meta_source", None) is not None]
        return {**super().generators(), **({"meta": meta[0]} if meta else {})}
