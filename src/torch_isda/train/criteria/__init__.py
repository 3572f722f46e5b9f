"""Training criteria: the ``--loss`` registry and its spec grammar, ``ce`` and ``isda``
(:mod:`~torch_isda.train.criteria.registry`), and the adapters that make the comparison
methods of ``torch_isda.baselines`` criteria (:mod:`~torch_isda.train.criteria.baselines`,
:mod:`~torch_isda.train.criteria.explicit_augmentation`,
:mod:`~torch_isda.train.criteria.generative_augmentation`,
:mod:`~torch_isda.train.criteria.long_tailed`, :mod:`~torch_isda.train.criteria.risda`),
which this package imports (they register themselves: the registry is found from above, never the other way).
"""

from . import registry
from .registry import *  # noqa: F401,F403  (the registry's public names, registry.__all__)
from . import baselines, explicit_augmentation, generative_augmentation  # noqa: F401  (register)
from . import long_tailed, risda  # noqa: F401  (register)

#: The modules of the built-in criteria beyond ``ce`` and ``isda``: the Table 5 baselines,
#: explicit augmentation / learned covariance (Fig. 10), DistributionNet and GAN augmentation,
#: the long-tailed losses, MetaSAug and RISDA.
BUILTIN_CRITERION_MODULES: tuple[str, ...] = (
    baselines.__name__, explicit_augmentation.__name__, generative_augmentation.__name__,
    long_tailed.__name__, risda.__name__)

__all__ = [*registry.__all__, "BUILTIN_CRITERION_MODULES"]
