"""Model zoo of the ISDA paper (Wang et al., TPAMI 2021, Table 2), timm-style.

Usage::

    from torch_isda.models import create_model, list_models

    model = create_model("resnet32", num_classes=100)
    features = model.forward_features(images)   # [N, model.num_features]
    logits = model.get_classifier()(features)   # == model(images)

Registered names: ``resnet20``, ``resnet32``, ``resnet44``, ``resnet56``,
``resnet110``, ``se_resnet110``, ``wrn16_8``, ``wrn28_10``,
``resnext29_8x64d``, ``densenet_bc_100_12``, ``shake_shake_26_2x32d``,
``shake_shake_26_2x112d`` (CIFAR, 3x32x32) and ``digits_cnn`` (1x8x8).
"""

from .base import ISDANet, init_weights
from .cnn13 import CNN13
from .cosine_classifier import CosineClassifier
from .densenet_cifar import DenseNetBC
from .densenet_imagenet import ImageNetDenseNet
from .flops import count_macs, count_parameters
from .registry import create_model, is_model, list_models, model_entrypoint, register_model
from .resnet_cifar import CifarResNet
from .resnet_imagenet import ImageNetResNet
from .resnext_cifar import CifarResNeXt
from . import segmentation  # noqa: F401  (registers deeplabv3_resnet, pspnet_resnet)
from .resnext_imagenet import ImageNetResNeXt
from .shake_shake import ShakeShake, ShakeShakeResNet
from .small_cnn import DigitsCNN
from .wide_resnet import WideResNet

__all__ = [
    "CifarResNeXt",
    "CifarResNet",
    "CosineClassifier",
    "DenseNetBC",
    "DigitsCNN",
    "ISDANet",
    "ShakeShake",
    "ShakeShakeResNet",
    "WideResNet",
    "count_macs",
    "count_parameters",
    "create_model",
    "init_weights",
    "is_model",
    "list_models",
    "model_entrypoint",
    "register_model",
]
