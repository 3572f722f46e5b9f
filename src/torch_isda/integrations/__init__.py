"""Optional integrations with training frameworks.

* :mod:`torch_isda.integrations.lightning`: :class:`ISDACallback` for PyTorch Lightning
  (``pip install 'torch-isda[lightning]'``);
* :mod:`torch_isda.integrations.transformers`: :class:`ISDATrainer` and
  :func:`isda_compute_loss` for Hugging Face ``transformers`` sequence classification
  (``pip install 'torch-isda[transformers]'``).

Nothing is imported until used: ``from torch_isda.integrations import ISDACallback``
imports Lightning, ``ISDATrainer`` imports transformers.
"""

from __future__ import annotations

import importlib

__all__ = ["ISDACallback", "ISDATrainer", "isda_compute_loss", "find_sequence_classifier"]

_LAZY = {
    "ISDACallback": "lightning",
    "ISDATrainer": "transformers",
    "isda_compute_loss": "transformers",
    "find_sequence_classifier": "transformers",
}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


def __dir__():
    return sorted(list(globals()) + __all__)
