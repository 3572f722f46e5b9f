"""Export a trained ResNet backbone for detection and instance segmentation (Tables 11-12).

The paper fine-tunes its ImageNet ResNet-50, trained with and without ISDA, as the backbone
of Faster / Mask / Cascade R-CNN in MMDetection. :func:`resnet_state_dict` turns the weights
of an ImageNet ResNet or ResNeXt of this package (:class:`~torch_isda.models.resnet_imagenet.
ImageNetResNet`), of a run directory, or of the official code's ImageNet checkpoints, into a
``state_dict`` with the key names of ``torchvision.models.resnet50`` (``conv1``, ``bn1``,
``layer1.0.conv1``, ..., ``layer1.0.downsample.0``, ``fc``), which timm's ResNets share
(``timm.create_model("resnet50")``): the ``format`` names the library it is checked for and
written for. The layout is checked key by key: anything else (a CIFAR ResNet, a DenseNet)
raises ``ValueError`` naming the keys that do not fit.

Such a file loads with ``torchvision.models.resnet50(num_classes=C).load_state_dict(sd)``
(``classifier=False`` drops ``fc``: then ``strict=False``, or
``model.backbone.body.load_state_dict(sd)`` in a torchvision detection model), with
``timm.create_model("resnet50", num_classes=C)``, and as MMDetection's
``init_cfg=dict(type="Pretrained", checkpoint=FILE)`` (which ignores ``fc``). See
docs/reproduce/table11-12-detection.md and ``isda export``.

Official checkpoints (``imagenet_DDP.py``) keep the model's weights under ``"state_dict"``
with the ``module.`` prefix of ``DistributedDataParallel`` and pickle the ISDA criterion
beside them; save ``checkpoint["state_dict"]`` alone with the official code (the criterion
statistics convert with :func:`torch_isda.compat.convert_official_state`), then export it
like a run.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Union

import torch
from torch import Tensor, nn

__all__ = [
    "EXPORT_FORMATS",
    "export_backbone",
    "load_weights",
    "resnet_architecture",
    "resnet_state_dict",
]

#: Libraries whose ResNet key names the export is written for (they coincide for ResNets).
EXPORT_FORMATS = ("torchvision", "timm")

#: Prefixes that wrappers add to every key: DataParallel / DDP, ``torch.compile``.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")

_BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
_BLOCK_KEY = re.compile(r"^layer([1-4])\.(\d+)\.(.+)$")

#: ``(block, stage depths, groups, width per group) -> name`` in torchvision and timm.
_ARCHITECTURES = {
    ("basic", (2, 2, 2, 2), 1, 64): "resnet18",
    ("basic", (3, 4, 6, 3), 1, 64): "resnet34",
    ("bottleneck", (3, 4, 6, 3), 1, 64): "resnet50",
    ("bottleneck", (3, 4, 23, 3), 1, 64): "resnet101",
    ("bottleneck", (3, 8, 36, 3), 1, 64): "resnet152",
    ("bottleneck", (3, 4, 6, 3), 32, 4): "resnext50_32x4d",
    ("bottleneck", (3, 4, 23, 3), 32, 8): "resnext101_32x8d",
    ("bottleneck", (3, 4, 6, 3), 1, 128): "wide_resnet50_2",
    ("bottleneck", (3, 4, 23, 3), 1, 128): "wide_resnet101_2",
}


def _strip_wrappers(state: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in state.items():
        name = str(key)
        stripped = True
        while stripped:
            stripped = False
            for prefix in _WRAPPER_PREFIXES:
                if name.startswith(prefix):
                    name, stripped = name[len(prefix):], True
        if name in out:
            raise ValueError(f"two entries map to {name!r} once wrapper prefixes are removed")
        out[name] = value
    return out


def _expected_keys(blocks: dict[int, list[int]], kind: str, downsample: set[tuple[int, int]]
                   ) -> set[str]:
    convs = 3 if kind == "bottleneck" else 2
    keys = {"conv1.weight", *(f"bn1.{p}" for p in _BN)}
    for stage, indices in blocks.items():
        for j in indices:
            base = f"layer{stage}.{j}."
            for c in range(1, convs + 1):
                keys.add(f"{base}conv{c}.weight")
                keys.update(f"{base}bn{c}.{p}" for p in _BN)
            if (stage, j) in downsample:
                keys.add(f"{base}downsample.0.weight")
                keys.update(f"{base}downsample.1.{p}" for p in _BN)
    return keys


def _problem(message: str, keys: Any) -> ValueError:
    shown = sorted(keys)
    more = f" and {len(shown) - 8} more" if len(shown) > 8 else ""
    return ValueError(f"not a torchvision/timm-layout ImageNet ResNet: {message}: "
                      f"{', '.join(shown[:8])}{more}")


def resnet_architecture(state: Mapping[str, Tensor]) -> dict[str, Any]:
    """Read the architecture of a torchvision-layout ResNet ``state`` (checking every key):
    ``{"block": "basic"|"bottleneck", "layers": (n1, n2, n3, n4), "groups", "width_per_group",
    "num_classes" (None without ``fc``), "name" (the torchvision / timm constructor, or None)}``.
    """
    state = _strip_wrappers(state)
    blocks: dict[int, set[int]] = {}
    for key in state:
        match = _BLOCK_KEY.match(key)
        if match:
            blocks.setdefault(int(match.group(1)), set()).add(int(match.group(2)))
    if sorted(blocks) != [1, 2, 3, 4]:
        raise _problem(f"expected the four stages layer1..layer4, found "
                       f"{['layer%d' % s for s in sorted(blocks)] or 'none'}; first keys",
                       list(state)[:8])
    depth = {s: sorted(ix) for s, ix in blocks.items()}
    for s, ix in depth.items():
        if ix != list(range(len(ix))):
            raise _problem(f"the blocks of layer{s} are not numbered 0..{len(ix) - 1}",
                           [f"layer{s}.{j}" for j in ix])
    kind = "bottleneck" if "layer1.0.conv3.weight" in state else "basic"
    downsample = {(int(m.group(1)), int(m.group(2))) for m in map(_BLOCK_KEY.match, state)
                  if m and m.group(3).startswith("downsample.")}
    expected = _expected_keys(depth, kind, downsample)
    extra = set(state) - expected - {"fc.weight", "fc.bias"}
    if extra:
        raise _problem("unexpected keys", extra)
    missing = expected - set(state)
    if missing:
        raise _problem("missing keys", missing)
    if ("fc.weight" in state) != ("fc.bias" in state):
        raise _problem("the classifier needs both", {"fc.weight", "fc.bias"})
    conv2 = state["layer1.0.conv2.weight"]
    width = int(conv2.shape[0])
    groups = width // int(conv2.shape[1]) if kind == "bottleneck" else 1
    width_per_group = width // groups if kind == "bottleneck" else 64
    layers = tuple(len(depth[s]) for s in (1, 2, 3, 4))
    fc = state.get("fc.weight")
    return {
        "block": kind, "layers": layers, "groups": groups, "width_per_group": width_per_group,
        "num_classes": None if fc is None else int(fc.shape[0]),
        "name": _ARCHITECTURES.get((kind, layers, groups, width_per_group)),
    }


def resnet_state_dict(source: Union[nn.Module, Mapping[str, Any]], format: str = "torchvision",
                      *, classifier: bool = True) -> dict[str, Tensor]:
    """The weights of ``source`` with the key names of ``format``'s ResNets, on the CPU.

    Args:
        source: a model (e.g. ``torch_isda.models.create_model("resnet50", ...)``), its
            ``state_dict``, a checkpoint of ``isda train`` (its ``"model"`` entry is used) or
            of the official code (``"state_dict"``); ``module.`` / ``_orig_mod.`` prefixes
            are removed.
        format: one of :data:`EXPORT_FORMATS`.
        classifier: keep ``fc`` (for a round trip of the classifier); ``False`` writes the
            backbone alone.

    Raises:
        ValueError: an unknown format, or weights that are not a torchvision-layout ResNet
            (the message names the keys that do not fit).
    """
    return _exported(source, format, classifier)[0]


def _exported(source: Union[nn.Module, Mapping[str, Any]], format: str, classifier: bool
              ) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """:func:`resnet_state_dict` and :func:`resnet_architecture` of ``source``, checked once."""
    if format not in EXPORT_FORMATS:
        raise ValueError(f"unknown export format {format!r}; choose one of "
                         f"{', '.join(EXPORT_FORMATS)}")
    if isinstance(source, nn.Module):
        state: Mapping[str, Any] = source.state_dict()
    elif isinstance(source, Mapping):
        state = source
        for entry in ("model", "state_dict"):  # a checkpoint: ours, the official code's
            if isinstance(state.get(entry), Mapping):
                state = state[entry]
                break
    else:
        raise TypeError(f"expected a module or a state dict, got {type(source).__name__}")
    state = _strip_wrappers(state)
    not_tensors = [k for k, v in state.items() if not isinstance(v, Tensor)]
    if not_tensors:
        raise _problem("entries that are not tensors", not_tensors)
    info = resnet_architecture(state)  # checks the layout
    if not classifier:
        info["num_classes"] = None
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in state.items()
            if classifier or not k.startswith("fc.")}, info


def load_weights(path: Union[str, os.PathLike[str]]) -> Mapping[str, Any]:
    """The weights stored at ``path``: a run directory of ``isda train`` (its
    ``checkpoint.pt``) or a file saved with ``torch.save`` (a state dict or a checkpoint
    holding one), loaded with ``weights_only=True``."""
    from ..train.checkpoint import CHECKPOINT_NAME, load_checkpoint

    path = Path(path)
    if path.is_dir():
        return load_checkpoint(path / CHECKPOINT_NAME)
    if not path.is_file():
        raise FileNotFoundError(f"no run directory or weights file at '{path}'")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001  (pickle errors have many types)
        raise ValueError(
            f"'{path}' holds more than tensors ({type(err).__name__}: {str(err)[:200]}); an "
            f"official checkpoint pickles its ISDA criterion: save checkpoint['state_dict'] "
            f"alone with the official code and export that file") from None


def export_backbone(source: Union[str, os.PathLike[str], nn.Module, Mapping[str, Any]],
                    out: Union[str, os.PathLike[str]], format: str = "torchvision", *,
                    classifier: bool = True) -> dict[str, Any]:
    """Write :func:`resnet_state_dict` of ``source`` (a run directory or weights file, see
    :func:`load_weights`, or a model / state dict) to ``out`` atomically, with
    ``torch.save``; returns :func:`resnet_architecture` of it plus ``"keys"``, ``"format"``
    and ``"out"``. Nothing is written when the weights do not fit."""
    from ..train.checkpoint import atomic_write

    if isinstance(source, (str, os.PathLike)):
        source = load_weights(source)
    state, info = _exported(source, format, classifier)
    with atomic_write(out, "wb") as f:  # a plain state dict, as torchvision / timm load it
        torch.save(state, f)
    info.update(keys=len(state), format=format, out=str(out))
    return info

