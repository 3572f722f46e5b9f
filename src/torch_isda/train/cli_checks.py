"""Checks of what a user typed for ``isda train`` / ``isda compare`` that the resolved
configuration can no longer tell; ``overrides`` are the options given on the command line
(:func:`~torch_isda.train.config.config_overrides_from_args`).
"""

from __future__ import annotations

import re
import sys
from typing import Any

from .config import TrainConfig

__all__ = ["FILELESS_DATASETS", "ISDA_OPTIONS", "ISDA_OPTION_CRITERIA", "check_command_line",
           "criterion_names", "ignored_option_notes", "print_option_notes"]

#: Datasets that read no files: ``--data-dir`` and ``--download`` do nothing for them.
FILELESS_DATASETS = {
    "digits": "bundled with scikit-learn",
    "synthetic_segmentation": "generated in memory",
}


#: Criteria that read the run's ISDA options (``--lambda0``, ``--kind``, ``--constant-lambda``).
ISDA_OPTION_CRITERIA = ("isda", "explicit_sda", "learned_cov")
ISDA_OPTIONS = ("lambda0", "kind", "constant_lambda")


def criterion_names(spec: str) -> list[str]:
    """The criteria of a spec: ``"isda(lambda0=5)+center"`` -> ``["isda", "center"]``."""
    return [part.split("(")[0].strip().lower()
            for part in re.split(r"\+(?![^()]*\))", spec or "") if part.strip()]


def _isda_option_note(overrides: dict[str, Any], config: TrainConfig) -> list[str]:
    given = [f"--{name.replace('_', '-')}" for name in ISDA_OPTIONS if name in overrides]
    semi = config.semi not in (None, "", "none")
    if not given or semi or set(criterion_names(config.loss)) & set(ISDA_OPTION_CRITERIA):
        return []
    return [f"note: {' and '.join(given)} {'has' if len(given) == 1 else 'have'} no effect with "
            f"--loss {config.loss} (only {', '.join(ISDA_OPTION_CRITERIA)} use them)"]


def _amp_note(config: TrainConfig) -> list[str]:
    if config.amp != "fp16":
        return []
    import torch

    device = str(config.device)
    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        return ["note: --amp fp16 on the CPU is emulated and many times slower than float32 "
                "(about 50x per epoch measured); use --amp bf16 or --amp none"]
    return []


def ignored_option_notes(overrides: dict[str, Any], config: TrainConfig) -> list[str]:
    """``note: ...`` lines for given options that the configuration ignores or that work
    against the run (ISDA options without an ISDA criterion, fp16 autocast on the CPU)."""
    notes = _isda_option_note(overrides, config) + _amp_note(config)
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
    ``--model`` is not given)."""
    if overrides.get("model") == TrainConfig.model:
        from .tasks.segmentation.config import DEFAULT_SEGMENTATION_MODEL, infer_task

        if infer_task(config) == "segmentation":
            raise ValueError(
                f"--model {TrainConfig.model} is a classification model; segmentation runs "
                f"need a segmentation model such as {DEFAULT_SEGMENTATION_MODEL} (the default "
                f"when --model is not given)")


def print_option_notes(overrides: dict[str, Any], resolved: TrainConfig) -> None:
    """Print the :func:`ignored_option_notes` of the ``resolved`` configuration to stderr
    (called once it resolved: a bad value is reported alone, without notes)."""
    for note in ignored_option_notes(overrides, resolved):
        print(note, file=sys.stderr)
