"""Semi-supervised ISDA (Wang et al., TPAMI 2021, Section 5 and Table 6).

Pure building blocks, wired into the trainer by ``isda train --semi ...``:

* :func:`labeled_split`: class-balanced labeled / unlabeled / validation indices.
* :class:`ZCA`, :func:`global_contrast_normalize`: input whitening.
* :class:`TranslateFlip`, :func:`random_translate`: random 2x2 translation (+ flip).
* :class:`PiModel`, :class:`TemporalEnsembling`, :class:`MeanTeacher`, :class:`VAT`:
  the base methods' regularisers (:func:`create_method` by name).
* :class:`SemiISDALoss`: the Eq. (19) objective; :func:`semi_supervised_loss` one step.
* :class:`SemiBatchSampler`, :class:`SemiBatchLoader`: mixed labeled/unlabeled batches.

A training step::

    out = semi_supervised_loss(model, criterion, method, batch.x_labeled, batch.y_labeled,
                               batch.unlabeled_views, indices=batch.unlabeled_indices,
                               eta2=method.weight(epoch_float, labeled_fraction))
    optimizer.zero_grad(); out.loss.backward(); optimizer.step()
    method.after_step(model, global_step)            # then method.end_epoch() per epoch
    criterion.set_progress(epoch / epochs)           # lambda = lambda0 * t / T
"""

from .augment import TranslateFlip, random_flip, random_translate, translate
from .batches import SemiBatch, SemiBatchLoader, SemiBatchSampler
from .loss import SemiISDALoss, SemiLossOutput, semi_supervised_loss
from .methods import (
    ALIASES,
    METHODS,
    PAPER_TABLE6,
    VAT,
    VAT_EPSILON,
    ConsistencyMethod,
    ConsistencyOutput,
    MeanTeacher,
    PiModel,
    TemporalEnsembling,
    canonical_method_name,
    consistency_weight,
    create_method,
    entropy_with_logits,
    frozen_bn_stats,
    kl_div_with_logits,
    sigmoid_rampup,
    softmax_mse,
)
from .split import SemiSplit, labeled_split
from .zca import ZCA, global_contrast_normalize

__all__ = [
    "ALIASES",
    "METHODS",
    "PAPER_TABLE6",
    "VAT",
    "VAT_EPSILON",
    "ZCA",
    "ConsistencyMethod",
    "ConsistencyOutput",
    "MeanTeacher",
    "PiModel",
    "SemiBatch",
    "SemiBatchLoader",
    "SemiBatchSampler",
    "SemiISDALoss",
    "SemiLossOutput",
    "SemiSplit",
    "TemporalEnsembling",
    "TranslateFlip",
    "canonical_method_name",
    "consistency_weight",
    "create_method",
    "entropy_with_logits",
    "frozen_bn_stats",
    "global_contrast_normalize",
    "kl_div_with_logits",
    "labeled_split",
    "random_flip",
    "random_translate",
    "semi_supervised_loss",
    "sigmoid_rampup",
    "softmax_mse",
    "translate",
]
