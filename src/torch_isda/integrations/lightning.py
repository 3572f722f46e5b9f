"""PyTorch Lightning integration: ISDA as a :class:`Callback`.

::

    import lightning.pytorch as L
    from torch_isda.integrations.lightning import ISDACallback

    class LitClassifier(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = torch_isda.models.create_model("resnet32", num_classes=100)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return self.isda(self.model(x), y)      # set by the callback

        def validation_step(self, batch, batch_idx):
            x, y = batch
            self.log("val_loss", F.cross_entropy(self.model(x), y))

    trainer = L.Trainer(max_epochs=160, callbacks=[ISDACallback(lambda0=0.5)])

The callback, at ``setup``, hooks ISDA onto the module's final ``nn.Linear`` with
:func:`torch_isda.attach` and stores the criterion as ``pl_module.isda`` (the attribute name
is configurable). The criterion is *not* registered as a submodule, so the module's own
``state_dict`` and ``load_from_checkpoint`` are unchanged; instead:

* the strength follows ``lambda = lambda0 * t / T`` with ``t / T = global_step /
  estimated_stepping_batches`` (``progress="step"``, default) or ``current_epoch /
  max_epochs`` (``progress="epoch"``, the paper's epoch schedule), set before every
  training batch;
* the estimator's statistics are saved in Lightning checkpoints
  (:meth:`on_save_checkpoint`, under ``checkpoint["torch_isda"]``) and restored when a run
  resumes with ``trainer.fit(..., ckpt_path=...)`` (:meth:`on_load_checkpoint`);
* the criterion follows the module's device and is put in eval mode during validation
  (no estimator updates; ``self.isda(self.model(x), y)`` then returns the plain
  cross-entropy, a validation loss) and back in training mode for training.

The class derives from ``lightning.pytorch.Callback`` and, when installed too, from
``pytorch_lightning.Callback``, so either package's ``Trainer`` accepts it.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Union

import torch
from torch import nn

from ..hook import HookedISDALoss, attach, find_classifier

__all__ = ["ISDACallback"]


def _callback_bases() -> tuple:
    bases = []
    try:
        import lightning.pytorch as _lightning

        bases.append(_lightning.Callback)
    except ImportError:
        pass
    try:
        import pytorch_lightning as _pytorch_lightning

        if _pytorch_lightning.Callback not in bases:
            bases.append(_pytorch_lightning.Callback)
    except ImportError:
        pass
    if not bases:
        raise ImportError(
            "torch_isda.integrations.lightning needs PyTorch Lightning: pip install 'torch-isda[lightning]' "
            "(the `lightning` or `pytorch_lightning` package)"
        )
    return tuple(bases)


_MODEL_ATTRS = ("model", "net", "network", "backbone", "classifier_model")


def _resolve_layer(pl_module: nn.Module, layer: Union[None, str, nn.Linear, Callable]) -> nn.Linear:
    if isinstance(layer, nn.Module):
        found = layer
    elif isinstance(layer, str):
        found = pl_module.get_submodule(layer)
    elif callable(layer):
        found = layer(pl_module)
    else:
        try:
            return find_classifier(pl_module)
        except ValueError:
            pass
        for name in _MODEL_ATTRS:
            child = getattr(pl_module, name, None)
            if isinstance(child, nn.Module):
                try:
                    return find_classifier(child)
                except ValueError:
                    continue
        raise ValueError(
            f"ISDACallback could not find the final nn.Linear of {type(pl_module).__name__} (looked at the "
            f"module and its attributes {', '.join(_MODEL_ATTRS)}); pass layer='model.fc' (a submodule "
            "path), the layer itself, or a function of the LightningModule returning it"
        )
    if not isinstance(found, nn.Linear):
        raise ValueError(f"the ISDA layer must be an nn.Linear; got {type(found).__name__}")
    return found


class ISDACallback(*_callback_bases()):
    """Add ISDA to a LightningModule whose model ends in an ``nn.Linear`` head.

    Args:
        lambda0: the paper's ``lambda_0``.
        kind: covariance layout (``"full"``, ``"diagonal"``, ``"lowrank"``, ...).
        layer: the classifier: ``None`` (found on the module or its ``model`` / ``net`` /
            ``network`` / ``backbone`` attribute), a submodule path such as ``"model.fc"``, the
            layer, or a function of the LightningModule returning it.
        attribute: name under which the criterion is set on the LightningModule.
        progress: ``"step"`` (``global_step / estimated_stepping_batches``) or ``"epoch"``
            (``current_epoch / max_epochs``).
        checkpoint_key: key of the ISDA state in Lightning checkpoints.
        **loss_kwargs: passed to :class:`torch_isda.ISDALoss` (``constant_lambda``, ``rank``,
            ``label_smoothing``, ``ignore_index``, ``dtype``, ``sync``...).

    Attributes:
        criterion: the :class:`~torch_isda.HookedISDALoss` (``None`` before ``setup``).
    """

    def __init__(
        self,
        lambda0: float = 0.5,
        kind: str = "full",
        *,
        layer: Union[None, str, nn.Linear, Callable[[Any], nn.Linear]] = None,
        attribute: str = "isda",
        progress: str = "step",
        checkpoint_key: str = "torch_isda",
        **loss_kwargs: Any,
    ) -> None:
        super().__init__()
        if progress not in ("step", "epoch"):
            raise ValueError(f"progress must be 'step' or 'epoch'; got {progress!r}")
        self.lambda0 = float(lambda0)
        self.kind = kind
        self.layer = layer
        self.attribute = attribute
        self.progress = progress
        self.checkpoint_key = checkpoint_key
        self.loss_kwargs = loss_kwargs
        self.criterion: Optional[HookedISDALoss] = None
        self._pending_state: Optional[Dict[str, torch.Tensor]] = None

    @property
    def state_key(self) -> str:
        return f"ISDACallback[{self.attribute}]"

    # ------------------------------------------------------------------ set-up

    def setup(self, trainer, pl_module, stage: str) -> None:
        if self.criterion is None:
            layer = _resolve_layer(pl_module, self.layer)
            self.criterion = attach(pl_module, self.lambda0, self.kind, layer=layer, **self.loss_kwargs)
        # a plain attribute, not a submodule: the module's state_dict stays the model's
        object.__setattr__(pl_module, self.attribute, self.criterion)
        if self._pending_state is not None:
            self._restore(self._pending_state)

    def teardown(self, trainer, pl_module, stage: str) -> None:
        # keep the criterion (and its statistics) for a later fit/validate; only drop the
        # reference to features captured last
        if self.criterion is not None:
            self.criterion._features = self.criterion._output = None

    def _follow_device(self) -> None:
        device = self.criterion.layer.weight.device
        if self.criterion.estimator.mean.device != device:
            self.criterion.to(device)

    def _set_progress(self, trainer) -> None:
        if self.progress == "step":
            total = trainer.estimated_stepping_batches
            t_over_T = trainer.global_step / total if total and total != float("inf") else 0.0
        else:
            epochs = trainer.max_epochs
            t_over_T = trainer.current_epoch / epochs if epochs and epochs > 0 else 0.0
        self.criterion.set_progress(min(max(float(t_over_T), 0.0), 1.0))

    # ------------------------------------------------------------------ training / validation

    def on_fit_start(self, trainer, pl_module) -> None:
        self._follow_device()

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._follow_device()
        self.criterion.train()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.criterion.train()
        self._set_progress(trainer)

    def on_validation_start(self, trainer, pl_module) -> None:
        if self.criterion is not None:
            self._follow_device()
            self.criterion.eval()

    def on_validation_end(self, trainer, pl_module) -> None:
        if self.criterion is not None and trainer.training:
            self.criterion.train()

    # ------------------------------------------------------------------ checkpoints

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: Dict[str, Any]) -> None:
        if self.criterion is not None:
            checkpoint[self.checkpoint_key] = {
                k: v.detach().cpu().clone() for k, v in self.criterion.state_dict().items()
            }

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: Dict[str, Any]) -> None:
        state = checkpoint.get(self.checkpoint_key)
        if state is None:
            return
        if self.criterion is None:  # restored before setup: apply it there
            self._pending_state = state
        else:
            self._restore(state)

    def _restore(self, state: Dict[str, torch.Tensor]) -> None:
        device = self.criterion.estimator.mean.device
        self.criterion.load_state_dict({k: v.to(device) for k, v in state.items()})
        self._pending_state = None
