"""Hugging Face ``transformers`` integration: ISDA for sequence classification.

::

    from torch_isda.integrations.transformers import ISDATrainer

    model = AutoModelForSequenceClassification.from_pretrained("bert-base-uncased", num_labels=2)
    trainer = ISDATrainer(model=model, args=args, train_dataset=train, eval_dataset=val,
                          isda_lambda0=0.5, isda_kind="full")
    trainer.train()

The deep feature is the input of the classification head's final ``nn.Linear`` (BERT's
``classifier`` applied to the dropped-out pooled output; the ``out_proj`` of RoBERTa /
ELECTRA heads; DistilBERT's ``classifier`` after ``pre_classifier``), captured with a forward
hook (:func:`torch_isda.attach`), so the model's code is untouched. The head must return
its output as the model's ``logits`` unchanged (true for the ``*ForSequenceClassification``
models that classify one pooled vector; not for decoder models that pick the last token's
logits, such as ``LlamaForSequenceClassification``: use :class:`torch_isda.ISDALoss`
directly there).

* :func:`isda_compute_loss` computes the ISDA loss of a batch given a criterion, for custom
  loops or other ``Trainer`` subclasses;
* :class:`ISDATrainer` overrides ``compute_loss`` (training only; evaluation keeps the
  model's own cross-entropy), drives ``lambda = lambda0 * t / T`` with ``t / T =
  state.global_step / state.max_steps``, saves the estimator next to every checkpoint
  (``isda_state.pt`` in ``checkpoint-N/``) and restores it on
  ``train(resume_from_checkpoint=...)``.

Single-label classification only (integer ``labels``). Under ``torch.distributed`` the
estimator all-gathers each batch (``sync=True``); ``torch.nn.DataParallel`` (several GPUs in
one process) is not supported by the hook.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Optional, Union

import torch
from torch import nn

from ..hook import HookedISDALoss, attach, find_classifier

try:
    from transformers import Trainer, TrainerCallback
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint
except ImportError as err:  # pragma: no cover - exercised only without transformers
    raise ImportError(
        "torch_isda.integrations.transformers needs the `transformers` package: "
        "pip install 'torch-isda[transformers]'"
    ) from err

__all__ = ["ISDATrainer", "find_sequence_classifier", "isda_compute_loss", "ISDA_STATE_NAME"]

ISDA_STATE_NAME = "isda_state.pt"
_HEAD_ATTRS = ("classifier", "score", "classification_head", "logits_proj")


def find_sequence_classifier(model: nn.Module) -> nn.Linear:
    """The final ``nn.Linear`` of a ``*ForSequenceClassification`` model's head.

    Looks at ``model.classifier`` / ``score`` / ``classification_head`` / ``logits_proj``:
    the layer itself when it is a Linear, else the last Linear registered in the head
    (``out_proj`` of RoBERTa-style heads); falls back to :func:`torch_isda.find_classifier`.
    """
    for name in _HEAD_ATTRS:
        head = getattr(model, name, None)
        if isinstance(head, nn.Linear):
            return head
        if isinstance(head, nn.Module):
            linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
            if linears:
                return linears[-1]
    return find_classifier(model)


def _logits_of(outputs: Any) -> torch.Tensor:
    if isinstance(outputs, dict) or hasattr(outputs, "keys"):
        if "logits" in outputs:
            return outputs["logits"]
    if isinstance(outputs, (tuple, list)):
        return outputs[0]
    logits = getattr(outputs, "logits", None)
    if logits is None:
        raise ValueError(f"cannot find the logits in the model's output of type {type(outputs).__name__}")
    return logits


def isda_compute_loss(
    criterion: HookedISDALoss,
    model: nn.Module,
    inputs: Dict[str, Any],
    return_outputs: bool = False,
    label_key: str = "labels",
):
    """ISDA loss of a batch of a sequence classification model.

    The labels are taken out of ``inputs`` (so the model does not compute its own loss),
    the model is called on the rest, and ``criterion`` (hooked onto the model's head, e.g.
    ``attach(model, layer=find_sequence_classifier(model))``) returns the ISDA bound of the
    logits. Returns the loss, or ``(loss, outputs)`` when ``return_outputs``.
    """
    inputs = dict(inputs)
    labels = inputs.pop(label_key, None)
    if labels is None:
        raise ValueError(f"ISDA needs class labels: the batch has no {label_key!r} entry")
    if labels.is_floating_point() or labels.dim() != 1:
        raise ValueError(
            "ISDA supports single-label classification with 1-D integer labels; got labels of shape "
            f"{tuple(labels.shape)} and dtype {labels.dtype}"
        )
    outputs = model(**inputs)
    loss = criterion(_logits_of(outputs), labels)
    return (loss, outputs) if return_outputs else loss


class _SaveISDAState(TrainerCallback):
    """Writes the estimator next to each checkpoint the Trainer saves."""

    def __init__(self, trainer: "ISDATrainer") -> None:
        self._trainer = trainer

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            folder = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
            if os.path.isdir(folder):
                self._trainer.save_isda_state(folder)
        return control


class ISDATrainer(Trainer):
    """:class:`transformers.Trainer` with the ISDA loss for sequence classification.

    Args:
        *args, **kwargs: as for :class:`transformers.Trainer`.
        isda_lambda0: the paper's ``lambda_0``.
        isda_kind: covariance layout (``"full"``, ``"diagonal"``, ``"lowrank"``...).
        isda_layer: the head's final ``nn.Linear`` (found by :func:`find_sequence_classifier`
            when ``None``).
        isda_kwargs: more arguments for :class:`torch_isda.ISDALoss` (``constant_lambda``,
            ``rank``, ``label_smoothing``, ``dtype``, ``sync``...).

    Attributes:
        isda: the :class:`~torch_isda.HookedISDALoss`; ``isda.estimator`` holds the statistics.
    """

    # compute_loss returns a per-batch mean: let the Trainer divide by the accumulation steps
    loss_is_scaled_for_ga = False

    def __init__(
        self,
        *args: Any,
        isda_lambda0: float = 0.5,
        isda_kind: str = "full",
        isda_layer: Optional[nn.Linear] = None,
        isda_kwargs: Optional[Dict[str, Any]] = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        layer = find_sequence_classifier(self.model) if isda_layer is None else isda_layer
        self.isda = attach(self.model, isda_lambda0, isda_kind, layer=layer, **(isda_kwargs or {}))
        # older versions decide the accumulation scaling from this flag; labels are not
        # passed to the model, so it gets no loss kwargs either
        self.model_accepts_loss_kwargs = False
        self.add_callback(_SaveISDAState(self))

    # ------------------------------------------------------------------ loss

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if not model.training:  # evaluation / prediction: the model's own cross-entropy
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        device = self.isda.layer.weight.device
        if self.isda.estimator.mean.device != device:
            self.isda.to(device)
        self.isda.train()
        max_steps = getattr(self.state, "max_steps", 0) or 0
        if max_steps > 0:
            self.isda.set_progress(min(self.state.global_step / max_steps, 1.0))
        return isda_compute_loss(self.isda, model, inputs, return_outputs)

    # ------------------------------------------------------------------ checkpoints

    def save_isda_state(self, folder: str) -> str:
        """Save the ISDA state (estimator and progress) as ``folder/isda_state.pt``."""
        path = os.path.join(folder, ISDA_STATE_NAME)
        torch.save({k: v.detach().cpu() for k, v in self.isda.state_dict().items()}, path)
        return path

    def load_isda_state(self, folder: str) -> bool:
        """Load ``folder/isda_state.pt`` if present; returns whether it was."""
        path = os.path.join(folder, ISDA_STATE_NAME)
        if not os.path.isfile(path):
            return False
        state = torch.load(path, map_location=self.isda.estimator.mean.device, weights_only=True)
        self.isda.load_state_dict(state)
        return True

    def train(self, resume_from_checkpoint: Union[str, bool, None] = None, *args: Any, **kwargs: Any):
        folder = resume_from_checkpoint
        if folder is True:
            folder = get_last_checkpoint(self.args.output_dir)
        if isinstance(folder, str):
            self.load_isda_state(folder)
        return super().train(resume_from_checkpoint, *args, **kwargs)
