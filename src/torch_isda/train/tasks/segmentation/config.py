"""Configuration of the segmentation task (Section 6.4, Table 7): task detection, the
segmentation presets' extra defaults and :func:`resolve_segmentation_config`, which fills
every ``None`` field (presets tabulated in docs/segmentation.md; the synthetic preset's
model options go under any ``--model-kwargs`` given). The resolved config has
``task="segmentation"``; classification configs keep ``task=None`` (so configs saved
before the field existed still match).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

from ...config import TrainConfig

__all__ = [
    "TABLE7_COLUMNS",
    "DEFAULT_SEGMENTATION_MODEL",
    "SEGMENTATION_DATASETS",
    "SYNTHETIC_MODEL_KWARGS",
    "infer_task",
    "parse_scales",
    "parse_segmentation_loss",
    "register_segmentation_dataset",
    "resolve_segmentation_config",
]

#: The Table 7 columns: (result key, header, scales?, flip).
TABLE7_COLUMNS = (
    ("miou_single", "Single scale", False, False),
    ("miou_multiscale", "Multi-scale", True, False),
    ("miou_multiscale_flip", "Multi-scale + Flip", True, True),
)

#: Registered datasets that yield ``(image, B x H x W label map)`` pairs.
SEGMENTATION_DATASETS: set[str] = {"synthetic_segmentation", "cityscapes"}
#: The model used when a segmentation run names the (classification) default model.
DEFAULT_SEGMENTATION_MODEL = "deeplabv3_resnet"
#: The tiny DeepLab-v3 of the synthetic preset (~0.16M parameters, ~2 s of CPU time per
#: epoch on one thread, evaluation included).
SYNTHETIC_MODEL_KWARGS = {"depth": 10, "width": 8, "head_channels": 32, "aux_channels": 32}


def register_segmentation_dataset(name: str) -> None:
    """Mark a registered dataset as a segmentation dataset (``task`` auto-detection)."""
    SEGMENTATION_DATASETS.add(str(name))


@dataclasses.dataclass(frozen=True)
class SegmentationExtras:
    """The segmentation-only defaults of a preset (``lambda0``/``kind`` live in the
    :class:`~torch_isda.train.presets.Preset` itself)."""

    crop_size: Optional[int]
    eval_scales: str
    model_kwargs: dict = dataclasses.field(default_factory=dict, hash=False)
    aux_weight: float = 0.4
    seg_loss_at: str = "label"


#: Extra defaults per segmentation preset (other presets forced with ``--preset`` get
#: those of ``segmentation``).
SEGMENTATION_EXTRAS: dict[str, SegmentationExtras] = {
    "segmentation": SegmentationExtras(crop_size=769, eval_scales="0.75,1,1.25,1.5"),
    "segmentation_synthetic": SegmentationExtras(
        crop_size=None, eval_scales="0.75,1,1.25", model_kwargs=dict(SYNTHETIC_MODEL_KWARGS)),
}


def infer_task(config: TrainConfig) -> str:
    """``"segmentation"`` or ``"classification"``: ``config.task``, or (when ``None``)
    from the dataset. A task that contradicts the dataset raises ``ValueError``."""
    seg_data = config.dataset in SEGMENTATION_DATASETS
    task = config.task
    semi = getattr(config, "semi", "none")
    if semi != "none" and (task == "segmentation" or (task is None and seg_data)):
        raise ValueError(
            f"--semi {semi} is semi-supervised classification; it cannot be combined with "
            f"segmentation (--task segmentation or a segmentation dataset such as "
            f"{config.dataset if seg_data else 'synthetic_segmentation'}); drop --semi or the "
            f"segmentation task")
    if task is None:
        return "segmentation" if seg_data else "classification"
    if task == "segmentation" and not seg_data:
        raise ValueError(
            f"task 'segmentation' needs a segmentation dataset (one of "
            f"{', '.join(sorted(SEGMENTATION_DATASETS))}); got dataset {config.dataset!r}")
    if task == "classification" and seg_data:
        raise ValueError(
            f"dataset {config.dataset!r} is a segmentation dataset; use --task segmentation "
            f"(or leave --task unset)")
    return task


def segmentation_preset_name(config: TrainConfig) -> str:
    """``config.preset`` or the dataset's segmentation preset."""
    if config.preset is not None:
        return config.preset
    if config.dataset == "synthetic_segmentation":
        return "segmentation_synthetic"
    return "segmentation"


def parse_scales(text: Any) -> list[float]:
    """``"0.75,1,1.25"`` (or a list) -> ``[0.75, 1.0, 1.25]``; positive, no repeats."""
    if isinstance(text, (list, tuple)):
        items = list(text)
    else:
        items = [v for v in str(text).replace(" ", "").strip("[]").split(",") if v]
    try:
        scales = [float(v) for v in items]
    except ValueError:
        raise ValueError(f"eval_scales must be comma-separated numbers such as 0.75,1,1.25; "
                         f"got {text!r}") from None
    if not scales or any(not s > 0 for s in scales) or len(set(scales)) != len(scales):
        raise ValueError(f"eval_scales must be distinct positive numbers; got {text!r}")
    return scales


def parse_segmentation_loss(spec: str) -> tuple[str, dict[str, Any]]:
    """``"isda(lambda0=5)"`` -> ``("isda", {"lambda0": 5})``: one primary loss, ``ce`` or
    ``isda``, without modifiers."""
    from ...criteria import parse_single_loss

    return parse_single_loss(spec, "segmentation runs")


def _segmentation_model(config: TrainConfig, extras: SegmentationExtras
                        ) -> tuple[str, dict, str]:
    """``(model, model_kwargs, family)``: the default model replaced by the segmentation one,
    the preset's model options under the given ones; ``ValueError`` for other families."""
    from ...presets import model_family

    model = config.model
    if model == TrainConfig.model:  # the classification default: use the segmentation one
        model = DEFAULT_SEGMENTATION_MODEL
    model_kwargs = {**extras.model_kwargs, **config.model_kwargs}
    try:
        family = model_family(model, model_kwargs)  # also checks the model_kwargs
    except ValueError:
        family = model_family(model, config.model_kwargs)
        if family == "segmentation":
            raise
    if family != "segmentation":
        raise ValueError(
            f"model {model!r} (family {family!r}) is not a segmentation model; use "
            f"deeplabv3_resnet or pspnet_resnet (forward_all(), 1x1 classifier)")
    return model, model_kwargs, family


def resolve_segmentation_config(config: TrainConfig) -> TrainConfig:
    """Fill a segmentation config (see the module docstring); the ``resolve`` of the
    segmentation task (:func:`~torch_isda.train.resolve.resolve_config`)."""
    from ....data import dataset_entrypoint
    from ....functional import KINDS
    from ...presets import default_out_dir, get_preset

    config.validate()
    infer_task(config)  # refuses --semi and a task the dataset contradicts
    dataset_entrypoint(config.dataset)  # ValueError listing the datasets
    preset_name = segmentation_preset_name(config)
    extras = SEGMENTATION_EXTRAS.get(preset_name, SEGMENTATION_EXTRAS["segmentation"])
    model, model_kwargs, family = _segmentation_model(config, extras)
    preset = get_preset(preset_name)
    changes: dict[str, Any] = {"task": "segmentation", "model": model,
                               "model_kwargs": model_kwargs, "preset": preset_name}
    changes.update({k: v for k, v in preset.values().items() if getattr(config, k) is None})
    isda = preset.isda_defaults(model, family)
    if preset.lambda0 is None and preset.kind is None:  # a non-segmentation preset forced
        isda = get_preset("segmentation").isda_defaults(model, family)
    changes.update({k: isda[k] for k in ("lambda0", "kind") if getattr(config, k) is None})
    changes.update({k: getattr(extras, k) for k in ("crop_size", "eval_scales", "aux_weight",
                                                   "seg_loss_at") if getattr(config, k) is None})
    resolved = dataclasses.replace(config, **changes)
    resolved.eval_scales = ",".join(f"{s:g}" for s in parse_scales(resolved.eval_scales))
    _, loss_kwargs = parse_segmentation_loss(resolved.loss)
    if loss_kwargs.get("kind", resolved.kind) not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}; got {loss_kwargs['kind']!r}")
    if resolved.augment not in (None, "none", "flip"):
        raise ValueError(f"segmentation runs accept --augment flip (the default: random "
                         f"horizontal flips) or none; got {resolved.augment!r}")
    if resolved.lr_schedule == "step" and resolved.milestones is None:
        resolved.milestones = []
    if resolved.milestones is not None:
        resolved.milestones = sorted(int(m) for m in resolved.milestones)
    if config.out is None:
        resolved.out = default_out_dir(resolved)
    return resolved  # validated by resolve_config
