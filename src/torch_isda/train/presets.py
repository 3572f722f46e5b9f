"""Training presets of the paper, chosen by model family.

CIFAR presets are Table 9 of the TPAMI paper (= Table 1, Appendix B of the NeurIPS
paper): SGD with Nesterov momentum 0.9, the learning rate multiplied by ``gamma`` at the
``milestones`` (epochs, 0-based: ``milestones=(80, 120)`` trains epochs 0-79 at ``lr``,
80-119 at ``0.1 lr``, ...) or annealed with a per-epoch cosine.

=========== ====== ===== ====== ===== ======================================
family      epochs batch  wd     lr    schedule
=========== ====== ===== ====== ===== ======================================
resnet      160    128   1e-4   0.1   x0.1 at 80, 120
se_resnet   200    128   1e-4   0.1   x0.1 at 80, 120, 160
wide_resnet 240    128   5e-4   0.1   x0.2 at 60, 120, 160, 200
densenet    300    64    1e-4   0.1   x0.1 at 150, 200, 250 (DenseNet-BC)
resnext     350    128   5e-4   0.05  x0.1 at 150, 225, 300
shake_shake 1800   64    1e-4   0.1   cosine
small_cnn   30     64    5e-4   0.05  cosine (not in the paper: digits in seconds)
=========== ====== ===== ====== ===== ======================================

Further presets: ``cnn13`` (TPAMI Appendix B, the semi-supervised CNN-13: 400 epochs,
batch 128, lr 0.1 cosine, wd 1e-4; chosen for family ``cnn13``), ``imagenet`` (TPAMI
Appendix A: 300 epochs, batch 512, lr 0.2 cosine, wd 1e-4; chosen for the ``*_imagenet``
families) and ``pyramidnet`` (NeurIPS Table 1: 1800 epochs, batch 128, lr 0.1 cosine).
Any preset can be forced with ``--preset NAME``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

from .config import PRESET_FIELDS, TrainConfig

__all__ = [
    "DEFAULT_LAMBDA0",
    "LAMBDA0_GRID_CIFAR",
    "LAMBDA0_GRID_IMAGENET",
    "PRESETS",
    "Preset",
    "FAMILY_PRESETS",
    "default_out_dir",
    "get_preset",
    "list_presets",
    "model_family",
    "preset_name_for_family",
    "resolve_config",
]

#: Section 6.1: lambda_0 is selected from this set on CIFAR (full covariance) ...
LAMBDA0_GRID_CIFAR = (0.1, 0.25, 0.5, 0.75, 1.0)
#: ... and from this set on ImageNet (diagonal covariance).
LAMBDA0_GRID_IMAGENET = (1.0, 2.5, 5.0, 7.5, 10.0)
#: The CIFAR default.
DEFAULT_LAMBDA0 = 0.5


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

    def values(self) -> dict[str, Any]:
        """The :data:`~torch_isda.train.config.PRESET_FIELDS` of this preset."""
        return {
            "epochs": self.epochs, "batch_size": self.batch_size, "lr": self.lr,
            "momentum": self.momentum, "nesterov": self.nesterov,
            "weight_decay": self.weight_decay, "lr_schedule": self.lr_schedule,
            "milestones": list(self.milestones), "gamma": self.gamma,
        }

    def describe_schedule(self) -> str:
        if self.lr_schedule == "cosine":
            return "cosine"
        return f"x{self.gamma:g} at " + ", ".join(str(m) for m in self.milestones)


_T9 = "TPAMI Table 9 / NeurIPS Table 1"

PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("resnet", 160, 128, 0.1, 1e-4, "step", (80, 120), 0.1, source=_T9),
        Preset("se_resnet", 200, 128, 0.1, 1e-4, "step", (80, 120, 160), 0.1, source=_T9),
        Preset("wide_resnet", 240, 128, 0.1, 5e-4, "step", (60, 120, 160, 200), 0.2, source=_T9),
        Preset("densenet", 300, 64, 0.1, 1e-4, "step", (150, 200, 250), 0.1, source=_T9),
        Preset("resnext", 350, 128, 0.05, 5e-4, "step", (150, 225, 300), 0.1, source=_T9),
        Preset("shake_shake", 1800, 64, 0.1, 1e-4, "cosine", source=_T9),
        Preset("small_cnn", 30, 64, 0.05, 5e-4, "cosine",
               source="not in the paper: a CPU-seconds setting for digits"),
        # extras, selectable with --preset
        Preset("pyramidnet", 1800, 128, 0.1, 1e-4, "cosine", source="NeurIPS Table 1"),
        Preset("cnn13", 400, 128, 0.1, 1e-4, "cosine", source="TPAMI Appendix B"),
        Preset("imagenet", 300, 512, 0.2, 1e-4, "cosine", source="TPAMI Appendix A"),
    )
}


#: Families whose preset has another name.
FAMILY_PRESETS = {
    "resnet_imagenet": "imagenet",
    "densenet_imagenet": "imagenet",
    "resnext_imagenet": "imagenet",
}


def preset_name_for_family(family: str) -> Optional[str]:
    """The preset chosen for a model family (``None`` if there is none)."""
    if family in FAMILY_PRESETS:
        return FAMILY_PRESETS[family]
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
    from .criteria import spec_dirname

    return f"runs/{config.dataset}-{config.model}-{spec_dirname(config.loss)}-seed{config.seed}"


def resolve_config(config: TrainConfig) -> TrainConfig:
    """Fill the ``None`` preset fields from the preset (``config.preset`` or the model
    family's), default ``out``, and check dataset, model and loss names early.

    Explicitly set fields are kept. The returned config has ``preset`` set to the preset
    used (or ``None`` when every preset field was given explicitly).
    """
    from ..data import dataset_entrypoint
    from .criteria import parse_criterion_spec

    config.validate()
    dataset_entrypoint(config.dataset)  # ValueError listing the datasets
    if config.augment is not None:
        from ..data import build_augment

        build_augment(config.augment)  # ValueError listing the augmentations
    parse_criterion_spec(config.loss, check_registered=True)  # ValueError listing criteria
    family = model_family(config.model, config.model_kwargs)
    changes: dict[str, Any] = {}
    missing = [f for f in PRESET_FIELDS if getattr(config, f) is None]
    preset_name = config.preset
    if preset_name is None and missing:
        preset_name = preset_name_for_family(family)
        if preset_name is None:
            raise ValueError(
                f"no training preset for model family {family!r} (model {config.model!r}); "
                f"pass --preset NAME (one of {', '.join(list_presets())}) or set all of "
                f"{', '.join('--' + f.replace('_', '-') for f in missing)}")
    if preset_name is not None:
        values = get_preset(preset_name).values()
        changes.update({f: values[f] for f in missing})
        changes["preset"] = preset_name
    if config.out is None:
        changes["out"] = default_out_dir(config)
    resolved = dataclasses.replace(config, **changes)
    if resolved.milestones is not None:
        resolved.milestones = sorted(int(m) for m in resolved.milestones)
    resolved.validate()
    return resolved
