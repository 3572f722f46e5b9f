"""The training configuration: :class:`TrainConfig` and its command-line form.

Fields left at ``None`` (:data:`PRESET_FIELDS`, :data:`ISDA_PRESET_FIELDS`, ...) are filled
by :func:`~torch_isda.train.resolve.resolve_config` from the preset
(:mod:`torch_isda.train.presets`); anything set explicitly wins.

Every field is also a command-line option of ``isda train`` / ``isda compare``
(``batch_size`` -> ``--batch-size``), generated from the dataclass by
:func:`add_config_arguments`, so a new field is automatically overridable.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import typing
from pathlib import Path
from typing import Any, Optional

from ..functional import KINDS  # the covariance kinds of the core

__all__ = [
    "AMP_MODES",
    "DEFAULT_KIND",
    "DEFAULT_LAMBDA0",
    "ISDA_PRESET_FIELDS",
    "LR_SCHEDULES",
    "PRESET_FIELDS",
    "SEG_LOSS_AT",
    "TASKS",
    "TrainConfig",
    "add_config_arguments",
    "config_overrides_from_args",
]

AMP_MODES = ("none", "bf16", "fp16")
#: The CIFAR ISDA defaults (lambda_0 and the full class-conditional covariance), used when
#: neither the preset nor the model family has its own.
DEFAULT_LAMBDA0 = 0.5
DEFAULT_KIND = "full"
LR_SCHEDULES = ("step", "cosine", "poly")
#: ``None`` (auto: segmentation for segmentation datasets) or one of these.
TASKS = ("classification", "segmentation")
#: Where the per-pixel segmentation loss is computed (see docs/segmentation.md).
SEG_LOSS_AT = ("label", "feature")


def _field(default: Any = None, help: str = "", *, factory: Any = None, choices: Any = None,
           metavar: Optional[str] = None, cli: bool = True) -> Any:
    metadata = {"help": help, "choices": choices, "metavar": metavar, "cli": cli}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


@dataclasses.dataclass
class TrainConfig:
    """Everything that defines a training run (JSON-serializable).

    ``None`` in a preset field means "take it from the model family's preset".
    """

    # data
    dataset: str = _field("digits", "dataset name (see torch_isda.data.list_datasets())")
    data_dir: str = _field("data", "directory holding (or receiving) the dataset files")
    download: bool = _field(False, "download missing dataset files (MD5-verified)")
    dataset_kwargs: dict = _field(
        help="extra dataset options, JSON or key=value[,key=value] (e.g. label_type=coarse)",
        factory=dict, metavar="KW")
    augment: Optional[str] = _field(
        None, "training augmentation for in-memory datasets: none, crop or crop_flip, "
        "optionally with '+'-joined extras known to torch_isda.data.build_augment (e.g. "
        "crop_flip+cutout, crop_flip+autoaugment+cutout), each term optionally with options "
        "(e.g. 'crop(padding=1)+cutout(size=4)' for 8x8 digits) (default: the dataset's default)")
    # model
    model: str = _field("digits_cnn", "model name (see torch_isda.models.list_models())")
    model_kwargs: dict = _field(
        help="extra model options, JSON or key=value[,key=value] (e.g. dropout=0.3)",
        factory=dict, metavar="KW")
    # loss
    loss: str = _field(
        "isda", "training criterion spec: a primary loss plus '+'-joined modifiers, each "
        "optionally with arguments, e.g. 'isda', 'ce', 'isda+dropout(p=0.3)'")
    lambda0: Optional[float] = _field(
        None, "ISDA strength lambda_0 (paper grid: 0.1, 0.25, 0.5, 0.75, 1 on CIFAR) [preset; "
        "0.5 unless the preset/model says otherwise, e.g. 7.5 for resnet50 on ImageNet]")
    kind: Optional[str] = _field(
        None, "ISDA covariance kind [preset; 'full' unless the preset says otherwise, "
        "'diagonal' for the ImageNet models]", choices=KINDS)
    constant_lambda: bool = _field(False, "use lambda = lambda_0 from the first step "
                                          "(default: lambda = lambda_0 * t / T)")
    # semi-supervised (Section 5, Eq. 19; see torch_isda.semi.config, docs/semi_supervised.md)
    semi: str = _field(
        "none", "semi-supervised base method: none (supervised), pi, temporal-ensembling, "
        "mean-teacher or vat; with it --loss isda is Eq. (19) and --loss ce the method alone")
    labels: Optional[int] = _field(
        None, "[--semi] labeled training images, balanced over classes [dataset default: "
        "100 digits, 4000 cifar10, 10000 cifar100, 1000 svhn]")
    split_seed: Optional[int] = _field(
        None, "[--semi] seed of the labeled split (default: --seed)")
    val_fraction: float = _field(
        0.0, "[--semi] fraction of the labels held out as a validation set (0.25 for the "
        "paper's hyper-parameter search, 0 for final runs)")
    eta1: float = _field(1.0, "[--semi] weight of the ISDA consistency bound, Eq. (15) "
                              "(paper grid: 0.5, 1, 2)")
    eta2: Optional[float] = _field(
        None, "[--semi] peak weight of the base method's regularizer (default: the method's "
        "own, ramped up)")
    labeled_batch_size: Optional[int] = _field(
        None, "[--semi] labeled samples per step (default: unlabeled batch size / 4)")
    unlabeled_batch_size: Optional[int] = _field(
        None, "[--semi] unlabeled samples per step (default: --batch-size; 128 on digits)")
    zca: Optional[bool] = _field(None, "[--semi] ZCA whitening (default: on for CIFAR)")
    semi_translate: Optional[int] = _field(
        None, "[--semi] maximum random translation in pixels (default: 2; 1 below 16 px)")
    semi_kwargs: dict = _field(
        help="[--semi] base-method options, JSON or key=value (e.g. epsilon=6,rampup_epochs=40)",
        factory=dict, metavar="KW")
    # optimization (None: from the preset of the model family)
    preset: Optional[str] = _field(
        None, "training preset (default: chosen from the model family, see presets)")
    epochs: Optional[int] = _field(None, "number of epochs [preset]")
    final_epochs: Optional[int] = _field(
        None, "the reported final error is the mean test error of the last K epochs "
        "(default: the paper's 10, but at most a tenth of the run and at least 1)", metavar="K")
    batch_size: Optional[int] = _field(None, "training batch size [preset]")
    lr: Optional[float] = _field(None, "initial learning rate [preset]")
    momentum: Optional[float] = _field(None, "SGD momentum [preset]")
    nesterov: Optional[bool] = _field(None, "Nesterov momentum [preset]")
    weight_decay: Optional[float] = _field(None, "L2 weight decay [preset]")
    lr_schedule: Optional[str] = _field(None, "learning-rate schedule [preset]",
                                        choices=LR_SCHEDULES)
    milestones: Optional[list] = _field(
        None, "epochs at which the step schedule multiplies the lr by gamma, e.g. 80,120 "
        "[preset]", metavar="E1,E2,...")
    gamma: Optional[float] = _field(None, "lr factor at each milestone [preset]")
    lr_offset: Optional[int] = _field(
        None, "added to the 0-based epoch when the step/cosine schedule is evaluated: 1 = the "
        "official ISDA CIFAR code (the lr drops at the start of 1-based epoch m, the cosine "
        "ends at 0), 0 = PyTorch's convention and the official ImageNet code [preset; unset "
        "means 0]", metavar="{0,1}")
    poly_power: float = _field(0.9, "power of the poly schedule: lr * (1 - t / T) ** power")
    # segmentation (None: from the segmentation preset; see docs/segmentation.md)
    task: Optional[str] = _field(
        None, "classification or segmentation (default: segmentation for segmentation "
        "datasets such as synthetic_segmentation and cityscapes)", choices=TASKS)
    crop_size: Optional[int] = _field(None, "segmentation training crop (cityscapes) [preset: 769]")
    eval_scales: Optional[str] = _field(
        None, "segmentation multi-scale evaluation scales [preset: 0.75,1,1.25,1.5 "
        "(Table 7); 0.75,1,1.25 on synthetic_segmentation]", metavar="S1,S2,...")
    seg_loss_at: Optional[str] = _field(
        None, "segmentation loss resolution: label (official code: ISDA-augmented logits "
        "upsampled to the labels) or feature (Eq. 7 per feature pixel, labels resized) "
        "[preset: label]", choices=SEG_LOSS_AT)
    aux_weight: Optional[float] = _field(
        None, "weight of the auxiliary (deep supervision) head's loss [preset: 0.4]")
    # run
    seed: int = _field(0, "random seed (model init, data order, augmentation)")
    device: str = _field("auto", "'auto' (cuda if available, else cpu), 'cpu', 'cuda', 'cuda:1', ...")
    amp: str = _field("none", "autocast mixed precision", choices=AMP_MODES)
    channels_last: bool = _field(False, "channels-last memory format for model and inputs")
    compile: bool = _field(False, "torch.compile the feature extractor")
    deterministic: bool = _field(
        True, "deterministic algorithms (torch.use_deterministic_algorithms, warn_only) and "
        "no cuDNN autotuning")
    eval_batch_size: int = _field(512, "evaluation batch size")
    workers: int = _field(4, "DataLoader workers (imagefolder only)")
    threads: Optional[int] = _field(
        None, "CPU threads for torch ops (torch.set_num_threads; default: torch's choice)")
    out: Optional[str] = _field(
        None, "run directory (default: runs/<dataset>-<model>-<loss>-seed<seed>)")
    # multi-process (torchrun / isda train --nproc; see torch_isda.train.distributed)
    isda_sync: str = _field(
        "on", "[multi-process] on: all-gather every global batch so that all ranks share the "
        "ISDA statistics; off: per-rank statistics (the official code's behaviour)",
        choices=("on", "off"))
    sync_bn: bool = _field(False, "[multi-process] BatchNorm with the global batch's statistics "
                                  "(SyncBatchNorm)")
    dist_backend: str = _field("auto", "[multi-process] auto (nccl on CUDA, gloo on CPU), nccl "
                                       "or gloo", choices=("auto", "nccl", "gloo"))
    dist_timeout: Optional[float] = _field(
        None, "[multi-process] collective timeout in seconds (default: 300 with gloo, 1800 "
        "with nccl)")

    # ------------------------------------------------------------------ serialization

    def to_dict(self) -> dict[str, Any]:
        """A JSON-compatible dict of all fields."""
        d = dataclasses.asdict(self)
        if d["milestones"] is not None:
            d["milestones"] = [int(m) for m in d["milestones"]]
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError``."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(
                f"unknown TrainConfig field(s): {', '.join(unknown)}; valid fields: "
                f"{', '.join(sorted(names))}")
        values = dict(data)
        if values.get("milestones") is not None:
            values["milestones"] = [int(m) for m in values["milestones"]]
        return cls(**values)

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), **{"indent": 2, **kwargs})

    @classmethod
    def from_json(cls, text: str) -> TrainConfig:
        return cls.from_dict(json.loads(text))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> TrainConfig:
        """Read a config written by :meth:`to_json` or a run directory's ``config.json``
        (whose config sits under the ``"config"`` key)."""
        data = json.loads(Path(path).read_text())
        if isinstance(data, dict) and isinstance(data.get("config"), dict):
            data = data["config"]
        return cls.from_dict(data)

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------ validation

    def validate(self) -> None:
        """Check choices and ranges (``ValueError`` with a clear message)."""
        problems = []
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            value = getattr(self, f.name)
            if choices and value is not None and value not in choices:
                problems.append(f"{f.name} must be one of {', '.join(choices)}; got {value!r}")
        for name in ("epochs", "batch_size", "eval_batch_size", "crop_size", "final_epochs"):
            value = getattr(self, name)
            if value is not None and int(value) < 1:
                problems.append(f"{name} must be a positive integer; got {value}")
        for name in ("lr", "weight_decay", "momentum", "gamma", "lambda0", "poly_power",
                     "aux_weight"):
            value = getattr(self, name)
            if value is not None and not float(value) >= 0:
                problems.append(f"{name} must be non-negative; got {value}")
        if (self.final_epochs is not None and self.epochs is not None
                and 1 <= int(self.epochs) < int(self.final_epochs)):
            problems.append(f"final_epochs ({self.final_epochs}) must not exceed epochs "
                            f"({self.epochs})")
        if self.threads is not None and self.threads < 1:
            problems.append(f"threads must be a positive integer; got {self.threads}")
        if self.workers < 0:
            problems.append(f"workers must be >= 0; got {self.workers}")
        if self.lr_offset is not None and int(self.lr_offset) not in (0, 1):
            problems.append(f"lr_offset must be 0 or 1; got {self.lr_offset}")
        if self.milestones is not None and any(int(m) < 0 for m in self.milestones):
            problems.append(f"milestones must be non-negative epochs; got {self.milestones}")
        if not isinstance(self.loss, str) or not self.loss.strip():
            problems.append("loss must be a non-empty criterion spec such as 'isda' or 'ce'")
        if problems:
            raise ValueError("invalid training configuration: " + "; ".join(problems))


#: Fields filled from the family preset when left at ``None``.
PRESET_FIELDS = ("epochs", "batch_size", "lr", "momentum", "nesterov", "weight_decay",
                 "lr_schedule", "milestones", "gamma")
#: ISDA fields filled (when ``None``) from the preset's per-family / per-model defaults.
ISDA_PRESET_FIELDS = ("lambda0", "kind")


# ---------------------------------------------------------------------------- command line


def _parse_int_list(text: str) -> list:
    text = text.strip()
    if text in ("", "none", "[]"):
        return []
    try:
        return [int(v) for v in text.replace(" ", "").strip("[]").split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers such as 80,120; got {text!r}") from None


def _parse_scalar(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_kwargs(text: str) -> dict:
    """``'{"a": 1}'`` (JSON) or ``'a=1,b=x'`` (values parsed as JSON when possible)."""
    text = text.strip()
    if not text:
        return {}
    if text.startswith("{"):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as err:
            raise argparse.ArgumentTypeError(f"invalid JSON {text!r}: {err}") from None
        if not isinstance(value, dict):
            raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
        return value
    out = {}
    for item in text.split(","):
        if not item.strip():
            continue
        if "=" not in item:
            raise argparse.ArgumentTypeError(
                f"expected key=value pairs separated by commas, got {item!r} in {text!r}")
        key, value = item.split("=", 1)
        out[key.strip()] = _parse_scalar(value.strip())
    return out


def _base_type(hint: Any) -> Any:
    if typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0] if len(args) == 1 else str
    return hint


def add_config_arguments(parser: argparse.ArgumentParser, *, exclude: tuple[str, ...] = (),
                         title: str = "training configuration",
                         extra_help: Optional[dict[str, str]] = None) -> None:
    """Add one ``--option`` per :class:`TrainConfig` field to ``parser``.

    Defaults are ``argparse.SUPPRESS``: only options given on the command line appear in
    the namespace, so :func:`config_overrides_from_args` can tell "given" from "default"
    (presets and resumed configs are only overridden by what the user typed). Booleans
    get ``--flag`` / ``--no-flag``; lists are comma-separated; dicts are JSON or
    ``key=value,...``. ``extra_help`` appends text to the help of some fields (e.g. the
    registered criteria to ``--loss``; this module imports nothing from the rest of
    :mod:`torch_isda.train`).
    """
    group = parser.add_argument_group(title)
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        if f.name in exclude or not f.metadata.get("cli", True):
            continue
        flag = "--" + f.name.replace("_", "-")
        base = _base_type(hints[f.name])
        kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS}
        help_text = f.metadata.get("help", "") + (extra_help or {}).get(f.name, "")
        default = f.default if f.default is not dataclasses.MISSING else None
        if isinstance(default, bool):
            help_text += f" (default: {'on' if default else 'off'})"
        elif default is not None:
            help_text += f" (default: {default})"
        kwargs["help"] = help_text
        if base is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
            continue
        if f.metadata.get("choices"):
            kwargs["choices"] = f.metadata["choices"]
        if f.metadata.get("metavar"):
            kwargs["metavar"] = f.metadata["metavar"]
        if base is int:
            kwargs["type"] = int
        elif base is float:
            kwargs["type"] = float
        elif base in (list,) or typing.get_origin(base) is list:
            kwargs["type"] = _parse_int_list
        elif base in (dict,) or typing.get_origin(base) is dict:
            kwargs["type"] = parse_kwargs
        else:
            kwargs["type"] = str
        group.add_argument(flag, **kwargs)


def config_overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The :class:`TrainConfig` fields given on the command line."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    return {k: v for k, v in vars(args).items() if k in names}
