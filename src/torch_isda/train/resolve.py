"""Configuration resolution: the one place a :class:`TrainConfig` is completed, in one pass
(the task fills its defaults; explicitly set fields always win; see docs/architecture.md).

Only the entry points call :func:`resolve_config`: :func:`~torch_isda.train.engine.train`
(``isda train``, the torchrun worker, the Python API), the comparison's plan
(:func:`~torch_isda.train.compare.plan_comparison`), the commands that check or name a
configuration before running it (``isda train --nproc``, ``isda compare``'s default
directory) and ``isda analyze`` (:func:`torch_isda.analysis.common.resolve_run`). What they
pass on is a frozen :class:`ResolvedConfig`, which the engine requires.
"""

from __future__ import annotations

import math

from ..functional import KINDS
from .config import ResolvedConfig, TrainConfig
from .criteria import criterion_info, parse_criterion_spec
from .tasks import task_class
from .tasks.semi.config import semi_problems

__all__ = ["ResolvedConfig", "resolve_config"]


def resolve_config(config: TrainConfig) -> ResolvedConfig:
    """The resolved, frozen copy of ``config`` (``ValueError`` naming every problem found);
    a :class:`ResolvedConfig` is returned as it is."""
    if isinstance(config, ResolvedConfig):
        return config
    problems = semi_problems(config)
    if problems:
        raise ValueError("invalid training configuration: " + "; ".join(problems))
    resolved = task_class(config).resolve(config)
    resolved.validate()
    problems = (criterion_argument_problems(resolved.loss)
                + classifier_problems(resolved.loss, resolved.model_kwargs,
                                      getattr(resolved, "semi", "none")))
    if problems:
        raise ValueError("; ".join(problems))
    return ResolvedConfig.from_dict(resolved.to_dict())


def criterion_argument_problems(spec: str) -> list[str]:
    """Range problems of the ISDA arguments a ``--loss`` spec gives (``lambda0``, ``kind``),
    found when resolving instead of when the criterion is built after the data."""
    problems = []
    for name, kwargs in parse_criterion_spec(spec):
        lambda0 = kwargs.get("lambda0", 0.0)
        number = isinstance(lambda0, (int, float)) and not isinstance(lambda0, bool)
        if not (number and math.isfinite(lambda0) and lambda0 >= 0):
            problems.append(f"loss {spec!r}: lambda0 of {name} must be a finite non-negative "
                            f"number; got {lambda0!r}")
        if "kind" in kwargs and kwargs["kind"] not in KINDS:
            problems.append(f"loss {spec!r}: kind of {name} must be one of {', '.join(KINDS)}; "
                            f"got {kwargs['kind']!r}")
    return problems


def classifier_problems(spec: str, model_kwargs: dict, semi: str = "none") -> list[str]:
    """The criteria of ``spec`` that read the classifier's weights (``needs_linear_classifier``;
    assumed of a factory function), and ``--semi`` (Eq. 15 reads them too), when
    ``model_kwargs`` asks for a cosine classifier."""
    kind = (model_kwargs or {}).get("classifier", "linear")
    if kind == "linear":
        return []
    needing = [name for name, _ in parse_criterion_spec(spec)
               if getattr(criterion_info(name).target, "needs_linear_classifier", True)]
    if semi not in (None, "none"):
        needing.append(f"--semi {semi}")
    return [f"loss {spec!r}: {name} uses the classifier's weights and needs "
            f"classifier=linear; the model kwargs ask for classifier={kind}"
            for name in needing]
