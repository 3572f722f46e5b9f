"""Drop-in ISDA for models that end in an ``nn.Linear`` classifier.

::

    criterion = torch_isda.attach(model, lambda0=0.5)   # finds model.fc / classifier / head
    ...
    loss = criterion(model(x), y)                        # in the existing loop

A forward hook on the classifier captures its input (the deep features) and output, so
the training loop keeps its usual ``criterion(logits, target)`` call.

Finding the classifier. :func:`find_classifier` looks at the usual attribute names
(``get_classifier()``, ``fc``, ``classifier``, ``head``, ...). When none of them is a Linear
layer (torchvision's ``VisionTransformer`` keeps its classifier in ``heads.head``; custom
models use any name), :func:`attach` hooks *every* ``nn.Linear`` of the model and, at the
first ``criterion(logits, target)`` call, keeps the one whose output *is* the logits,
removing the other hooks. The ISDA state (whose shapes depend on that layer) is created
then; :meth:`HookedISDALoss.set_progress` and ``load_state_dict`` given before are applied
to it. Models whose logits are not the unchanged output of one ``nn.Linear`` get a clear
error at that call.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

from torch import Tensor, nn

from .loss import ISDALoss
from .options import ISDAOptions, merge_options

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

    Modes. The criterion follows the model: it trains (folds the features into the
    statistics and returns the ISDA bound) only while both the hooked layer and the
    criterion are in training mode (``model.train()``; ``criterion.eval()`` turns it off too),
    and with grad mode on. In evaluation mode it returns the plain cross-entropy of the logits.
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
        self._follow_mode()
        return self.isda(features, logits, target, self.layer.weight, ratio)

    def _follow_mode(self) -> None:
        """Train only when both this criterion and the hooked layer (the model) train."""
        mode = self.training and self.layer.training
        if self.isda.training != mode:
            self.isda.train(mode)

    def remove(self) -> None:
        """Remove the forward hook from the layer."""
        self._handle.remove()


class _DiscoveredISDALoss(HookedISDALoss):
    """A :class:`HookedISDALoss` whose classifier is found at the first loss call.

    Every ``nn.Linear`` of ``model`` is hooked; each forward pass of the model records the
    (input, output) of the Linear layers that return an ``N x C`` matrix. The first call
    ``criterion(logits, target)`` keeps the layer whose output is ``logits`` (identity, not
    equality), removes every other hook and builds the :class:`ISDALoss` for that layer.
    """

    def __init__(self, model: nn.Module, options: ISDAOptions) -> None:
        nn.Module.__init__(self)
        self.isda: Optional[ISDALoss] = None
        self._model_name = type(model).__name__
        self._options = options
        self._layer: List[nn.Linear] = []
        self._features = self._output = None
        self._records: List[Tuple[nn.Linear, Tensor, Tensor]] = []
        self._pending_progress: Optional[float] = None
        self._pending_state: Optional[Dict[str, Tensor]] = None
        # model.modules() yields each module once, shared ones included
        self._handles = [m.register_forward_hook(self._record) for m in model.modules() if isinstance(m, nn.Linear)]
        # a new forward pass of the model forgets the previous one's records
        self._handles.append(model.register_forward_pre_hook(lambda module, args: self._records.clear()))

    def _record(self, module: nn.Module, inputs, output) -> None:
        if isinstance(output, Tensor) and output.dim() == 2 and inputs and isinstance(inputs[0], Tensor):
            self._records.append((module, inputs[0], output))

    @property
    def layer(self) -> nn.Linear:
        if not self._layer:
            raise RuntimeError(
                f"the classifier of {self._model_name} is found at the first loss call: call the model "
                "and then the loss once"
            )
        return self._layer[0]

    @property
    def resolved(self) -> bool:
        """Whether the classifier layer has been identified (after the first loss call)."""
        return bool(self._layer)

    def _resolve(self, logits: Tensor) -> None:
        if not self._records:
            raise RuntimeError(
                "no features captured: call the model (whose classifier this loss hooks) before the loss"
            )
        found = [(m, x, y) for m, x, y in self._records if y is logits]
        if not found:
            raise ValueError(
                f"could not find the final nn.Linear of {self._model_name}: the logits passed to the loss are "
                "not the unchanged output of any of its nn.Linear layers. Pass the model's output unchanged, "
                "pass the layer explicitly (torch_isda.attach(model, layer=model.my_head)), or call "
                "torch_isda.ISDALoss directly with (features, logits, target, weight)."
            )
        layer, features, output = found[-1]
        for handle in self._handles:
            handle.remove()
        self._records = []
        isda = ISDALoss(layer.in_features, layer.out_features, options=self._options)
        self.isda = isda.to(layer.weight.device)
        if self._pending_state is not None:
            super().load_state_dict(self._pending_state)
            self._pending_state = None
        if self._pending_progress is not None:
            self.isda.set_progress(self._pending_progress)
        self._layer = [layer]
        self._handle = layer.register_forward_hook(self._capture)
        self._features, self._output = features, output

    def set_progress(self, t_over_T: float) -> None:
        if self.isda is None:
            self._pending_progress = ISDALoss.checked_progress(t_over_T)
        else:
            self.isda.set_progress(t_over_T)

    @property
    def estimator(self):
        if self.isda is None:
            raise RuntimeError(
                f"the ISDA statistics of {self._model_name} are created at the first loss call, once its "
                "classifier is known"
            )
        return self.isda.estimator

    @property
    def ratio(self) -> float:
        if self.isda is not None:
            return self.isda.ratio
        return ISDALoss.scheduled_ratio(self._options.lambda0, self._pending_progress or 0.0,
                                        self._options.constant_lambda)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        if self.isda is None:  # applied when the classifier is found
            self._pending_state = {k: v.detach().clone() for k, v in state_dict.items()}
            return super().load_state_dict({}, strict=False)  # nothing to report yet
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def forward(self, logits: Tensor, target: Tensor, ratio: Optional[float] = None) -> Tensor:
        if self.isda is None:
            self._resolve(logits)
        return super().forward(logits, target, ratio)

    def remove(self) -> None:
        if self.isda is None:
            for handle in self._handles:
                handle.remove()
            self._records = []
        else:
            super().remove()


def attach(
    model: nn.Module,
    lambda0: Optional[float] = None,
    kind: Optional[str] = None,
    *,
    layer: Optional[nn.Linear] = None,
    options: Optional[ISDAOptions] = None,
    **option_values: Any,
) -> HookedISDALoss:
    """Hook ISDA onto ``model``'s final linear layer and return the criterion.

    ``num_features`` and ``num_classes`` are read from the layer; ``lambda0`` (default 0.5),
    ``kind`` (default ``"full"``), ``options`` and ``option_values`` are the options of
    :class:`ISDALoss` (an :class:`~torch_isda.ISDAOptions` and/or its fields by keyword:
    ``total_steps``, ``constant_lambda``, ``label_smoothing``, ``ignore_index``,
    ``class_prior``, ``ldam_counts``, ``validate``, ...), checked here. The estimator's
    buffers are placed on the layer's device.

    With ``total_steps=N`` (or ``epochs=`` and ``steps_per_epoch=``) the criterion advances
    ``lambda = lambda0 * t / T`` by itself at each training call; otherwise call
    ``criterion.set_progress(epoch / epochs)``. With ``class_prior=`` / ``ldam_counts=`` the
    criterion adds the offsets to the layer's raw output itself: pass the model's logits
    unchanged.

    The layer is ``layer``, else :func:`find_classifier`'s answer; when the named attributes
    hold no Linear layer, every ``nn.Linear`` of the model is hooked and the one whose output
    is the logits is kept at the first loss call (see the module's documentation). Raises
    ``ValueError`` if the model has no ``nn.Linear`` at all.
    """
    opts = merge_options(options, ISDALoss.default_options, lambda0=lambda0, kind=kind, **option_values)
    if layer is None:
        try:
            layer = find_classifier(model)
        except ValueError:
            if not any(isinstance(m, nn.Linear) for m in model.modules()):
                raise
            return _DiscoveredISDALoss(model, opts)
    if not isinstance(layer, nn.Linear):
        raise ValueError(f"layer must be an nn.Linear; got {type(layer).__name__}")
    isda = ISDALoss(layer.in_features, layer.out_features, options=opts)
    return HookedISDALoss(layer, isda.to(layer.weight.device)).to(layer.weight.device)
