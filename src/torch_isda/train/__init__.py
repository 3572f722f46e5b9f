"""Training harness of torch-isda: ``isda train`` / ``isda compare`` as a library.

Not imported by ``import torch_isda`` (the core stays torch-only); needs the ``train``
extra for the datasets (scikit-learn, ...), progress bars (tqdm) and plots (matplotlib).
Usage: docs/training.md; the layout of this package: docs/architecture.md.
"""

from .config import DEFAULT_KIND, DEFAULT_LAMBDA0, ResolvedConfig, TrainConfig
from .criteria import (
    CompositeCriterion,
    CriterionModifier,
    TrainingCriterion,
    create_criterion,
    list_criteria,
    register_criterion,
)
from .presets import LAMBDA0_GRID_CIFAR, LAMBDA0_GRID_IMAGENET, PRESETS, get_preset
from .resolve import resolve_config
from .engine import Callback, DivergenceError, Engine, Trainer, train, train_distributed
from .compare import run_comparison  # noqa: E402  (matplotlib is imported when plotting)


__all__ = [
    "DEFAULT_KIND",
    "DEFAULT_LAMBDA0",
    "LAMBDA0_GRID_CIFAR",
    "LAMBDA0_GRID_IMAGENET",
    "PRESETS",
    "Callback",
    "CompositeCriterion",
    "CriterionModifier",
    "DivergenceError",
    "Engine",
    "ResolvedConfig",
    "TrainConfig",
    "Trainer",
    "TrainingCriterion",
    "create_criterion",
    "get_preset",
    "list_criteria",
    "register_criterion",
    "resolve_config",
    "run_comparison",
    "train",
    "train_distributed",
]
