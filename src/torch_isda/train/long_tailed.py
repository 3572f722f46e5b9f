"""Long-tailed runs in the classification task (issue 23; docs/reproduce/long-tailed.md):
the per-class training counts given to the criteria, the balanced meta set bound to the
criteria that use one (MetaSAug), the pass over the training set bound to those that reason
over it (RISDA), and the many / medium / few-shot test errors.

A run is long-tailed when its ``--dataset-kwargs`` hold ``imbalance``. Its per-class
training counts are recorded under ``resolved`` in ``config.json``; every evaluation adds
``test_many_error``, ``test_medium_error``, ``test_few_error`` (empty for an empty group) and
``test_class_errors`` (the per-class errors, ``;``-joined) to the metrics row. The shot
thresholds are the dataset options ``many_shot`` (100) and ``few_shot`` (20).
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor

from ..data.longtail import SHOT_GROUPS, shot_group_errors, shot_groups
from .reporting import fmt_pm, mean_std

__all__ = ["GROUP_COLUMNS", "LongTailReport", "bind_meta_set", "bind_reasoning_source",
           "class_counts", "criterion_parts", "is_long_tailed", "meta_images_of",
           "parse_class_errors", "training_meta_sample", "training_set_statistics"]

#: Offset of the meta batches' seed from the run's seed (a stream of its own).
META_SEED_OFFSET = 7919

#: The metrics columns of the shot groups, in report order.
GROUP_COLUMNS = tuple(f"test_{g}_error" for g in SHOT_GROUPS)


def is_long_tailed(config: Any) -> bool:
    """Whether the run trains on a long-tailed subset (``imbalance`` in the dataset options)."""
    return "imbalance" in (config.dataset_kwargs or {})


def class_counts(labels: Tensor, num_classes: int) -> list[int]:
    """Training images per class (one host transfer, once per run)."""
    return torch.bincount(labels.reshape(-1).cpu(), minlength=num_classes).tolist()


def criterion_parts(criterion: Any) -> list[Any]:
    """The components of a (composite) criterion, in spec order."""
    return list(getattr(criterion, "components", [criterion]))


#: Images per class of the meta set drawn from the training images when the dataset holds
#: no held-out one (MetaSAug's 10).
TRAINING_META_PER_CLASS = 10


def training_meta_sample(labels: Tensor, num_classes: int, per_class: int, seed: int) -> Tensor:
    """Indices of up to ``per_class`` training images of every class, drawn with ``seed``
    (all of a class's images when it has fewer)."""
    labels = labels.reshape(-1).cpu()
    order = torch.randperm(labels.numel(), generator=torch.Generator().manual_seed(seed))
    shuffled = labels[order]
    return torch.cat([order[shuffled == c][:per_class] for c in range(num_classes)]).sort().values


def meta_images_of(task: Any, data: Any) -> tuple[Tensor, Tensor, str]:
    """The meta set of ``data``: its held-out images (``val_per_class``), or else a
    class-balanced sample of its training images (logged; the source is recorded)."""
    if data.meta_images is not None:
        return data.meta_images, data.meta_labels, "held_out"
    pick = training_meta_sample(data.train_labels, data.num_classes, TRAINING_META_PER_CLASS,
                                task.config.seed + META_SEED_OFFSET).to(data.train_labels.device)
    task.log(f"note: no held-out meta set (--dataset-kwargs val_per_class=k); the meta batches "
             f"come from up to {TRAINING_META_PER_CLASS} training images per class "
             f"({pick.numel()} images, also trained on)")
    return data.train_images[pick], data.train_labels[pick], "training_sample"


def bind_meta_set(task: Any, data: Any) -> Optional[str]:
    """Give the criteria that take a meta set (``bind_meta_source``: MetaSAug) the balanced
    meta images of ``data`` (:func:`meta_images_of`), augmented as the training batches;
    returns the meta set's source (``None`` when no criterion takes one)."""
    from ..data import build_augment
    from .criteria.long_tailed import MetaBatchSource

    cfg, ctx, source = task.config, task.context, None
    for part in criterion_parts(task.criterion):
        if not hasattr(part, "bind_meta_source"):
            continue
        if data is None:
            raise ValueError(f"--loss {cfg.loss} needs an in-memory dataset (a meta set)")
        images, labels, source = meta_images_of(task, data)
        engine = task.engine
        part.bind_meta_source(MetaBatchSource(
            images, labels, part.meta_batch_size,
            build_augment(task.augment, data.mean, data.std), cfg.seed + META_SEED_OFFSET,
            lambda: float(engine.optimizer.param_groups[0]["lr"]),
            rank=ctx.rank if ctx else 0, world_size=ctx.world_size if ctx else 1))
    return source


def training_set_statistics(task: Any, data: Any) -> tuple[Tensor, Tensor]:
    """The confusion counts (``C x C``, rows: true class) and the class means of the
    features (``C x A``) of the training images of ``data``, un-augmented, the model in
    evaluation mode (its mode restored after) and under the engine's AMP: RISDA's knowledge
    graph and prototypes. One host read (the caller's), once per run."""
    from ..data import DeviceBatchIterator, build_augment

    model, num_classes = task.model, data.num_classes
    batches = DeviceBatchIterator(data.train_images, data.train_labels,
                                  task.config.eval_batch_size, shuffle=False,
                                  transform=build_augment("none", data.mean, data.std))
    confusion = torch.zeros(num_classes * num_classes, dtype=torch.float64,
                            device=data.train_labels.device)
    sums: Optional[Tensor] = None
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for x, y in batches:
                with task.engine.autocast():
                    features = task.features_fn(x)
                    logits = task.classifier(features)
                if sums is None:
                    sums = features.new_zeros(num_classes, features.shape[1],
                                              dtype=torch.float64)
                confusion.index_add_(0, y * num_classes + logits.float().argmax(1),
                                     torch.ones_like(y, dtype=torch.float64))
                sums.index_add_(0, y, features.double())
    finally:
        model.train(was_training)
    if sums is None:
        raise ValueError("the training set is empty")
    confusion = confusion.view(num_classes, num_classes)
    return confusion, sums / confusion.sum(1, keepdim=True).clamp_min(1.0)


def bind_reasoning_source(task: Any, data: Any) -> None:
    """Give the criteria that reason over the training set (``bind_reasoning_source``:
    RISDA) :func:`training_set_statistics` of ``data`` and the task's log."""
    for part in criterion_parts(task.criterion):
        if not hasattr(part, "bind_reasoning_source"):
            continue
        if data is None:
            raise ValueError(f"--loss {task.config.loss} needs an in-memory dataset (a pass "
                             f"over its training images)")
        ctx = task.context
        if ctx is not None and ctx.world_size > 1 and part.classifier_only:
            raise ValueError("--loss risda: classifier_only=True (Stage II trains the "
                             "classifier alone) leaves the backbone without gradients, which "
                             "DDP refuses; pass risda(classifier_only=False) or train on one "
                             "process")
        part.bind_reasoning_source(lambda: training_set_statistics(task, data), task.log)


class LongTailReport:
    """Per-class and per-group test errors of a long-tailed run."""

    def __init__(self, counts: list[int], many: int = 100, few: int = 20,
                 subset_seed: int = 0) -> None:
        self.counts, self.subset_seed = counts, subset_seed
        self.many, self.few = many, few
        self.groups = shot_groups(counts, many, few)

    @classmethod
    def from_config(cls, config: Any, counts: list[int]) -> LongTailReport:
        kwargs = config.dataset_kwargs or {}
        return cls(counts, kwargs.get("many_shot", 100), kwargs.get("few_shot", 20),
                   kwargs.get("subset_seed", 0))

    def row(self, class_wrong: list[float], class_seen: list[float]) -> dict[str, Any]:
        """The metrics-row entries of one evaluation."""
        errors = shot_group_errors(class_wrong, class_seen, self.groups)
        per_class = [100.0 * w / s if s else None for w, s in zip(class_wrong, class_seen)]
        return {**{f"test_{g}_error": errors[g] for g in SHOT_GROUPS},
                "test_class_errors": ";".join("" if e is None else f"{e:.4f}" for e in per_class)}

    def resolved(self) -> dict[str, Any]:
        """The ``resolved`` entries of ``config.json``."""
        return {"class_counts": self.counts, "subset_seed": self.subset_seed, "shot_groups": {
            "many_shot": self.many, "few_shot": self.few,
            **{g: sum(1 for x in self.groups if x == g) for g in SHOT_GROUPS}}}


def parse_class_errors(text: Optional[str]) -> list[Optional[float]]:
    """The per-class errors of a metrics row's ``test_class_errors``."""
    if not text:
        return []
    return [float(v) if v else None for v in str(text).split(";")]


# ---------------------------------------------------------------------------- tables


def _window_mean(values: list[Optional[float]]) -> Optional[float]:
    return None if not values or any(v is None for v in values) else sum(values) / len(values)


def final_group_errors(rows: list[dict[str, Any]], window: int) -> dict[str, Optional[float]]:
    """Each shot group's error averaged over the last ``window`` epochs (as the final error;
    ``None`` for an empty group or a run without the columns)."""
    last = rows[-window:]
    return {g: _window_mean([r.get(f"test_{g}_error") for r in last]) for g in SHOT_GROUPS}


def final_class_errors(rows: list[dict[str, Any]], window: int) -> list[Optional[float]]:
    """Each class's error averaged over the last ``window`` epochs."""
    per_epoch = [parse_class_errors(r.get("test_class_errors")) for r in rows[-window:]]
    if not per_epoch or not per_epoch[0]:
        return []
    return [_window_mean([e[c] for e in per_epoch]) for c in range(len(per_epoch[0]))]


def _stats(values: list[Optional[float]]) -> tuple[Optional[float], Optional[float]]:
    kept = [v for v in values if v is not None]
    return mean_std(kept) if kept and len(kept) == len(values) else (None, None)


def group_rows(methods: list[Any]) -> tuple[list[list[str]], list[list[str]]]:
    """The rows of the shot-group tables: per method all / many / medium / few error
    (mean ± std, ``-`` for an empty group), and the per-seed values. ``methods`` carry
    ``group_errors`` (one dict per seed), ``final_errors`` and ``display``."""
    rows, seeds = [], []
    for m in methods:
        cells = [fmt_pm(*_stats(list(m.final_errors)))]
        cells += [fmt_pm(*_stats([e[g] for e in m.group_errors])) for g in SHOT_GROUPS]
        rows.append([m.display, *cells])
        seeds.append([m.display, *(", ".join("-" if e[g] is None else f"{e[g]:.2f}"
                                             for e in m.group_errors) for g in SHOT_GROUPS)])
    return rows, seeds


def group_csv_header() -> list[str]:
    return [f"{g}_error_{s}" for g in SHOT_GROUPS for s in ("mean", "std")] + [
        *(f"{g}_errors" for g in SHOT_GROUPS), "class_errors_mean"]


def group_csv_cells(m: Any) -> list[Any]:
    """The ``table.csv`` cells of :func:`group_csv_header` for one method."""
    cells: list[Any] = []
    for g in SHOT_GROUPS:
        mean, std = _stats([e[g] for e in m.group_errors])
        cells += ["" if mean is None else f"{mean:.4f}", "" if std is None else f"{std:.4f}"]
    cells += [";".join("" if e[g] is None else f"{e[g]:.4f}" for e in m.group_errors)
              for g in SHOT_GROUPS]
    per_class = [_stats([c[k] for c in m.class_errors])[0]
                 for k in range(len(m.class_errors[0]))] if m.class_errors else []
    cells.append(";".join("" if v is None else f"{v:.4f}" for v in per_class))
    return cells
