"""A small timm-style model registry.

Factories are plain functions decorated with :func:`register_model`; the
function name is the model name.  Each factory takes ``num_classes`` plus
keyword arguments (always ``in_channels``, also accepted as timm's ``in_chans`` by
:func:`create_model`, and family-specific ones such as ``dropout``) and returns an :class:`~torch_isda.models.base.ISDANet`::

    @register_model
    def resnet32(num_classes: int, *, in_channels: int = 3, dropout: float = 0.0):
        return CifarResNet(32, num_classes, in_channels=in_channels, dropout=dropout)

    model = create_model("resnet32", num_classes=100)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from torch import nn

from ..utils.registry import Registry

__all__ = ["create_model", "is_model", "list_models", "model_entrypoint", "register_model"]

_F = TypeVar("_F", bound=Callable[..., nn.Module])

_MODELS = Registry("model")


def register_model(fn: _F) -> _F:
    """Register ``fn`` as the factory of the model named ``fn.__name__``.

    Names must be lower-case.  Registering a different function under a name
    that is already taken raises ``ValueError``; re-registering the same
    function (e.g. after a module reload) replaces the old entry.
    """
    name = fn.__name__
    if name != name.lower():
        raise ValueError(f"model names must be lower-case, got {name!r}")
    return _MODELS.register(name, fn)


def list_models(pattern: str | None = None) -> list[str]:
    """Return the sorted names of registered models, optionally filtered by an
    ``fnmatch`` wildcard ``pattern`` (e.g. ``"resnet*"``)."""
    return _MODELS.names(pattern)


def is_model(name: str) -> bool:
    """Return whether a model called ``name`` is registered."""
    return name in _MODELS


def model_entrypoint(name: str) -> Callable[..., nn.Module]:
    """Return the factory registered under ``name``.

    Raises:
        ValueError: if ``name`` is unknown; the message lists the available
            models and suggests the closest match.
    """
    return _MODELS.get(name)


def create_model(name: str, num_classes: int, **kwargs: object) -> nn.Module:
    """Build the registered model ``name`` with a ``num_classes``-way classifier.

    Args:
        name: Registered (lower-case) model name, see :func:`list_models`.
        num_classes: Output dimension of the final linear layer.
        **kwargs: Forwarded to the factory (``in_channels``, ``dropout``, ...).
            ``in_chans`` (timm's name) is accepted for ``in_channels`` by every
            model: the stem convolution takes that many input channels, e.g.
            ``create_model("resnet32", 10, in_chans=1)`` for 28x28 grey images.

    Raises:
        ValueError: if ``name`` is not registered, or ``in_chans`` and
            ``in_channels`` are both given with different values.
        TypeError: if the factory does not accept one of ``kwargs``.
    """
    factory = model_entrypoint(name)
    if "in_chans" in kwargs:
        in_chans = kwargs.pop("in_chans")
        if "in_channels" in kwargs and kwargs["in_channels"] != in_chans:
            raise ValueError(
                f"model {name!r}: in_chans={in_chans!r} and in_channels={kwargs['in_channels']!r} "
                f"disagree (they are two names of the input channel count; the training "
                f"harness sets in_channels from the dataset's images)"
            )
        kwargs["in_channels"] = in_chans
    return factory(num_classes=num_classes, **kwargs)
