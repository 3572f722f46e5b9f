"""Default output directories of ``isda compare``, keyed by configuration (docs/training.md):
the command's base name followed by the settings that differ from its defaults; a long
difference becomes the names of the fields and a hash of their values.

The functions compare resolved configurations; the caller (an entry point) resolves the
pair :func:`suffix_configs` gives.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from typing import Any

from .config import ResolvedConfig, TrainConfig
from .rundir import COMPARED_IGNORED_FIELDS, config_differences

__all__ = ["MAX_SUFFIX", "comparison_dir", "config_suffix", "default_comparison_out",
           "suffix_configs"]

#: Longer suffixes become ``<field names>-<hash>``.
MAX_SUFFIX = 48

#: Fields set per run by the comparison itself (not part of the directory name).
PER_RUN_FIELDS = ("loss", "seed", "out")


def _slug(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        text = f"{value:g}"
    elif isinstance(value, (list, tuple)):
        text = ",".join(str(v) for v in value)
    elif isinstance(value, dict):
        text = ",".join(f"{k}={v}" for k, v in sorted(value.items()))
    else:
        text = str(value)
    return re.sub(r"[^A-Za-z0-9.,=+_-]+", "_", text).strip("_") or "none"


def suffix_configs(config: TrainConfig, reference: TrainConfig) -> tuple[TrainConfig, TrainConfig]:
    """The two configurations whose resolved forms :func:`config_suffix` compares:
    ``config`` and ``reference`` with ``config``'s loss and seed (``out`` unset)."""
    return (config.replace(out="-"),
            reference.replace(loss=config.loss, seed=config.seed, out="-"))


def config_suffix(config: ResolvedConfig, reference: ResolvedConfig,
                  ignore: Iterable[str] = ()) -> str:
    """``"epochs10-lr0.1"``: the fields in which ``config`` differs from ``reference``
    (both resolved, :func:`suffix_configs`), minus ignored and per-run fields; ``""`` if none."""
    skip = (*COMPARED_IGNORED_FIELDS, *PER_RUN_FIELDS, *ignore)
    diff = config_differences(reference, config, ignore=skip)
    if not diff:
        return ""
    keys = sorted(diff)
    parts = []
    for key in keys:  # epochs10, lr0.1, augment-crop_flip+cutout, nesterov-off
        value = diff[key][1]
        numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
        joined = numeric and not key[-1].isdigit()  # eta1-2, not eta12
        parts.append(f"{key.replace('_', '-')}{'' if joined else '-'}{_slug(value)}")
    suffix = "-".join(parts)
    if len(suffix) <= MAX_SUFFIX:
        return suffix
    digest = hashlib.sha1(json.dumps({k: diff[k][1] for k in keys}, sort_keys=True,
                                     default=str).encode()).hexdigest()[:8]
    names = "-".join(key.replace("_", "-") for key in keys)
    return f"{names[:MAX_SUFFIX - 9].rstrip('-')}-{digest}"


def default_comparison_out(prefix: str, config: ResolvedConfig, reference: ResolvedConfig,
                           ignore: Iterable[str] = ()) -> str:
    """``prefix``, then ``-`` and :func:`config_suffix` if ``config`` differs from ``reference``."""
    suffix = config_suffix(config, reference, ignore)
    return f"{prefix}-{suffix}" if suffix else prefix


def comparison_dir(config: ResolvedConfig, reference: ResolvedConfig,
                   default_out: str = "runs/compare-digits",
                   default: tuple[str, str] = ("digits", "digits_cnn")) -> str:
    """The default ``--out`` of ``isda compare``: ``default_out`` for the default dataset and
    model, else ``runs/compare-<dataset>-<resolved model>``, plus :func:`config_suffix`;
    ``config`` and ``reference`` are the resolved :func:`suffix_configs` of the comparison's
    base and of ``TrainConfig(dataset=..., model=...)``."""
    is_default = (config.dataset, reference.model) == tuple(default)
    prefix = default_out if is_default else f"runs/compare-{config.dataset}-{config.model}"
    return default_comparison_out(prefix, config, reference)
