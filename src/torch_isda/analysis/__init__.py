"""Analyses and figures of the ISDA paper (TPAMI 2021, Section 6.5 and Table 3).

Each analysis trains its runs with the training harness (:mod:`torch_isda.train`), caches
them like ``isda compare`` and writes a PNG plus a markdown and a CSV table:

========================================  ======================  =========================
function                                  command                 paper
========================================  ======================  =========================
:func:`tightness.run_tightness`           ``isda analyze tightness``    Fig. 9
:func:`explicit.run_explicit`             ``isda analyze explicit``     Fig. 10
:func:`tsne.run_tsne`                     ``isda analyze tsne``         Fig. 8
:func:`sensitivity.run_sensitivity`       ``isda analyze sensitivity``  Fig. 11
:func:`ablation.run_ablation`             ``isda analyze ablation``     Table 8
:func:`overhead.run_overhead`             ``isda bench overhead``       Table 3 (and 1)
========================================  ======================  =========================

The submodules import matplotlib / scikit-learn lazily; import them directly, e.g.
``from torch_isda.analysis.tightness import run_tightness``. See docs/analysis.md.
"""

__all__ = ["ablation", "common", "explicit", "overhead", "sensitivity", "tightness", "tsne"]
