"""torch-isda: Implicit Semantic Data Augmentation (ISDA) for PyTorch.

Core API (depends on torch only):

* :class:`CovarianceEstimator`: online class-conditional feature statistics (Eqs. 1-3).
* :class:`ISDALoss`: the ISDA bound of Eq. (7) with the lambda schedule of Section 4.1.
* :func:`attach`: drop-in ISDA for a model ending in an ``nn.Linear``.
* :class:`SegmentationISDALoss`: per-pixel ISDA for segmentation networks.
* :mod:`torch_isda.functional`: the pure math (augmented logits, consistency bound of
  Eq. 15, Monte Carlo estimate of Eq. 6).
"""

from . import functional
from .estimator import CovarianceEstimator
from .hook import HookedISDALoss, attach, find_classifier
from .loss import ISDALoss
from .lowrank import LowRankCovariance
from .segmentation import SegmentationISDALoss
from .moved_modules import install as _install_moved_modules

_install_moved_modules()  # old import paths of moved modules keep working (with a warning)

__version__ = "0.1.0"

__all__ = [
    "CovarianceEstimator",
    "ISDALoss",
    "HookedISDALoss",
    "LowRankCovariance",
    "SegmentationISDALoss",
    "attach",
    "find_classifier",
    "functional",
    "__version__",
]
