"""Configuration resolution: the one place a :class:`TrainConfig` is completed, in one pass.

``resolve_config(config)`` checks the fields that concern every task, picks the task
(:func:`~torch_isda.train.tasks.task_class`) and lets it fill its defaults:

* classification: the model family's preset (:func:`~torch_isda.train.presets.apply_preset`);
* semi-supervised: the same, then the dataset's semi-supervised defaults
  (:func:`~torch_isda.semi.config.resolve_semi_config`);
* segmentation: the segmentation presets
  (:func:`~torch_isda.train.segmentation_config.resolve_segmentation_config`).

Explicitly set fields always win; the result is validated.
"""

from __future__ import annotations

from ..semi.config import semi_problems
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
