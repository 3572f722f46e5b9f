"""Dilated ResNets with DeepLab-v3 (ASPP) and PSPNet heads for ISDA segmentation (Table 7).

Architecture (as in the toolbox the paper used, ``speedinghzl/pytorch-segmentation-toolbox``):

* backbone: a ResNet with the "deep stem" (three ``3 x 3`` convolutions, the first with
  stride 2, then a stride-2 max pool), ``layer1`` (stride 1), ``layer2`` (stride 2) and
  ``layer3`` / ``layer4`` dilated by 2 / 4 instead of strided: **output stride 8**; an
  ``H x W`` input gives ``ceil(H / 8) x ceil(W / 8)`` maps (769 -> 97);
* head: ASPP (DeepLab-v3: image pooling, ``1 x 1`` and three dilated ``3 x 3`` branches,
  rates 12/24/36) or a pyramid pooling module (PSPNet: bins 1, 2, 3, 6), each ending in
  conv-BN-ReLU-Dropout2d(0.1) to ``head_channels`` (512) channels: **the deep features**
  ``B x A x h x w`` with ``A = num_features = head_channels``;
* classifier: a ``1 x 1`` :class:`~torch.nn.Conv2d` with bias (``C x A x 1 x 1`` weight).
  A ``1 x 1`` convolution is a per-pixel linear layer; ``classifier.weight.flatten(1)`` is
  the ``C x A`` matrix ``W`` of the ISDA formulas (see
  :func:`torch_isda.segmentation.classifier_weight`);
* optional auxiliary head (deep supervision, the "DSN" head): conv3x3-BN-ReLU-Dropout on
  ``layer3`` to ``aux_channels`` features and its own ``1 x 1`` classifier.

Interface::

    model = create_model("deeplabv3_resnet", num_classes=19)          # ResNet-101, A = 512
    out = model.forward_all(images)   # SegmentationOutput(features, logits, aux_features, aux_logits)
    logits = model(images)            # B x C x h x w at feature resolution (the trainer upsamples)
    feats = model.forward_features(images)
    assert torch.allclose(model.get_classifier()(feats), logits)      # in eval mode

Tiny CPU-sized variant: ``create_model("pspnet_resnet", 5, depth=10, width=8,
head_channels=32, aux_channels=16)``. Batch norms are plain :class:`~torch.nn.BatchNorm2d`
(convert with ``nn.SyncBatchNorm.convert_sync_batchnorm`` for DDP). The ASPP image-pooling
branch normalizes a ``1 x 1`` map, so training needs more than one image per batch (per
process, or SyncBatchNorm). No pretrained weights are bundled.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .base import ISDANet, init_weights
from .registry import register_model

__all__ = [
    "ASPP",
    "DilatedResNet",
    "PyramidPooling",
    "SegmentationNet",
    "SegmentationOutput",
    "deeplabv3_resnet",
    "pspnet_resnet",
]

#: ``depth -> (block, blocks per stage)``; depth 10 is a tiny basic-block variant for tests.
RESNET_CONFIGS = {
    10: ("basic", (1, 1, 1, 1)),
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}


def _conv_bn_relu(cin: int, cout: int, k: int = 3, stride: int = 1, dilation: int = 1) -> list[nn.Module]:
    pad = dilation * (k // 2)
    return [
        nn.Conv2d(cin, cout, k, stride=stride, padding=pad, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    ]


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1, dilation: int = 1,
                 downsample: Optional[nn.Module] = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, padding=dilation, dilation=dilation, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1, dilation: int = 1,
                 downsample: Optional[nn.Module] = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class DilatedResNet(nn.Module):
    """ResNet backbone with output stride 8 (``layer3``/``layer4`` dilated by 2/4).

    Args:
        depth: 10, 18, 34, 50, 101 or 152 (see :data:`RESNET_CONFIGS`).
        width: channels of the first stage (64 in the standard ResNets); the stem has
            ``width, width, 2 * width`` channels.
        in_channels: input channels.

    ``forward`` returns ``(layer3, layer4)`` outputs with :attr:`aux_channels` and
    :attr:`out_channels` channels.
    """

    def __init__(self, depth: int = 101, width: int = 64, in_channels: int = 3) -> None:
        super().__init__()
        if depth not in RESNET_CONFIGS:
            raise ValueError(f"depth must be one of {sorted(RESNET_CONFIGS)}; got {depth}")
        if width < 1:
            raise ValueError(f"width must be positive; got {width}")
        kind, layers = RESNET_CONFIGS[depth]
        block = BasicBlock if kind == "basic" else Bottleneck
        self.stem = nn.Sequential(
            *_conv_bn_relu(in_channels, width, stride=2),
            *_conv_bn_relu(width, width),
            *_conv_bn_relu(width, 2 * width),
            nn.MaxPool2d(3, stride=2, padding=1),
        )
        self._cin = 2 * width
        self.layer1 = self._make_layer(block, width, layers[0])
        self.layer2 = self._make_layer(block, 2 * width, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 4 * width, layers[2], dilation=2)
        self.aux_channels = self._cin
        self.layer4 = self._make_layer(block, 8 * width, layers[3], dilation=4)
        self.out_channels = self._cin

    def _make_layer(self, block: type, planes: int, blocks: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self._cin != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self._cin, planes * block.expansion, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        mods = [block(self._cin, planes, stride, dilation, downsample)]
        self._cin = planes * block.expansion
        mods += [block(self._cin, planes, 1, dilation) for _ in range(1, blocks)]
        return nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.layer2(self.layer1(self.stem(x)))
        c3 = self.layer3(x)
        return c3, self.layer4(c3)


class ASPP(nn.Module):
    """DeepLab-v3 atrous spatial pyramid pooling, ending in the ``out_channels`` features."""

    def __init__(self, in_channels: int, out_channels: int = 512, inner_channels: Optional[int] = None,
                 dilations: Sequence[int] = (12, 24, 36), dropout: float = 0.1) -> None:
        super().__init__()
        inner = inner_channels or max(out_channels // 2, 1)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), *_conv_bn_relu(in_channels, inner, k=1))
        self.branches = nn.ModuleList(
            [nn.Sequential(*_conv_bn_relu(in_channels, inner, k=1))]
            + [nn.Sequential(*_conv_bn_relu(in_channels, inner, k=3, dilation=d)) for d in dilations]
        )
        self.project = nn.Sequential(
            *_conv_bn_relu(inner * (len(dilations) + 2), out_channels, k=1), nn.Dropout2d(dropout)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        pooled = F.interpolate(self.pool(x), size=(h, w), mode="bilinear", align_corners=False)
        return self.project(torch.cat([pooled] + [b(x) for b in self.branches], 1))


class PyramidPooling(nn.Module):
    """PSPNet pyramid pooling (bins 1, 2, 3, 6), then conv3x3-BN-ReLU-Dropout to ``out_channels``."""

    def __init__(self, in_channels: int, out_channels: int = 512, bins: Sequence[int] = (1, 2, 3, 6),
                 dropout: float = 0.1) -> None:
        super().__init__()
        branch = max(in_channels // len(bins), 1)
        self.stages = nn.ModuleList(
            [nn.Sequential(nn.AdaptiveAvgPool2d(b), *_conv_bn_relu(in_channels, branch, k=1)) for b in bins]
        )
        self.bottleneck = nn.Sequential(
            *_conv_bn_relu(in_channels + branch * len(bins), out_channels, k=3), nn.Dropout2d(dropout)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        pyramid = [F.interpolate(s(x), size=(h, w), mode="bilinear", align_corners=False) for s in self.stages]
        return self.bottleneck(torch.cat([x] + pyramid, 1))


class SegmentationOutput(NamedTuple):
    """Everything ISDA needs from one forward pass (``aux_*`` are ``None`` without the aux head)."""

    features: torch.Tensor
    logits: torch.Tensor
    aux_features: Optional[torch.Tensor]
    aux_logits: Optional[torch.Tensor]


class SegmentationNet(ISDANet):
    """Dilated ResNet + ASPP/PSP head + ``1 x 1`` classifier (+ optional auxiliary head).

    Args:
        num_classes: classes ``C``.
        head: ``"aspp"`` (DeepLab-v3) or ``"psp"`` (PSPNet).
        depth, width: backbone, see :class:`DilatedResNet`.
        head_channels: ``A``, channels of the deep features (512 in the paper's setup).
        aux: build the auxiliary (deep supervision) head on ``layer3``.
        aux_channels: channels of the auxiliary features (512 in the paper's setup).
        dropout: ``Dropout2d`` rate before each classifier.
        in_channels: input channels.

    Attributes:
        family: ``"segmentation"``.
        output_stride: 8.
        num_features: ``A`` (= ``head_channels``); ``aux_num_features`` for the aux head.
        classifier, aux_classifier: the ``1 x 1`` :class:`~torch.nn.Conv2d` classifiers.
    """

    family = "segmentation"
    default_input_size = (3, 769, 769)
    output_stride = 8

    def __init__(
        self,
        num_classes: int,
        head: str = "aspp",
        *,
        depth: int = 101,
        width: int = 64,
        head_channels: int = 512,
        aux: bool = True,
        aux_channels: int = 512,
        dropout: float = 0.1,
        in_channels: int = 3,
    ) -> None:
        super().__init__(in_channels)
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        if head not in ("aspp", "psp"):
            raise ValueError(f"head must be 'aspp' or 'psp'; got {head!r}")
        self.head_type = head
        self.num_classes = num_classes
        self.backbone = DilatedResNet(depth, width, in_channels)
        cin = self.backbone.out_channels
        if head == "aspp":
            self.head = ASPP(cin, head_channels, dropout=dropout)
        else:
            self.head = PyramidPooling(cin, head_channels, dropout=dropout)
        self.num_features = head_channels
        self.classifier = nn.Conv2d(head_channels, num_classes, 1)
        if aux:
            self.aux_head = nn.Sequential(
                *_conv_bn_relu(self.backbone.aux_channels, aux_channels, k=3), nn.Dropout2d(dropout)
            )
            self.aux_classifier = nn.Conv2d(aux_channels, num_classes, 1)
            self.aux_num_features = aux_channels
        else:
            self.aux_head = None
            self.aux_classifier = None
            self.aux_num_features = 0
        init_weights(self)
        for conv in (self.classifier, self.aux_classifier):
            if conv is not None:  # small classifier weights, as usual for segmentation heads
                nn.init.normal_(conv.weight, std=0.01)
                nn.init.zeros_(conv.bias)

    @property
    def has_aux(self) -> bool:
        return self.aux_head is not None

    def get_classifier(self) -> nn.Conv2d:  # type: ignore[override]
        """The final ``1 x 1`` convolution (``C x A x 1 x 1`` weight, bias)."""
        return self.classifier

    def get_aux_classifier(self) -> Optional[nn.Conv2d]:
        """The auxiliary head's ``1 x 1`` convolution (``None`` without aux head)."""
        return self.aux_classifier

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Per-pixel deep features ``B x A x ceil(H/8) x ceil(W/8)`` (the classifier's input)."""
        return self.head(self.backbone(x)[1])

    def forward_all(self, x: torch.Tensor, aux: Optional[bool] = None) -> SegmentationOutput:
        """One pass returning main (and, when ``aux`` — default: the head exists — auxiliary)
        features and logits, all at feature resolution."""
        c3, c4 = self.backbone(x)
        feats = self.head(c4)
        logits = self.classifier(feats)
        want_aux = self.has_aux if aux is None else bool(aux)
        if want_aux and not self.has_aux:
            raise ValueError("this model was built without an auxiliary head (aux=False)")
        if not want_aux:
            return SegmentationOutput(feats, logits, None, None)
        aux_feats = self.aux_head(c3)
        return SegmentationOutput(feats, logits, aux_feats, self.aux_classifier(aux_feats))

    def forward_aux(self, x: torch.Tensor) -> torch.Tensor:
        """Auxiliary logits ``B x C x h x w`` (deep supervision)."""
        if not self.has_aux:
            raise ValueError("this model was built without an auxiliary head (aux=False)")
        return self.aux_classifier(self.aux_head(self.backbone(x)[0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Main logits ``B x C x ceil(H/8) x ceil(W/8)`` (upsample to the label size yourself)."""
        return self.classifier(self.forward_features(x))


@register_model
def deeplabv3_resnet(
    num_classes: int,
    *,
    in_channels: int = 3,
    depth: int = 101,
    width: int = 64,
    head_channels: int = 512,
    aux: bool = True,
    aux_channels: int = 512,
    dropout: float = 0.1,
) -> SegmentationNet:
    """DeepLab-v3 (ASPP) on a dilated ResNet, output stride 8 (paper: ResNet-101, A = 512)."""
    return SegmentationNet(num_classes, "aspp", depth=depth, width=width, head_channels=head_channels,
                           aux=aux, aux_channels=aux_channels, dropout=dropout, in_channels=in_channels)


@register_model
def pspnet_resnet(
    num_classes: int,
    *,
    in_channels: int = 3,
    depth: int = 101,
    width: int = 64,
    head_channels: int = 512,
    aux: bool = True,
    aux_channels: int = 512,
    dropout: float = 0.1,
) -> SegmentationNet:
    """PSPNet (pyramid pooling) on a dilated ResNet, output stride 8 (paper: ResNet-101, A = 512)."""
    return SegmentationNet(num_classes, "psp", depth=depth, width=width, head_channels=head_channels,
                           aux=aux, aux_channels=aux_channels, dropout=dropout, in_channels=in_channels)
