"""Common base class and helpers shared by every model in the zoo.

ISDA needs two things from a backbone: the deep feature ``a`` that enters the
last fully-connected layer (its dimension ``A`` is ``num_features``) and that
layer itself (``fc``, whose weights define the augmented logits).  Every model
in :mod:`torch_isda.models` therefore derives from :class:`ISDANet`, which
fixes this interface::

    features = model.forward_features(x)   # [N, A], pooled and flattened
    logits = model.fc(features)            # == model(x)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .cosine_classifier import build_classifier

__all__ = ["ISDANet", "global_avg_pool", "init_weights"]


def global_avg_pool(x: torch.Tensor) -> torch.Tensor:
    """Average ``[N, C, H, W]`` over its spatial dimensions into ``[N, C]``."""
    return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)


def init_weights(module: nn.Module) -> None:
    """Initialise ``module`` and its children in place.

    Convolutions get Kaiming-normal weights (fan-out, ReLU gain, as in He et
    al. 2015 and the reference CIFAR implementations) and zero biases; batch
    norms get weight 1 and bias 0; linear layers keep PyTorch's default weight
    initialisation and get zero biases.
    """
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)


class ISDANet(nn.Module):
    """Base class: a feature extractor followed by one linear classifier.

    Subclasses build their body in ``__init__``, then call
    :meth:`_build_classifier` as the last step, and implement
    :meth:`forward_features`.

    Attributes:
        family: Architecture family (``"resnet"``, ``"wide_resnet"``, ...),
            used to pick training presets.
        default_input_size: ``(C, H, W)`` of the inputs the model was designed
            for; ``C`` follows the ``in_channels`` the model was built with.
        num_features: Dimension ``A`` of the deep feature.
        fc: The final ``nn.Linear(num_features, num_classes)`` (a cosine classifier for
            the models built with ``classifier="cosine"``).
    """

    family: str = ""
    default_input_size: tuple[int, int, int] = (3, 32, 32)
    num_features: int
    fc: nn.Module

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        if in_channels < 1:
            raise ValueError(f"in_channels must be positive, got {in_channels}")
        self.in_channels = in_channels
        self.default_input_size = (in_channels, *type(self).default_input_size[1:])

    @property
    def in_chans(self) -> int:
        """Input channels of the stem (timm's name for :attr:`in_channels`)."""
        return self.in_channels

    def _build_classifier(self, num_features: int, num_classes: int,
                          classifier: str = "linear") -> None:
        """Create ``fc`` on top of ``num_features`` and initialise all weights.

        ``classifier="cosine"`` makes ``fc`` a :class:`~.cosine_classifier.CosineClassifier`
        (LDAM's normalized classifier) instead of an ``nn.Linear``.
        """
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.num_features = num_features
        self.num_classes = num_classes
        self.fc = build_classifier(classifier, num_features, num_classes)
        init_weights(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Return the pooled, flattened deep features ``[N, num_features]``."""
        raise NotImplementedError

    def get_classifier(self) -> nn.Module:
        """Return the final layer (``fc``): an ``nn.Linear`` unless built with
        ``classifier="cosine"``."""
        return self.fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the logits ``fc(forward_features(x))``."""
        return self.fc(self.forward_features(x))
