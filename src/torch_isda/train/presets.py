"""Training presets of the paper, chosen by dataset (:data:`DATASET_PRESETS`), else by
model family (:func:`preset_name_for_family`); any preset can be forced with ``--preset``.

The presets, their sources, their LR timing (:attr:`Preset.lr_offset`) and their ISDA
defaults per family and model are tabulated in docs/training.md ("Presets"); the
segmentation presets are chosen in :mod:`torch_isda.train.tasks.segmentation.config`. Values
given explicitly (``--lambda0``, ``isda(lambda0=...)``, ...) always win.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Optional

from .tasks.semi.config import semi_run_name
from .config import DEFAULT_KIND, DEFAULT_LAMBDA0, ISDA_PRESET_FIELDS, PRESET_FIELDS, TrainConfig
from .criteria import parse_criterion_spec, spec_dirname

__all__ = [
    "DEFAULT_KIND",
    "DEFAULT_LAMBDA0",
    "LAMBDA0_GRID_CIFAR",
    "LAMBDA0_GRID_IMAGENET",
    "PRESETS",
    "Preset",
    "DATASET_PRESETS",
    "apply_preset",
    "default_out_dir",
    "get_preset",
    "isda_defaults",
    "list_presets",
    "model_family",
    "preset_name_for_family",
]

#: Section 6.1: lambda_0 is selected from this set on CIFAR (full covariance) ...
LAMBDA0_GRID_CIFAR = (0.1, 0.25, 0.5, 0.75, 1.0)
#: ... and from this set on ImageNet (diagonal covariance).
LAMBDA0_GRID_IMAGENET = (1.0, 2.5, 5.0, 7.5, 10.0)


@dataclasses.dataclass(frozen=True)
class Preset:
    """Optimization hyper-parameters of one model family."""

    name: str
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    lr_schedule: str  # "step" | "cosine"
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    source: str = ""
    #: Added to the 0-based epoch when the step/cosine schedule is evaluated: 1 for the
    #: presets of the official ISDA CIFAR code, 0 otherwise (docs/training.md).
    lr_offset: int = 0
    #: ISDA defaults of the preset (``None``: :data:`DEFAULT_LAMBDA0` / :data:`DEFAULT_KIND`).
    lambda0: Optional[float] = None
    kind: Optional[str] = None
    #: Refinements by model family, then by model name (the model wins), e.g.
    #: ``{"densenet_imagenet": {"lambda0": 1.0}, "resnet101": {"lambda0": 5.0}}``.
    isda_overrides: Mapping[str, Mapping[str, Any]] = dataclasses.field(
        default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        for key, values in self.isda_overrides.items():
            unknown = set(values) - set(ISDA_PRESET_FIELDS)
            if unknown:
                raise ValueError(f"preset {self.name!r}: isda_overrides[{key!r}] may only set "
                                 f"{', '.join(ISDA_PRESET_FIELDS)}; got {sorted(unknown)}")
        frozen = MappingProxyType({k: MappingProxyType(dict(v))
                                   for k, v in self.isda_overrides.items()})
        object.__setattr__(self, "isda_overrides", frozen)

    def isda_defaults(self, model: Optional[str] = None, family: Optional[str] = None
                      ) -> dict[str, Any]:
        """``{"lambda0": ..., "kind": ...}`` for ``model`` (of ``family``) under this
        preset: the global defaults, then the preset's, then its family entry, then its
        model entry."""
        values: dict[str, Any] = {"lambda0": DEFAULT_LAMBDA0, "kind": DEFAULT_KIND}
        values.update({k: v for k, v in (("lambda0", self.lambda0), ("kind", self.kind))
                       if v is not None})
        for key in (family, model):
            if key is not None:
                values.update(self.isda_overrides.get(key, {}))
        return values

    def values(self) -> dict[str, Any]:
        """The :data:`~torch_isda.train.config.PRESET_FIELDS` of this preset."""
        return {f: list(self.milestones) if f == "milestones" else getattr(self, f)
                for f in PRESET_FIELDS}

    def describe_schedule(self) -> str:
        if self.lr_schedule == "cosine":
            return "cosine"
        if self.lr_schedule == "poly":
            return "poly (per iteration)"
        return f"x{self.gamma:g} at " + ", ".join(str(m) for m in self.milestones)


_T9 = "TPAMI Table 9 / NeurIPS Table 1"
#: The official CIFAR script's LR timing (``adjust_learning_rate(optimizer, epoch + 1)``).
_CIFAR = {"lr_offset": 1}

#: TPAMI Appendix A: lambda_0 = 7.5 for ResNets and ResNeXts, 5 for ResNet-101, 1 for
#: DenseNets, with the diagonal covariance.
_IMAGENET_ISDA = {
    "lambda0": 7.5,
    "kind": "diagonal",
    "isda_overrides": {"densenet_imagenet": {"lambda0": 1.0}, "resnet101": {"lambda0": 5.0}},
}

PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("resnet", 160, 128, 0.1, 1e-4, "step", (80, 120), 0.1, source=_T9, **_CIFAR),
        Preset("se_resnet", 200, 128, 0.1, 1e-4, "step", (80, 120, 160), 0.1, source=_T9,
               **_CIFAR),
        Preset("wide_resnet", 240, 128, 0.1, 5e-4, "step", (60, 120, 160, 200), 0.2, source=_T9,
               **_CIFAR),
        Preset("densenet", 300, 64, 0.1, 1e-4, "step", (150, 200, 250), 0.1, source=_T9,
               **_CIFAR),
        Preset("resnext", 350, 128, 0.05, 5e-4, "step", (150, 225, 300), 0.1, source=_T9,
               **_CIFAR),
        Preset("shake_shake", 1800, 64, 0.1, 1e-4, "cosine", source=_T9, **_CIFAR),
        Preset("small_cnn", 30, 64, 0.05, 5e-4, "cosine",
               source="not in the paper: a CPU-seconds setting for digits"),
        # by dataset (DATASET_PRESETS)
        Preset("mnist", 40, 128, 0.1, 5e-4, "cosine",
               source="not in the paper: SGD + cosine for the MNIST family (28x28 grey)"),
        # extras, selectable with --preset
        Preset("pyramidnet", 1800, 128, 0.1, 1e-4, "cosine", source="NeurIPS Table 1", **_CIFAR),
        Preset("cnn13", 400, 128, 0.1, 1e-4, "cosine", source="TPAMI Appendix B"),
        Preset("imagenet", 300, 512, 0.2, 1e-4, "cosine", nesterov=False,
               source="TPAMI Appendix A; SGD without Nesterov as the official imagenet_DDP.py",
               **_IMAGENET_ISDA),
        Preset("imagenet_120", 120, 256, 0.1, 1e-4, "step", (30, 60, 90), 0.1, nesterov=False,
               source="NeurIPS Appendix B (lambda_0, kind: TPAMI Appendix A; SGD without "
               "Nesterov as the official imagenet_DDP.py)", **_IMAGENET_ISDA),
        # segmentation (Table 7; chosen by torch_isda.train.tasks.segmentation.config)
        Preset("segmentation", 108, 8, 0.01, 5e-4, "poly", nesterov=False, lambda0=7.5,
               kind="diagonal", source="official ISDA segmentation code: Cityscapes, 40k "
               "iterations of batch 8 (= 108 epochs), 769 crops"),
        Preset("segmentation_synthetic", 12, 16, 0.1, 5e-4, "poly", nesterov=False,
               lambda0=0.5, kind="diagonal",
               source="not in the paper: synthetic_segmentation in about 25 s of CPU time "
               "(lr from trial runs on the default draw; lambda_0 selected on another "
               "draw of the data, dataset seed 1)"),
    )
}


#: Datasets whose preset is chosen by the dataset rather than by the model family.
DATASET_PRESETS = {"mnist": "mnist", "fashion_mnist": "mnist", "kmnist": "mnist"}


def preset_name_for_family(family: str) -> Optional[str]:
    """The preset chosen for a model family: its namesake, ``imagenet`` for the ``*_imagenet``
    families, else ``None``."""
    if family in PRESETS:
        return family
    if family.endswith("_imagenet"):
        return "imagenet"
    return None


def list_presets() -> list[str]:
    return sorted(PRESETS)


def get_preset(name: str) -> Preset:
    """The preset called ``name`` (``ValueError`` listing the presets if unknown)."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(
            f"Unknown preset {name!r}. Available presets: {', '.join(list_presets())}.") from None


def model_family(model: str, model_kwargs: Optional[dict] = None) -> str:
    """The ``family`` of a registered model, read from an instance built on the meta
    device (no memory, no initialization cost). Unknown names raise the model registry's
    ``ValueError`` (which lists the available models)."""
    import torch

    from ..models import create_model, model_entrypoint

    model_entrypoint(model)  # clear error for unknown names
    kwargs = dict(model_kwargs or {})
    try:
        with torch.device("meta"):
            net = create_model(model, num_classes=10, **kwargs)
    except TypeError as err:
        raise ValueError(f"model {model!r} does not accept model_kwargs {kwargs}: {err}") from None
    except Exception:  # a model that cannot be built on meta: build it for real
        net = create_model(model, num_classes=10, **kwargs)
    return str(getattr(net, "family", "") or "")


def default_out_dir(config: TrainConfig) -> str:
    loss = spec_dirname(config.loss)
    if config.semi != "none":  # e.g. runs/digits-digits_cnn-vat-isda-100labels-seed0
        loss = semi_run_name(config)
    return f"runs/{config.dataset}-{config.model}-{loss}-seed{config.seed}"


def isda_defaults(model: str, preset: Optional[str] = None,
                  model_kwargs: Optional[dict] = None) -> dict[str, Any]:
    """The ISDA defaults ``{"lambda0": ..., "kind": ...}`` of ``model`` under ``preset``
    (default: the preset of the model's family; ``0.5`` / ``"full"`` without one)."""
    family = model_family(model, model_kwargs)
    name = preset if preset is not None else preset_name_for_family(family)
    if name is None:
        return {"lambda0": DEFAULT_LAMBDA0, "kind": DEFAULT_KIND}
    return get_preset(name).isda_defaults(model, family)


def _check_names(config: TrainConfig) -> None:
    """Validate ``config`` and check its dataset, augmentation and loss names early
    (``ValueError`` listing the registered ones)."""
    from ..data import build_augment, dataset_entrypoint

    config.validate()
    dataset_entrypoint(config.dataset)
    if config.augment is not None:
        build_augment(config.augment)
    parse_criterion_spec(config.loss, check_registered=True)


def apply_preset(config: TrainConfig) -> TrainConfig:
    """Fill the ``None`` fields of a classification config from ``config.preset`` or the
    dataset's / model family's preset (``lambda0``/``kind`` by :meth:`Preset.isda_defaults`;
    a non-zero ``lr_offset`` from the preset used, else the family's) and ``out``; check the
    dataset, model and loss names early. ``preset`` becomes the preset used (``None`` when
    every preset field was given)."""
    if config.task is not None:  # classification is stored as None (older configs match)
        config = dataclasses.replace(config, task=None)
    _check_names(config)
    family = model_family(config.model, config.model_kwargs)
    automatic = DATASET_PRESETS.get(config.dataset) or preset_name_for_family(family)
    changes: dict[str, Any] = {}
    missing = [f for f in PRESET_FIELDS if getattr(config, f) is None]
    preset_name = config.preset
    if preset_name is None and missing:
        preset_name = automatic
        if preset_name is None:
            raise ValueError(
                f"no training preset for model family {family!r} (model {config.model!r}); "
                f"pass --preset NAME (one of {', '.join(list_presets())}) or set all of "
                f"{', '.join('--' + f.replace('_', '-') for f in missing)}")
    if preset_name is not None:
        values = get_preset(preset_name).values()
        changes.update({f: values[f] for f in missing})
        changes["preset"] = preset_name
    missing_isda = [f for f in ISDA_PRESET_FIELDS if getattr(config, f) is None]
    if missing_isda:
        isda_preset = automatic if preset_name is None else preset_name
        defaults = ({"lambda0": DEFAULT_LAMBDA0, "kind": DEFAULT_KIND} if isda_preset is None
                    else get_preset(isda_preset).isda_defaults(config.model, family))
        changes.update({f: defaults[f] for f in missing_isda})
    if config.lr_offset is None:  # the LR timing of the preset (docs/training.md)
        timing_preset = preset_name if preset_name is not None else preset_name_for_family(family)
        if timing_preset is not None and get_preset(timing_preset).lr_offset:
            # only a non-zero offset is recorded: None (= 0) keeps the configs of earlier
            # runs equal, so finished runs are still reused
            changes["lr_offset"] = get_preset(timing_preset).lr_offset
    if config.out is None:
        changes["out"] = default_out_dir(config)
    resolved = dataclasses.replace(config, **changes)
    if resolved.milestones is not None:
        resolved.milestones = sorted(int(m) for m in resolved.milestones)
    return resolved
