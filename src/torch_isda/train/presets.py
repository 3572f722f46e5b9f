"""Training presets of the paper, chosen by model family.

CIFAR presets are Table 9 of the TPAMI paper (= Table 1, Appendix B of the NeurIPS
paper): SGD with Nesterov momentum 0.9, the learning rate multiplied by ``gamma`` at the
``milestones`` or annealed with a per-epoch cosine.

LR timing (``lr_offset``, :attr:`Preset.lr_offset`): the CIFAR presets of the paper's
tables follow the official ISDA CIFAR code, which calls ``adjust_learning_rate(optimizer,
epoch + 1)`` before training 0-based epoch ``epoch``. Their milestones are therefore
1-based: ``milestones=(80, 120)`` trains 0-based epochs 0-78 at ``lr``, 79-118 at ``0.1 lr``
and 119-159 at ``0.01 lr`` (the lr drops *before* 0-based epoch 79), and their cosine is
``(1 + cos(pi (epoch + 1) / epochs)) / 2``, which is exactly 0 in the last epoch (its first
epoch runs at ``0.5 (1 + cos(pi / epochs)) lr``). These presets set ``lr_offset=1``. The
``imagenet`` presets follow the official ``imagenet_DDP.py`` (``adjust_learning_rate(optimizer,
epoch)``: the cosine at the 0-based epoch, PyTorch's convention) with ``lr_offset=0``, as do
the presets not taken from the official CIFAR script (``small_cnn``, ``cnn13``, the
segmentation presets, whose schedules run per iteration anyway). ``--lr-offset`` overrides
it; without a preset it is 0.

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

Dataset presets (chosen by dataset, before the model family; :data:`DATASET_PRESETS`):

=========== ====== ===== ====== ===== ======================================
preset      epochs batch  wd     lr    schedule
=========== ====== ===== ====== ===== ======================================
mnist       40     128   5e-4   0.1   cosine (not in the paper)
=========== ====== ===== ====== ===== ======================================

``mnist`` is chosen for the datasets ``mnist``, ``fashion_mnist`` and ``kmnist`` with any
model (e.g. ``resnet32``, whose stem takes the images' single channel). Their augmentation
is the dataset's own (``crop_flip(padding=2)`` for Fashion-MNIST, ``crop(padding=2)`` for
the digit sets, see :mod:`torch_isda.data.mnist`).

Further presets: ``cnn13`` (TPAMI Appendix B, the semi-supervised CNN-13: 400 epochs,
batch 128, lr 0.1 cosine, wd 1e-4; chosen for family ``cnn13``), ``imagenet`` (TPAMI
Appendix A; chosen for the ``*_imagenet`` families), ``imagenet_120`` (NeurIPS Appendix B,
the shorter schedule) and ``pyramidnet`` (NeurIPS Table 1: 1800 epochs, batch 128, lr 0.1
cosine). Any preset can be forced with ``--preset NAME``.

Segmentation (Table 7): ``segmentation`` (the official Cityscapes setup: 108 epochs = 40k
iterations of batch 8, lr 0.01, momentum 0.9 without Nesterov, wd 5e-4, per-iteration poly
schedule, lambda_0 7.5, diagonal) and ``segmentation_synthetic`` (about 25 s of CPU time per run on
``synthetic_segmentation``) are chosen by dataset in
:mod:`torch_isda.train.segmentation_config`, which also fills the segmentation-only fields.

Both ImageNet presets use SGD with momentum 0.9 *without* Nesterov, as the official
``imagenet_DDP.py`` does (``torch.optim.SGD(params, lr, momentum=..., weight_decay=...)``).

=============== ====== ===== ==== ==== ================== ========= ===============
ImageNet preset epochs batch  wd   lr  schedule           kind      lambda_0
=============== ====== ===== ==== ==== ================== ========= ===============
imagenet        300    512   1e-4 0.2  cosine             diagonal  7.5 ResNet/ResNeXt,
                                                                    5 resnet101,
                                                                    1 DenseNet
imagenet_120    120    256   1e-4 0.1  x0.1 at 30, 60, 90 diagonal  as ``imagenet``
=============== ====== ===== ==== ==== ================== ========= ===============

ISDA defaults: the ISDA fields ``lambda0`` and ``kind`` are resolved with the preset too:
``0.5`` and ``"full"`` (the CIFAR setting, :data:`DEFAULT_LAMBDA0`, :data:`DEFAULT_KIND`)
unless the preset sets its own (:attr:`Preset.lambda0`, :attr:`Preset.kind`), which a
per-family and then a per-model entry of :attr:`Preset.isda_overrides` can refine (TPAMI
Appendix A: "lambda_0 = 1 for DenseNets and lambda_0 = 7.5 for ResNets and ResNeXts, except
for using lambda_0 = 5 for ResNet-101"; the diagonal covariance "due to GPU memory
limitation"). The NeurIPS appendix gives no lambda_0 for its 120-epoch runs; ``imagenet_120``
uses the TPAMI values. Values given explicitly (``--lambda0``, ``--kind``, or
``isda(lambda0=...)`` in the loss spec) always win.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Optional

from .config import DEFAULT_KIND, DEFAULT_LAMBDA0, ISDA_PRESET_FIELDS, PRESET_FIELDS, TrainConfig
from .criteria import parse_criterion_spec, spec_dirname
from .semi_config import semi_run_name

__all__ = [
    "DEFAULT_KIND",
    "DEFAULT_LAMBDA0",
    "LAMBDA0_GRID_CIFAR",
    "LAMBDA0_GRID_IMAGENET",
    "PRESETS",
    "Preset",
    "DATASET_PRESETS",
    "FAMILY_PRESETS",
    "apply_preset",
    "default_out_dir",
    "get_preset",
    "isda_defaults",
    "list_presets",
    "model_family",
    "preset_name_for_dataset",
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
    #: presets of the official ISDA CIFAR code (``adjust_learning_rate(optimizer, epoch +
    #: 1)``), 0 otherwise (see the module docstring).
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
        return {
            "epochs": self.epochs, "batch_size": self.batch_size, "lr": self.lr,
            "momentum": self.momentum, "nesterov": self.nesterov,
            "weight_decay": self.weight_decay, "lr_schedule": self.lr_schedule,
            "milestones": list(self.milestones), "gamma": self.gamma,
        }

    def describe_schedule(self) -> str:
        if self.lr_schedule == "cosine":
            return "cosine"
        if self.lr_schedule == "poly":
            return "poly (per iteration)"
        return f"x{self.gamma:g} at " + ", ".join(str(m) for m in self.milestones)


_T9 = "TPAMI Table 9 / NeurIPS Table 1"
#: The official CIFAR script's LR timing (module docstring).
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
        # segmentation (Table 7; chosen by torch_isda.train.segmentation_config)
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


#: Families whose preset has another name.
FAMILY_PRESETS = {
    "resnet_imagenet": "imagenet",
    "densenet_imagenet": "imagenet",
    "resnext_imagenet": "imagenet",
}


#: Datasets whose preset is chosen by the dataset rather than by the model family.
DATASET_PRESETS = {"mnist": "mnist", "fashion_mnist": "mnist", "kmnist": "mnist"}


def preset_name_for_dataset(dataset: str) -> Optional[str]:
    """The preset chosen for a dataset regardless of the model (``None``: by family)."""
    return DATASET_PRESETS.get(dataset)


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
    """Fill the ``None`` preset fields of a classification config from the preset
    (``config.preset`` or the model family's), default ``out``, and check dataset, model
    and loss names early (the classification part of
    :func:`~torch_isda.train.resolve.resolve_config`).

    ``lambda0`` and ``kind`` left at ``None`` come from the same preset's ISDA defaults,
    refined per family and per model (:meth:`Preset.isda_defaults`); ``0.5`` / ``"full"``
    when there is no preset. ``lr_offset`` left at ``None`` comes from the same preset
    (:attr:`Preset.lr_offset`) when that is non-zero; ``None`` means 0.

    Explicitly set fields are kept. The returned config has ``preset`` set to the preset
    used (or ``None`` when every preset field was given explicitly).
    """
    if config.task is not None:  # classification is stored as None (older configs match)
        config = dataclasses.replace(config, task=None)
    _check_names(config)
    family = model_family(config.model, config.model_kwargs)
    changes: dict[str, Any] = {}
    missing = [f for f in PRESET_FIELDS if getattr(config, f) is None]
    preset_name = config.preset
    if preset_name is None and missing:
        preset_name = preset_name_for_dataset(config.dataset) or preset_name_for_family(family)
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
        isda_preset = preset_name if preset_name is not None else (
            preset_name_for_dataset(config.dataset) or preset_name_for_family(family))
        defaults = ({"lambda0": DEFAULT_LAMBDA0, "kind": DEFAULT_KIND} if isda_preset is None
                    else get_preset(isda_preset).isda_defaults(config.model, family))
        changes.update({f: defaults[f] for f in missing_isda})
    if config.lr_offset is None:  # the LR timing of the preset (module docstring)
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
