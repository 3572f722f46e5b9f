"""torch-isda: Implicit Semantic Data Augmentation (ISDA) for PyTorch.

Core API (depends on torch only):

* :class:`CovarianceEstimator`: online class-conditional feature statistics (Eqs. 1-3).
* :class:`ISDALoss`: the ISDA bound of Eq. (7) with the lambda schedule of Section 4.1.
* :func:`attach`: drop-in ISDA for a model ending in an ``nn.Linear``.
* :class:`SegmentationISDALoss`: per-pixel ISDA for segmentation networks.
* :class:`ISDAOptions`: the options every ISDA loss takes (schedule, cross-entropy options,
  class-prior offsets), checked once.
* :mod:`torch_isda.functional`: the pure math (augmented logits, consistency bound of
  Eq. 15, Monte Carlo estimate of Eq. 6) and the class-prior offsets of
  :mod:`torch_isda.logit_adjustment`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # for type checkers and the API reference; at run time names load on first use
    from . import functional
    from .estimator import CovarianceEstimator
    from .hook import HookedISDALoss, attach, find_classifier
    from .loss import ISDALoss
    from .lowrank import LowRankCovariance
    from .options import ISDAOptions
    from .segmentation import SegmentationISDALoss

from .moved_modules import install as _install_moved_modules

_install_moved_modules()  # old import paths of moved modules keep working (with a warning)

__version__ = "0.1.0"

__all__ = [
    "CovarianceEstimator",
    "ISDALoss",
    "HookedISDALoss",
    "ISDAOptions",
    "LowRankCovariance",
    "SegmentationISDALoss",
    "attach",
    "find_classifier",
    "functional",
    "__version__",
]

#: where each public name lives: imported on first use, so that ``import torch_isda`` (and
#: ``isda --help``, which imports the package) does not import torch until the core is used
_PUBLIC = {
    "CovarianceEstimator": ".estimator",
    "ISDALoss": ".loss",
    "HookedISDALoss": ".hook",
    "ISDAOptions": ".options",
    "LowRankCovariance": ".lowrank",
    "SegmentationISDALoss": ".segmentation",
    "attach": ".hook",
    "find_classifier": ".hook",
}


#: the core's modules, attributes of the package as when it imported them all
_CORE_MODULES = {"functional", "estimator", "loss", "hook", "segmentation", "options", "lowrank", "layouts",
                 "kernels", "batch", "distributed", "logit_adjustment", "eager"}


def __getattr__(name: str) -> Any:
    if name in _CORE_MODULES:
        value: Any = importlib.import_module(f".{name}", __name__)
    elif name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name], __name__), name)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # once: later lookups do not come here
    return value


def __dir__() -> list:
    return sorted(set(globals()) | set(__all__))
