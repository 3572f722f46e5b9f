"""The one place the analyses resolve a configuration: ``isda analyze`` is an entry point
(docs/architecture.md, "Configuration"), and its analyses resolve through :func:`resolve_run`.
"""

from __future__ import annotations

from ..train.config import ResolvedConfig, TrainConfig
from ..train.resolve import resolve_config

__all__ = ["resolve_run"]


def resolve_run(config: TrainConfig) -> ResolvedConfig:
    """The resolved configuration of one of an analysis's runs (a saved ``config.json``
    included)."""
    return resolve_config(config)
