"""Baselines of the ISDA paper (Wang et al., TPAMI 2021, Section 6.1 and Table 5): robust
losses and regularizers, as plain torch building blocks.

=====================  ==============================================  =========================
baseline               class / function                                hook for a training loop
=====================  ==============================================  =========================
Dropout (p = 0.3)      :class:`FeatureDropout`                         transform the features
Large-margin softmax   :class:`LargeMarginSoftmaxLoss`                 loss(features, target,
                                                                       fc.weight, fc.bias)
Disturb label          :class:`DisturbLabel`                           transform the target
Focal loss             :class:`FocalLoss`                              loss(logits, target)
Center loss            :class:`CenterLoss`                             CE + loss(features, target);
                                                                       ``parameter_groups()``
L_q loss               :class:`LqLoss`                                 loss(logits, target)
Label smoothing        :class:`LabelSmoothingLoss`                     loss(logits, target)
=====================  ==============================================  =========================

Long-tailed recognition (issue 23): :class:`ClassBalancedLoss` (Cui et al. 2019),
:class:`LDAMLoss` with deferred re-weighting (Cao et al. 2019), :class:`LogitAdjustedLoss`
(Balanced Softmax, Ren et al. 2020; logit adjustment, Menon et al. 2021), all
``loss(logits, target)`` built from the per-class training counts, MetaSAug (Li et al.
2021): :class:`MetaSAugLoss` and its meta step :func:`meta_covariance_step`, and RISDA
(Chen et al. 2022): :class:`RISDALoss`, its :func:`knowledge_graph` and
:func:`reasoned_covariance`.

``features`` are the inputs of the model's final ``nn.Linear`` (see
:func:`torch_isda.find_classifier`), ``logits`` its outputs.  Defaults follow Appendix C
of the paper where it gives values (focal ``alpha = 0.5, gamma = 1``; ``q = 0.4``;
disturb rate 0.05; dropout 0.3; center learning rate 0.5) and the original papers / code
otherwise; each module's docstring cites its source.
"""

from .center import CenterLoss, center_loss
from .class_balanced import ClassBalancedLoss, class_balanced_loss, effective_number_weights
from .disturb_label import DisturbLabel, disturb_labels
from .feature_dropout import FeatureDropout, feature_dropout
from .focal import FocalLoss, focal_loss
from .label_smoothing import LabelSmoothingLoss, label_smoothing_cross_entropy
from .large_margin import (
    LargeMarginSoftmaxLoss,
    large_margin_logits,
    large_margin_softmax_loss,
    lsoftmax_beta,
    lsoftmax_psi,
)
from .ldam import LDAMLoss, ldam_loss, ldam_margins
from .balanced_softmax import LogitAdjustedLoss, log_prior, logit_adjusted_loss
from .lq import LqLoss, lq_loss
from .metasaug import MetaSAugLoss, MetaStep, meta_covariance_step
from .risda import RISDALoss, knowledge_graph, reasoned_covariance, risda_logits

__all__ = [
    "CenterLoss",
    "ClassBalancedLoss",
    "LDAMLoss",
    "LogitAdjustedLoss",
    "DisturbLabel",
    "FeatureDropout",
    "FocalLoss",
    "LabelSmoothingLoss",
    "LargeMarginSoftmaxLoss",
    "LqLoss",
    "MetaSAugLoss",
    "MetaStep",
    "RISDALoss",
    "center_loss",
    "class_balanced_loss",
    "effective_number_weights",
    "ldam_loss",
    "ldam_margins",
    "log_prior",
    "logit_adjusted_loss",
    "disturb_labels",
    "feature_dropout",
    "focal_loss",
    "label_smoothing_cross_entropy",
    "large_margin_logits",
    "large_margin_softmax_loss",
    "lq_loss",
    "meta_covariance_step",
    "knowledge_graph",
    "reasoned_covariance",
    "risda_logits",
    "lsoftmax_beta",
    "lsoftmax_psi",
]
