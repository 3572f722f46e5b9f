"""Configuration resolution: the one place a :class:`TrainConfig` is completed, in one pass
(the task fills its defaults; explicitly set fields always win; see docs/architecture.md).
"""

from __future__ import annotations

from .tasks.semi.config import semi_problems
from .config import TrainConfig
from .tasks import task_class

__all__ = ["resolve_config"]


def resolve_config(config: TrainConfig) -> TrainConfig:
    """The resolved copy of ``config`` (``ValueError`` naming every problem found)."""
    problems = semi_problems(config)
    if problems:
        raise ValueError("invalid training configuration: " + "; ".join(problems))
    resolved = task_class(config).resolve(config)
    resolved.validate()
    return resolved
