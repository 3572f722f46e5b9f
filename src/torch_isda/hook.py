"""Drop-in ISDA for models that end in an ``nn.Linear`` classifier.

::

    criterion = torch_isda.attach(model, lambda0=0.5)   # finds model.fc / classifier / head
    ...
    loss = criterion(model(x), y)                        # in the existing loop

A forward hook on the classifier captures its input (the deep features) and output, so
the training loop keeps its usual ``criterion(logits, target)`` call.
"""

from __future__ import annotations

from typing import Optional

from torch import Tensor, nn

from .loss import ISDALoss

__all__ = ["find_classifier", "attach", "HookedISDALoss"]

_HEAD_NAMES = ("fc", "classifier", "head", "last_linear", "linear")


def _last_linear(module: nn.Module) -> Optional[nn.Linear]:
    if isinstance(module, nn.Linear):
        return module
    if isinstance(module, nn.Sequential):
        for child in reversed(list(module.children())):
            found = _last_linear(child)
            if found is not None:
                return found
    for name in ("fc", "linear", "proj"):
        child = getattr(module, name, None)
        if isinstance(child, nn.Linear):
            return child
    return None


def find_classifier(model: nn.Module) -> nn.Linear:
    """The final ``nn.Linear`` of a classification model.

    Looks, in order, at ``model.get_classifier()``, then at the attributes ``fc``,
    ``classifier``, ``head``, ``last_linear`` and ``linear`` (taking the last Linear of a
    ``Sequential`` such as torchvision's ``classifier``, or a nested ``head.fc`` as in timm).
    Raises ``ValueError`` if none is a Linear layer; pass ``layer=`` to :func:`attach` then.
    """
    getter = getattr(model, "get_classifier", None)
    if callable(getter):
        found = _last_linear(getter())
        if found is not None:
            return found
    for name in _HEAD_NAMES:
        child = getattr(model, name, None)
        if isinstance(child, nn.Module):
            found = _last_linear(child)
            if found is not None:
                return found
    raise ValueError(
        f"could not find the final nn.Linear of {type(model).__name__}: looked at get_classifier() and "
        f"the attributes {', '.join(_HEAD_NAMES)}; pass the layer explicitly, e.g. "
        "torch_isda.attach(model, layer=model.my_head)"
    )


class HookedISDALoss(nn.Module):
    """:class:`ISDALoss` fed by a forward hook on the classifier layer.

    Call it as ``criterion(logits, target)`` right after ``logits = model(x)``; the
    features are the captured input of ``layer``. Its ``state_dict`` holds the ISDA state
    only (not the layer's parameters). :meth:`remove` detaches the hook.
    """

    def __init__(self, layer: nn.Linear, isda: ISDALoss) -> None:
        super().__init__()
        if not isinstance(layer, nn.Linear):
            raise ValueError(f"layer must be an nn.Linear; got {type(layer).__name__}")
        self.isda = isda
        self._layer = [layer]  # a list, so the layer is not registered as a submodule
        self._features: Optional[Tensor] = None
        self._output: Optional[Tensor] = None
        self._handle = layer.register_forward_hook(self._capture)

    @property
    def layer(self) -> nn.Linear:
        return self._layer[0]

    def _capture(self, module: nn.Module, inputs, output: Tensor) -> None:
        self._features = inputs[0]
        self._output = output

    def set_progress(self, t_over_T: float) -> None:
        self.isda.set_progress(t_over_T)

    @property
    def estimator(self):
        return self.isda.estimator

    @property
    def ratio(self) -> float:
        return self.isda.ratio

    def forward(self, logits: Tensor, target: Tensor, ratio: Optional[float] = None) -> Tensor:
        features, output = self._features, self._output
        if features is None:
            raise RuntimeError(
                "no features captured: call the model (whose classifier this loss hooks) before the loss"
            )
        if logits is not output:
            raise RuntimeError(
                "the logits passed to the ISDA loss are not the output of the hooked classifier layer "
                f"({self.layer}): pass the model's output unchanged, right after the forward pass. If the "
                "model post-processes the classifier's output, call torch_isda.ISDALoss directly with "
                "(features, logits, target, weight)."
            )
        if features.dim() != 2:
            raise RuntimeError(
                f"the hooked layer's input has shape {tuple(features.shape)}; ISDA expects N x A features"
            )
        self._features = self._output = None  # release the graph references
        return self.isda(features, logits, target, self.layer.weight, ratio)

    def remove(self) -> None:
        """Remove the forward hook from the layer."""
        self._handle.remove()


def attach(
    model: nn.Module,
    lambda0: float = 0.5,
    kind: str = "full",
    *,
    layer: Optional[nn.Linear] = None,
    **loss_kwargs,
) -> HookedISDALoss:
    """Hook ISDA onto ``model``'s final linear layer and return the criterion.

    ``num_features`` and ``num_classes`` are read from the layer; ``loss_kwargs`` go to
    :class:`ISDALoss` (``constant_lambda``, ``label_smoothing``, ``ignore_index``, ...).
    The estimator's buffers are placed on the layer's device.
    """
    layer = find_classifier(model) if layer is None else layer
    if not isinstance(layer, nn.Linear):
        raise ValueError(f"layer must be an nn.Linear; got {type(layer).__name__}")
    isda = ISDALoss(layer.in_features, layer.out_features, lambda0, kind, **loss_kwargs)
    return HookedISDALoss(layer, isda.to(layer.weight.device)).to(layer.weight.device)
