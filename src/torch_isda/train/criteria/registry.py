"""Training criteria: a timm-style registry and ``+`` composition.

A *spec* names one **primary** loss and any number of **modifiers** joined by ``+``, each
optionally with keyword arguments: ``create_criterion("isda(lambda0=0.75)+dropout(p=0.3)",
A, C, config)``. The interface, the composition rules and how to register a criterion are
described in docs/training.md ("Criteria").

The built-in comparison methods register themselves from the modules beside this one
(imported by the package, :mod:`torch_isda.train.criteria`); plugin modules named in
:data:`CRITERION_MODULES` are imported on first use of the registry (listing, lookup,
:func:`create_criterion`). This module imports none of them (they import it to register).
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import importlib
import inspect
import re
from collections.abc import Callable
from typing import Any, ClassVar, Optional, Union

import torch.nn.functional as F
from torch import Tensor, nn

from ...loss import ISDALoss
from ...utils.spec_grammar import key_value_items, match_term, split_top_level
from ..config import DEFAULT_KIND, DEFAULT_LAMBDA0, TrainConfig

__all__ = [
    "CRITERION_MODULES",
    "CompositeCriterion",
    "CriterionModifier",
    "CrossEntropyCriterion",
    "ISDACriterion",
    "TrainingCriterion",
    "check_classifier",
    "create_criterion",
    "criterion_info",
    "list_criteria",
    "parse_criterion_spec",
    "parse_single_loss",
    "register_criterion",
    "spec_dirname",
    "split_top_level",
    "unregister_criterion",
]

#: Extra (plugin) modules imported (once) before the registry is first used.
CRITERION_MODULES: list[str] = []


class TrainingCriterion(nn.Module):
    """Base class of training criteria (docs/training.md, "Criteria"): subclasses implement
    :meth:`forward`; every hook has an identity/no-op default."""

    #: ``True`` for a loss that produces the classification loss (exactly one per spec),
    #: ``False`` for a modifier (hooks and/or an additive term).
    primary: ClassVar[bool] = True

    #: ``True`` (the default, the safe side for plugins) when the criterion reads the
    #: classifier's ``weight``/``bias`` (the ISDA family, MetaSAug, L-Softmax, ...): the
    #: harness then refuses a model whose classifier is not an ``nn.Linear`` (a cosine
    #: classifier, ``--model-kwargs classifier=cosine``). Losses of the logits alone set it
    #: to ``False``.
    needs_linear_classifier: ClassVar[bool] = True

    #: Why the criterion's step cannot be one ``torch.compile`` graph (``isda train
    #: --compile`` then refuses it in one line, before training); ``None``: it can.
    whole_step_problem: ClassVar[Optional[str]] = None

    @classmethod
    def from_config(cls, num_features: int, num_classes: int, config: Any, **kwargs: Any
                    ) -> TrainingCriterion:
        """Build the criterion for a run: passes ``num_features``/``num_classes`` when
        ``__init__`` takes them, plus the spec's keyword arguments."""
        params = inspect.signature(cls.__init__).parameters
        base = {}
        if "num_features" in params:
            base["num_features"] = num_features
        if "num_classes" in params:
            base["num_classes"] = num_classes
        return cls(**base, **kwargs)

    def forward(self, features: Tensor, logits: Tensor, target: Tensor, model: nn.Module
                ) -> Optional[Tensor]:
        raise NotImplementedError

    def set_progress(self, t_over_T: float) -> None:
        """Training progress ``t / T`` in ``[0, 1)``, set before every iteration."""

    def transform_batch(self, images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """Applied to each training mini-batch (on the device, normalised) before the
        forward pass (training only); the training loss and error are those of its result."""
        return images, labels

    def transform_features(self, features: Tensor) -> Tensor:
        """Applied to the deep features before the classifier (training only)."""
        return features

    def transform_target(self, target: Tensor) -> Tensor:
        """Applied to the training targets passed to :meth:`forward` (training only)."""
        return target

    def parameter_groups(self, config: Any) -> list[dict[str, Any]]:
        """Extra optimizer parameter groups (others join the model's group)."""
        return []

    def log_values(self) -> dict[str, float]:
        """Scalars recorded in the per-epoch metrics (e.g. ``{"lambda": 0.25}``)."""
        return {}


class CriterionModifier(TrainingCriterion):
    """Base class of modifiers: hooks and/or an additive loss term (``None``: none)."""

    primary: ClassVar[bool] = False
    needs_linear_classifier: ClassVar[bool] = False  # the built-in ones read no classifier

    def forward(self, features: Tensor, logits: Tensor, target: Tensor, model: nn.Module
                ) -> Optional[Tensor]:
        return None


class CompositeCriterion(TrainingCriterion):
    """One primary criterion plus modifiers; ``components`` lists them in spec order, the
    order in which their hooks chain (docs/training.md, "Criteria")."""

    def __init__(self, main: TrainingCriterion, modifiers: list[TrainingCriterion],
                 order: Optional[list[int]] = None) -> None:
        super().__init__()
        self.main = main
        self.modifiers = nn.ModuleList(modifiers)
        parts = [main, *modifiers]
        # spec order of the components (the primary need not come first in the spec)
        self.components = [parts[i] for i in (range(len(parts)) if order is None else order)]

    @property  # type: ignore[override]
    def needs_linear_classifier(self) -> bool:  # type: ignore[override]
        return any(c.needs_linear_classifier for c in self.components)

    def forward(self, features: Tensor, logits: Tensor, target: Tensor, model: nn.Module
                ) -> Tensor:
        loss = self.main(features, logits, target, model)
        for modifier in self.modifiers:
            term = modifier(features, logits, target, model)
            if term is not None:
                loss = loss + term
        return loss

    def set_progress(self, t_over_T: float) -> None:
        for c in self.components:
            c.set_progress(t_over_T)

    def transform_batch(self, images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        for c in self.components:
            images, labels = c.transform_batch(images, labels)
        return images, labels

    def transform_features(self, features: Tensor) -> Tensor:
        for c in self.components:
            features = c.transform_features(features)
        return features

    def transform_target(self, target: Tensor) -> Tensor:
        for c in self.components:
            target = c.transform_target(target)
        return target

    def parameter_groups(self, config: Any) -> list[dict[str, Any]]:
        groups: list[dict[str, Any]] = []
        for c in self.components:
            groups.extend(c.parameter_groups(config))
        return groups

    def log_values(self) -> dict[str, float]:
        values: dict[str, float] = {}
        for c in self.components:
            values.update(c.log_values())
        return values


# ---------------------------------------------------------------------------- registry


@dataclasses.dataclass(frozen=True)
class CriterionEntry:
    name: str
    factory: Callable[..., TrainingCriterion]
    primary: bool
    target: Any  # the registered class or function
    doc: str


_REGISTRY: dict[str, CriterionEntry] = {}
_plugins_loaded = False


def _qualname(obj: Any) -> tuple[str, str]:
    return getattr(obj, "__module__", ""), getattr(obj, "__qualname__", repr(obj))


def register_criterion(name: Union[str, Callable, None] = None, *, primary: Optional[bool] = None
                       ) -> Any:
    """Register a criterion class or factory under ``name`` (docs/training.md, "Criteria").

    Bare ``@register_criterion`` uses the lower-cased function/class name; names must match
    ``[a-z][a-z0-9_]*``. Registering another object under a taken name raises
    ``ValueError``; re-registering the same one (module reload) replaces it.
    """
    if callable(name) and not isinstance(name, str):
        return register_criterion(None, primary=primary)(name)

    def decorator(obj: Any) -> Any:
        key = name if name is not None else obj.__name__.lower()
        if not isinstance(key, str) or not re.fullmatch(r"[a-z][a-z0-9_]*", key):
            raise ValueError(f"criterion names must match [a-z][a-z0-9_]*; got {key!r}")
        if isinstance(obj, type):
            if not issubclass(obj, TrainingCriterion):
                raise TypeError(f"{obj.__qualname__} must subclass TrainingCriterion")
            role = obj.primary if primary is None else bool(primary)
            if role != obj.primary:
                raise ValueError(f"{obj.__qualname__}.primary is {obj.primary} but primary={primary}")
            factory = obj.from_config
        elif callable(obj):
            role = True if primary is None else bool(primary)
            factory = obj
        else:
            raise TypeError(f"cannot register {obj!r} as a criterion")
        existing = _REGISTRY.get(key)
        if existing is not None and _qualname(existing.target) != _qualname(obj):
            mod, qn = _qualname(existing.target)
            raise ValueError(f"criterion {key!r} is already registered by {mod}.{qn}")
        doc = (inspect.getdoc(obj) or "").strip().split("\n")[0]
        _REGISTRY[key] = CriterionEntry(key, factory, role, obj, doc)
        return obj

    return decorator


def unregister_criterion(name: str) -> None:
    """Remove ``name`` from the registry (mainly for tests)."""
    _REGISTRY.pop(name, None)


def _load_plugins() -> None:
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for module in CRITERION_MODULES:
        importlib.import_module(module)


def list_criteria(kind: Optional[str] = None) -> list[str]:
    """Sorted registered names; ``kind`` ``"primary"`` or ``"modifier"`` filters."""
    if kind not in (None, "primary", "modifier"):
        raise ValueError(f"kind must be 'primary', 'modifier' or None; got {kind!r}")
    _load_plugins()
    return [n for n in sorted(_REGISTRY) if kind is None or _REGISTRY[n].primary == (kind == "primary")]


def _available() -> str:
    primary = ", ".join(list_criteria("primary")) or "-"
    modifiers = ", ".join(list_criteria("modifier")) or "-"
    return f"Available criteria: primary losses: {primary}; modifiers: {modifiers}."


def criterion_info(name: str) -> CriterionEntry:
    """The registry entry of ``name`` (``ValueError`` listing the criteria if unknown)."""
    _load_plugins()
    if name in _REGISTRY:
        return _REGISTRY[name]
    message = f"Unknown criterion {name!r}."
    close = difflib.get_close_matches(str(name).lower(), list(_REGISTRY), n=1)
    if close:
        message += f" Did you mean {close[0]!r}?"
    raise ValueError(f"{message} {_available()}")


# ---------------------------------------------------------------------------- specs


def _parse_value(text: str) -> Any:
    text = text.strip()
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse_criterion_spec(spec: str, *, check_registered: bool = False
                         ) -> list[tuple[str, dict[str, Any]]]:
    """``"isda(lambda0=0.75)+dropout"`` -> ``[("isda", {"lambda0": 0.75}), ("dropout", {})]``.

    With ``check_registered``, also check that every name is registered and that there is
    exactly one primary loss (``ValueError`` with the available criteria otherwise).
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"empty criterion spec {spec!r}. {_available()}")
    terms: list[tuple[str, dict[str, Any]]] = []
    for raw in split_top_level(spec, "+"):
        term = match_term(raw)
        if term is None:
            raise ValueError(
                f"cannot parse {raw.strip()!r} in criterion spec {spec!r}; expected "
                f"'name' or 'name(key=value, ...)' terms joined by '+'")
        items = key_value_items(term[1] or "", spec, "criterion arguments")
        terms.append((term[0].lower(), {key: _parse_value(value) for key, value in items}))
    if check_registered:
        entries = [criterion_info(name) for name, _ in terms]
        names = [name for name, _ in terms]
        if len(set(names)) != len(names):
            raise ValueError(f"criterion spec {spec!r} names a criterion twice")
        primaries = [e.name for e in entries if e.primary]
        if len(primaries) != 1:
            what = "no primary loss" if not primaries else (
                f"{len(primaries)} primary losses ({', '.join(primaries)})")
            raise ValueError(
                f"criterion spec {spec!r} has {what}; it needs exactly one primary loss "
                f"plus optional '+'-joined modifiers. {_available()}")
    return terms


#: The losses of runs that take a single ``ce`` or ``isda`` term (semi-supervised and
#: segmentation runs) and the arguments each accepts there.
SINGLE_LOSSES = {"ce": ("label_smoothing",),
                 "isda": ("lambda0", "kind", "constant_lambda", "label_smoothing")}


def parse_single_loss(spec: str, where: str, note: str = "") -> tuple[str, dict[str, Any]]:
    """``(name, kwargs)`` of a spec that must be one :data:`SINGLE_LOSSES` term, e.g.
    ``isda(lambda0=0.25)``; ``where`` names the runs in the error messages."""
    terms = parse_criterion_spec(spec)
    if len(terms) != 1 or terms[0][0] not in SINGLE_LOSSES:
        raise ValueError(f"--loss {spec!r} is not supported with {where}: use 'isda' or 'ce', "
                         f"optionally with arguments such as isda(lambda0=0.25), without '+' "
                         f"modifiers{note}")
    name, kwargs = terms[0]
    unknown = sorted(set(kwargs) - set(SINGLE_LOSSES[name]))
    if unknown:
        raise ValueError(f"--loss {spec!r}: {name} does not accept {', '.join(unknown)} with "
                         f"{where}; it accepts: {', '.join(SINGLE_LOSSES[name])}")
    return name, kwargs


def spec_dirname(spec: str) -> str:
    """A file-system friendly name for a spec (``"isda(lambda0=1)"`` -> ``"isda_lambda0=1"``)."""
    text = re.sub(r"\s+", "", spec)
    text = re.sub(r"[^A-Za-z0-9_.+=,-]+", "_", text).strip("_")
    return text or "loss"


def _class_counts_argument(name: str, target: Any, class_counts: Optional[list[int]]
                           ) -> dict[str, Any]:
    """``{"class_counts": ...}`` for a criterion whose ``__init__`` takes them (the
    long-tailed losses), ``{}`` otherwise; ``ValueError`` when it needs them and none are known."""
    init = target.__init__ if isinstance(target, type) else target
    param = inspect.signature(init).parameters.get("class_counts")
    if param is None:
        return {}
    if class_counts is None:
        if param.default is inspect.Parameter.empty:
            raise ValueError(f"criterion {name!r} needs the per-class training counts "
                             f"(class_counts), which this task does not provide")
        return {}
    return {"class_counts": list(class_counts)}


def create_criterion(spec: str, num_features: int, num_classes: int, config: Any = None,
                     class_counts: Optional[list[int]] = None) -> TrainingCriterion:
    """The criterion of ``spec`` for ``num_features``-dimensional features and
    ``num_classes`` classes under the run's ``config`` (default: ``TrainConfig()``): a
    single term's criterion, or a :class:`CompositeCriterion`. ``class_counts`` (the
    training images per class) go to the criteria whose ``__init__`` takes them.
    ``ValueError`` for unknown names, not exactly one primary loss or bad arguments."""
    if config is None:
        config = TrainConfig()
    if getattr(config, "lambda0", 0) is None or getattr(config, "kind", "") is None:
        # an unresolved config (resolve_config fills the per-model values): CIFAR defaults
        config = dataclasses.replace(
            config, lambda0=DEFAULT_LAMBDA0 if config.lambda0 is None else config.lambda0,
            kind=DEFAULT_KIND if config.kind is None else config.kind)
    terms = parse_criterion_spec(spec, check_registered=True)
    built: list[tuple[bool, TrainingCriterion]] = []
    for name, kwargs in terms:
        entry = criterion_info(name)
        counts = {} if "class_counts" in kwargs else _class_counts_argument(
            name, entry.target, class_counts)
        try:
            criterion = entry.factory(num_features, num_classes, config, **kwargs, **counts)
        except TypeError as err:
            if kwargs and ("argument" in str(err)):
                target = entry.target
                init = target.__init__ if isinstance(target, type) else target
                accepted = [p for p in inspect.signature(init).parameters
                            if p not in ("self", "num_features", "num_classes", "config",
                                         "class_counts")]
                raise ValueError(
                    f"bad arguments {kwargs} for criterion {name!r}: {err}; it accepts: "
                    f"{', '.join(accepted) or 'no arguments'}") from None
            raise
        if not isinstance(criterion, TrainingCriterion):
            raise TypeError(f"criterion factory {name!r} returned {type(criterion).__name__}, "
                            f"not a TrainingCriterion")
        built.append((entry.primary, criterion))
    if len(built) == 1:
        return built[0][1]
    main_index = next(i for i, (primary, _) in enumerate(built) if primary)
    # the composite holds the primary first, then the modifiers in spec order
    positions = [main_index] + [i for i in range(len(built)) if i != main_index]
    main, *modifiers = [built[i][1] for i in positions]
    return CompositeCriterion(main, modifiers, [positions.index(i) for i in range(len(built))])


def check_classifier(criterion: TrainingCriterion, classifier: nn.Module, spec: str) -> None:
    """``ValueError`` (one line) when ``criterion`` reads the classifier's weights
    (``needs_linear_classifier``) and ``classifier`` is not an ``nn.Linear``."""
    if criterion.needs_linear_classifier and not isinstance(classifier, nn.Linear):
        raise ValueError(
            f"--loss {spec!r} needs the model to end in an nn.Linear (it uses the classifier's "
            f"weights), but the model's classifier is a {type(classifier).__name__}; build the "
            f"model with --model-kwargs classifier=linear, or use a loss of the logits alone "
            f"(e.g. ldam_drw, ce, balanced_softmax)")


# ---------------------------------------------------------------------------- built-ins


@register_criterion("ce")
class CrossEntropyCriterion(TrainingCriterion):
    """Standard cross-entropy (the paper's "Basic")."""

    needs_linear_classifier: ClassVar[bool] = False

    def __init__(self, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.label_smoothing = float(label_smoothing)

    def forward(self, features: Tensor, logits: Tensor, target: Tensor, model: nn.Module
                ) -> Tensor:
        return F.cross_entropy(logits, target, label_smoothing=self.label_smoothing)


@register_criterion("isda")
class ISDACriterion(TrainingCriterion):
    """ISDA (Eq. 7) with the online covariance estimate and lambda = lambda0 * t / T; the
    run's ``lambda0``, ``kind``, ``constant_lambda`` unless the spec overrides them;
    ``logit_adjustment=tau`` adds ``tau * log(pi)`` (``pi``: the training class prior) to the
    logits, ISDALoss's ``class_prior`` option (ISDA + Balanced Softmax / logit adjustment)."""

    def __init__(self, num_features: int, num_classes: int, lambda0: float = 0.5,
                 kind: str = "full", constant_lambda: bool = False,
                 label_smoothing: float = 0.0, rank: Optional[int] = None,
                 logit_adjustment: float = 0.0, class_counts: Optional[list[int]] = None
                 ) -> None:
        super().__init__()
        extra: dict[str, Any] = {} if rank is None else {"rank": int(rank)}  # kind="lowrank"
        if float(logit_adjustment) != 0.0:
            if class_counts is None:
                raise ValueError("isda(logit_adjustment=...) needs the per-class training counts")
            extra.update(class_prior=list(class_counts), logit_adjustment=float(logit_adjustment))
        self.isda = ISDALoss(num_features, num_classes, lambda0, kind,
                             constant_lambda=constant_lambda, label_smoothing=label_smoothing,
                             **extra)

    @classmethod
    def from_config(cls, num_features: int, num_classes: int, config: Any, **kwargs: Any
                    ) -> ISDACriterion:
        args = {"lambda0": config.lambda0, "kind": config.kind,
                "constant_lambda": config.constant_lambda, **kwargs}
        return cls(num_features, num_classes, **args)

    def forward(self, features: Tensor, logits: Tensor, target: Tensor, model: nn.Module
                ) -> Tensor:
        weight = model.get_classifier().weight
        return self.isda(features, logits, target, weight)

    def set_progress(self, t_over_T: float) -> None:
        self.isda.set_progress(t_over_T)

    def log_values(self) -> dict[str, float]:
        return {"lambda": self.isda.ratio}

