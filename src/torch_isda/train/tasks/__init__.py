"""The task registry: ``--task`` / ``--semi`` -> a :class:`~torch_isda.train.tasks.base.Task`.

Entries are ``"module:Class"`` strings imported on first use, so neither the engine nor
the configuration code imports a task class (``register_task("mytask", "pkg.tasks:MyTask")``).
"""

from __future__ import annotations

import importlib
from typing import Any

from .segmentation.config import infer_task
from .base import StepOut, Task

__all__ = ["TASKS", "StepOut", "Task", "register_task", "task_class", "task_name"]

#: Registered tasks: name -> ``"module:Class"``.
TASKS: dict[str, str] = {
    "classification": "torch_isda.train.tasks.classification.task:ClassificationTask",
    "semi": "torch_isda.train.tasks.semi.task:SemiTask",
    "segmentation": "torch_isda.train.tasks.segmentation.task:SegmentationTask",
}


def register_task(name: str, target: str) -> None:
    """Register ``"module:Class"`` under ``name`` (for :func:`task_class`)."""
    if ":" not in target:
        raise ValueError(f"register_task needs 'module:Class'; got {target!r}")
    TASKS[str(name)] = target


def task_name(config: Any) -> str:
    """The registry name of the task that runs ``config``: segmentation when its ``task`` or
    its dataset says so (:func:`~torch_isda.train.tasks.segmentation.config.infer_task`),
    semi-supervised when ``semi != "none"``, else classification."""
    if infer_task(config) == "segmentation":
        return "segmentation"
    if str(getattr(config, "semi", "none") or "none").strip().lower() != "none":
        return "semi"
    return "classification"


def task_class(config_or_name: Any) -> type[Task]:
    """The task class of a config (or of a registry name)."""
    name = config_or_name if isinstance(config_or_name, str) else task_name(config_or_name)
    try:
        module, cls = TASKS[name].split(":")
    except KeyError:
        raise ValueError(f"unknown task {name!r}; registered: {', '.join(sorted(TASKS))}") from None
    return getattr(importlib.import_module(module), cls)
