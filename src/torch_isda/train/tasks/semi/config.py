"""Semi-supervised settings of ``isda train --semi METHOD`` (Section 5, Table 6).

This module is light (no data or model imports):
:func:`~torch_isda.train.resolve.resolve_config` calls :func:`semi_problems` for every
config, and the semi-supervised task's ``resolve`` calls :func:`resolve_semi_config`, which
fills the semi-supervised fields left at ``None`` from :data:`DATASET_DEFAULTS`.
:func:`method_kwargs` gives the keyword arguments of the base method (the defaults of its
paper, see :mod:`torch_isda.semi.methods`, adapted to the run length and the dataset,
then ``--semi-kwargs`` / ``--eta2``).

The defaults and their sources (Table 6, Section 6.1, Appendix B) are tabulated in
docs/semi_supervised.md.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional

from ...config import SemiOptions, section_fields

__all__ = [
    "DATASET_DEFAULTS",
    "REFERENCE_EPOCHS",
    "SEMI_METHODS",
    "SEMI_ONLY_FIELDS",
    "canonical_semi",
    "dataset_semi_defaults",
    "default_translate",
    "labels_suffix",
    "method_kwargs",
    "parse_semi_loss",
    "resolve_semi_config",
    "semi_problems",
    "semi_run_name",
    "semi_summary",
]

#: Values of ``--semi``: ``none`` (supervised training) or a base method of Table 6.
SEMI_METHODS = ("none", "pi", "temporal-ensembling", "mean-teacher", "vat")

#: Length (epochs) of the Appendix-B schedule the methods' ramp-ups are quoted for.
REFERENCE_EPOCHS = 400

#: Per-dataset defaults of the semi-supervised fields, plus method-specific overrides of
#: the papers' defaults (``"methods"``).
DATASET_DEFAULTS: dict[str, dict[str, Any]] = {
    "cifar10": {"labels": 4000, "zca": True, "flip": True, "methods": {"vat": {"epsilon": 8.0}}},
    "cifar100": {"labels": 10000, "zca": True, "flip": True, "methods": {"vat": {"epsilon": 8.0}}},
    "svhn": {"labels": 500, "zca": False, "flip": False, "methods": {"vat": {"epsilon": 3.5}}},
    # not in the paper: batches of 32 labeled + 128 unlabeled images (the VAT reference's
    # sizes; 10 steps per epoch, 300 steps in the 30-epoch small_cnn preset); 8x8 digits
    # scaled to unit variance have a centred norm of ~8, so epsilon keeps VAT's SVHN ratio
    # ||r_adv|| / ||x|| ~ 3.5 / 11; the mean teacher's EMA uses the ramp-up decay 0.99
    # throughout (0.999 would average over more steps than the run has).
    "digits": {"labels": 100, "zca": False, "flip": False, "unlabeled_batch_size": 128,
               "methods": {"vat": {"epsilon": 2.5},
                           "mean-teacher": {"alpha": 0.99, "alpha_rampup": 0.99}}},
}

#: Fields that only mean something with ``--semi`` (an error if set without it): the
#: semi-supervised section of the configuration but ``semi`` itself.
SEMI_ONLY_FIELDS = tuple(name for name in section_fields(SemiOptions) if name != "semi")

_FIELD_DEFAULTS = {"val_fraction": 0.0, "eta1": 1.0, "semi_kwargs": {}}


def canonical_semi(name: Any) -> str:
    """``"none"`` or the canonical method name of ``name`` (aliases such as ``mt``)."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"semi must be 'none' or one of {', '.join(SEMI_METHODS[1:])}; "
                         f"got {name!r}")
    if name.strip().lower() == "none":
        return "none"
    from ....semi.methods import canonical_method_name

    try:
        return canonical_method_name(name)
    except ValueError:
        raise ValueError(
            f"unknown semi-supervised method {name!r} for --semi; choose none, "
            f"{', '.join(SEMI_METHODS[1:])}") from None


def dataset_semi_defaults(dataset: str) -> dict[str, Any]:
    """The :data:`DATASET_DEFAULTS` entry of ``dataset`` (no labels, no ZCA, no flip if unknown)."""
    unknown = {"labels": None, "zca": False, "flip": False, "methods": {}}
    return DATASET_DEFAULTS.get(dataset, unknown)


def semi_problems(config: Any) -> list[str]:
    """Range and consistency problems of the semi-supervised fields (messages for
    :meth:`TrainConfig.validate`)."""
    problems: list[str] = []
    semi = getattr(config, "semi", "none")
    try:
        semi = canonical_semi(semi)
    except ValueError as err:
        return [str(err)]
    if semi == "none":
        given = []
        for name in SEMI_ONLY_FIELDS:
            value = getattr(config, name)
            if value is not None and value != _FIELD_DEFAULTS.get(name):
                given.append("--" + name.replace("_", "-"))
        if given:
            problems.append(f"{', '.join(given)} only apply to semi-supervised training: add "
                            f"--semi {'|'.join(SEMI_METHODS[1:])}")
        return problems
    if config.labels is not None and int(config.labels) < 1:
        problems.append(f"labels must be a positive number of labeled images; got {config.labels}")
    if not 0.0 <= float(config.val_fraction) < 1.0:
        problems.append(f"val_fraction must lie in [0, 1); got {config.val_fraction}")
    if not float(config.eta1) >= 0.0:
        problems.append(f"eta1 must be non-negative; got {config.eta1}")
    if config.eta2 is not None and not float(config.eta2) >= 0.0:
        problems.append(f"eta2 must be non-negative; got {config.eta2}")
    for name in ("labeled_batch_size", "unlabeled_batch_size"):
        value = getattr(config, name)
        if value is not None and int(value) < 1:
            problems.append(f"{name} must be a positive integer; got {value}")
    if config.semi_translate is not None and int(config.semi_translate) < 0:
        problems.append(f"semi_translate must be >= 0 pixels; got {config.semi_translate}")
    if not isinstance(config.semi_kwargs, dict):
        problems.append(f"semi_kwargs must be a dict; got {config.semi_kwargs!r}")
    return problems


def parse_semi_loss(spec: str) -> tuple[str, dict[str, Any]]:
    """``(name, kwargs)`` of ``--loss`` with ``--semi``: ``isda`` (Eq. 19) or ``ce`` (the
    base method alone), with arguments, without modifiers."""
    from ...criteria import parse_single_loss

    return parse_single_loss(spec, "--semi", " (isda: Eq. 19, ISDA on the labeled batch + eta1 "
                                             "x the consistency bound of Eq. 15 + eta2 x the base "
                                             "regularizer; ce: the base method alone)")


def semi_run_name(config: Any) -> str:
    """Directory-name part of a semi-supervised run: ``<method>-<loss>-<labels>labels``."""
    from ...criteria import spec_dirname

    return f"{canonical_semi(config.semi)}-{spec_dirname(config.loss)}{labels_suffix(config)}"


def labels_suffix(config: Any) -> str:
    """``"-4000labels"``: ``config.labels`` or the dataset's default (``""`` if neither)."""
    labels = config.labels
    if labels is None:
        labels = dataset_semi_defaults(config.dataset).get("labels")
    return "" if labels is None else f"-{int(labels)}labels"


def resolve_semi_config(config: Any) -> Any:
    """Fill the semi-supervised fields left at ``None`` (:data:`DATASET_DEFAULTS`) and
    canonicalize ``semi``; checks the loss spec. Returns a new config."""
    semi = canonical_semi(config.semi)
    if semi == "none":
        return config
    parse_semi_loss(config.loss)  # the --loss spec: ce or isda
    if config.augment is not None:
        raise ValueError(
            "--augment does not apply with --semi: the semi-supervised augmentation is the "
            "random translation (--semi-translate) plus, on CIFAR, a horizontal flip")
    if getattr(config, "task", None) not in (None, "classification"):
        raise ValueError(f"--semi is for image classification, not --task {config.task}")
    if config.dataset == "imagefolder":
        raise ValueError("--semi needs an in-memory dataset (digits, cifar10, cifar100, svhn, "
                         "...), not imagefolder")
    if config.compile:
        raise ValueError("--compile is not supported with --semi")
    if semi == "vat" and config.amp != "none":
        raise ValueError("--semi vat needs float32 (its finite-difference step xi is below "
                         "half-precision resolution): use --amp none")
    defaults = dataset_semi_defaults(config.dataset)
    changes: dict[str, Any] = {"semi": semi}
    if config.labels is None:
        if defaults.get("labels") is None:
            raise ValueError(f"no default number of labels for dataset {config.dataset!r}: pass "
                             f"--labels N (a multiple of the number of classes)")
        changes["labels"] = int(defaults["labels"])
    if config.zca is None:
        changes["zca"] = bool(defaults.get("zca", False))
    ubs = config.unlabeled_batch_size
    if ubs is None:
        ubs = int(defaults.get("unlabeled_batch_size") or config.batch_size)
        changes["unlabeled_batch_size"] = ubs
    if config.labeled_batch_size is None:
        changes["labeled_batch_size"] = max(1, int(ubs) // 4)
    return dataclasses.replace(config, **changes)


def default_translate(image_size: tuple[int, ...]) -> int:
    """Default maximum translation: 2 pixels (Section 6.1), 1 below 16 pixels (digits)."""
    return 2 if min(image_size[-2:]) >= 16 else 1


def method_kwargs(config: Any, steps_per_epoch: int) -> dict[str, Any]:
    """Keyword arguments of :func:`torch_isda.semi.create_method` for this run.

    Order of precedence: the method's paper defaults (class defaults) < the dataset's
    entry in :data:`DATASET_DEFAULTS` < ramp-ups scaled to the run length < ``--eta2``
    (sets ``max_weight = eta2`` without the M/N scaling) < ``--semi-kwargs``.
    """
    import inspect

    from ....semi.methods import METHODS

    semi = canonical_semi(config.semi)
    cls = METHODS[semi]
    params = inspect.signature(cls.__init__).parameters
    dataset_methods = dataset_semi_defaults(config.dataset).get("methods", {})
    kwargs: dict[str, Any] = dict(dataset_methods.get(semi, {}))
    user = dict(config.semi_kwargs or {})
    accepted = [p for p in params if p not in ("self", "model", "num_samples", "num_classes",
                                                "generator")]
    unknown = sorted(set(user) - set(accepted))
    if unknown:
        raise ValueError(f"--semi-kwargs: unknown option(s) {', '.join(unknown)} for {semi}; "
                         f"it accepts: {', '.join(accepted)}")
    default_rampup = float(params["rampup_epochs"].default)
    scale = min(1.0, float(config.epochs) / REFERENCE_EPOCHS)
    rampup = float(user.get("rampup_epochs", default_rampup * scale))
    if default_rampup > 0 or "rampup_epochs" in user:
        kwargs["rampup_epochs"] = rampup
    if semi == "mean-teacher":
        # the EMA decay switches from alpha_rampup to alpha at the end of the ramp-up
        kwargs["rampup_steps"] = int(math.ceil(rampup * steps_per_epoch))
    if config.eta2 is not None:
        if "max_weight" in user:
            raise ValueError("give either --eta2 or max_weight in --semi-kwargs, not both")
        kwargs["max_weight"] = float(config.eta2)
        kwargs["scale_by_labeled_fraction"] = False
    kwargs.update(user)
    return kwargs


def semi_summary(config: Any) -> Optional[str]:
    """One line describing the semi-supervised setting (``None`` when supervised)."""
    if canonical_semi(config.semi) == "none":
        return None
    use_isda = parse_semi_loss(config.loss)[0] == "isda"
    mode = f"+ ISDA (Eq. 19, eta1={config.eta1:g})" if use_isda else "alone (no ISDA)"
    return (f"semi-supervised: {config.semi} {mode}, {config.labels} labels, batches "
            f"{config.labeled_batch_size} labeled + {config.unlabeled_batch_size} unlabeled, "
            f"zca {'on' if config.zca else 'off'}")
