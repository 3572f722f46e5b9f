"""Checks of what a user typed for ``isda train`` / ``isda compare`` that the resolved
configuration can no longer tell; ``overrides`` are the options given on the command line
(:func:`~torch_isda.train.config.config_overrides_from_args`).
"""

from __future__ import annotations

import sys
from typing import Any

from .config import TrainConfig

__all__ = ["FILELESS_DATASETS", "check_command_line", "ignored_option_notes"]

#: Datasets that read no files: ``--data-dir`` and ``--download`` do nothing for them.
FILELESS_DATASETS = {
    "digits": "bundled with scikit-learn",
    "synthetic_segmentation": "generated in memory",
}


def ignored_option_notes(overrides: dict[str, Any], config: TrainConfig) -> list[str]:
    """``note: ...`` lines for given options that the configuration ignores."""
    notes = []
    why = FILELESS_DATASETS.get(config.dataset)
    if why is not None:
        given = [f"--{name.replace('_', '-')}" for name in ("data_dir", "download")
                 if name in overrides]
        if given:
            notes.append(f"note: {' and '.join(given)} {'has' if len(given) == 1 else 'have'} "
                         f"no effect for dataset {config.dataset!r} ({why})")
    return notes


def check_command_line(overrides: dict[str, Any], config: TrainConfig) -> None:
    """``ValueError`` for an explicit ``--model`` that a segmentation run would replace (the
    classification default ``digits_cnn`` stands for "the task's default model" only when
    ``--model`` is not given); then print the :func:`ignored_option_notes` to stderr."""
    if overrides.get("model") == TrainConfig.model:
        from .tasks.segmentation.config import DEFAULT_SEGMENTATION_MODEL, infer_task

        if infer_task(config) == "segmentation":
            raise ValueError(
                f"--model {TrainConfig.model} is a classification model; segmentation runs "
                f"need a segmentation model such as {DEFAULT_SEGMENTATION_MODEL} (the default "
                f"when --model is not given)")
    for note in ignored_option_notes(overrides, config):
        print(note, file=sys.stderr)
