"""The :class:`Task` protocol: what the :class:`~torch_isda.train.engine.Engine` asks of a task.

A task is built with ``Task(config, engine)`` (``config`` a
:class:`~torch_isda.train.config.ResolvedConfig`; ``engine`` gives ``device``, ``context``
(the process group or ``None``), ``autocast()`` and ``log()``). It answers the
:data:`PROTOCOL`; anything else is optional, with a default here: the :data:`OPTIONAL_HOOKS`
and the engine's named events (:class:`~torch_isda.train.engine.Callback`), which reach the
task first. The methods are tabulated in docs/architecture.md ("Tasks").
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar, Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from ..reporting import final_window, window_text

__all__ = ["OPTIONAL_HOOKS", "PROTOCOL", "StepOut", "Task"]

#: What the engine and a comparison ask of every task (``Task`` gives defaults for some).
PROTOCOL = ("resolve", "build", "param_groups", "train_step", "epoch_values", "evaluate",
            "log_values", "summary", "state_dict", "load_state_dict", "result_fields",
            "write_comparison")
#: Optional hooks (defaults below) that one task or two answer differently.
OPTIONAL_HOOKS = ("prepare_distributed", "generators", "final_window", "summary_tail",
                  "resolved_fields", "result_line", "result_warning", "run_summary")


@dataclasses.dataclass
class StepOut:
    """One training step's outcome.

    ``loss``: the logged loss (a device scalar); ``n``: the samples it averages on this
    rank; ``logs``: device scalars the engine sums over the epoch (e.g. ``wrong``);
    ``backward``: the loss whose gradient is taken when it differs (uneven shards);
    ``features``/``logits``/``target``: for ``on_step`` callbacks.
    """

    loss: Tensor
    n: int
    logs: dict[str, Tensor]
    backward: Optional[Tensor] = None
    features: Optional[Tensor] = None
    logits: Optional[Tensor] = None
    target: Optional[Tensor] = None


class Task:
    """Base class with the defaults of the protocol (see the module docstring)."""

    #: The lr schedule counts iterations (segmentation) instead of epochs.
    schedule_per_step: ClassVar[bool] = False

    model: nn.Module
    criterion: nn.Module
    train_batches: Any
    data_generator: Optional[torch.Generator] = None

    def __init__(self, config: Any, engine: Any) -> None:
        self.config = config
        self.engine = engine
        self.device: torch.device = engine.device
        self.context = engine.context

    @staticmethod
    def resolve(config: Any) -> Any:
        raise NotImplementedError

    def build(self) -> None:
        raise NotImplementedError

    def log(self, message: str) -> None:
        self.engine.log(message)

    def load_dataset(self, usable: Callable[[Any], bool], supported: str) -> Any:
        """The configured dataset (``ValueError`` saying what is ``supported`` unless
        ``usable(data)``); sets ``num_classes``, ``image_size``, ``train_size``, ``test_size``."""
        from ...data import create_dataset

        cfg = self.config
        data = create_dataset(cfg.dataset, root=cfg.data_dir, download=cfg.download,
                              **cfg.dataset_kwargs)
        if not usable(data):
            raise ValueError(f"dataset {cfg.dataset!r} returned {type(data).__name__}; {supported}")
        self.data_source = getattr(data, "source", None)
        if self.data_source:
            self.log(f"{cfg.dataset}: read from {self.data_source}")
        self.num_classes, self.image_size = data.num_classes, tuple(data.image_size)
        self.train_size, self.test_size = data.train_size, data.test_size
        return data

    def create_model(self, required: tuple[str, ...] = ("forward_features", "get_classifier"),
                     in_channels: Optional[int] = None) -> nn.Module:
        """The configured model on the device (``channels_last`` if asked); sets
        ``self.model`` and ``self.classifier``."""
        from ...models import create_model

        cfg = self.config
        kwargs = dict(cfg.model_kwargs)
        if in_channels is not None:
            kwargs.setdefault("in_channels", in_channels)
        model = create_model(cfg.model, num_classes=self.num_classes, **kwargs)
        missing = [name for name in required if not hasattr(model, name)]
        if missing:
            raise ValueError(f"model {cfg.model!r} lacks {'/'.join(n + '()' for n in missing)}")
        model.to(self.device)
        if cfg.channels_last:
            model.to(memory_format=torch.channels_last)
        self.model = model
        self.classifier = model.get_classifier()
        return model

    def channels_last(self, x: Tensor) -> Tensor:
        """``x`` in the channels-last memory format when ``--channels-last`` is on."""
        return x.contiguous(memory_format=torch.channels_last) if self.config.channels_last else x

    def to_device(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """A batch on the device (``channels_last`` images if asked)."""
        non_blocking = self.device.type == "cuda"
        x = x.to(self.device, non_blocking=non_blocking)
        return self.channels_last(x), y.to(self.device, non_blocking=non_blocking)

    @torch.no_grad()
    def cross_entropy_error(self, net: Any, batches: Any, sharded: bool = False,
                            per_class: int = 0) -> tuple[Any, ...]:
        """Summed cross-entropy, wrong predictions and samples of ``net`` (a callable from
        images to logits, run under the engine's AMP) over ``(x, y)`` ``batches``, summed
        over ranks when ``sharded``; one host sync. With ``per_class = C`` also the wrong
        predictions and samples of each class (two lists of ``C``)."""
        sums = torch.zeros(3 + 2 * per_class, dtype=torch.float64, device=self.device)
        for x, y in batches:
            x, y = self.to_device(x, y)
            with self.engine.autocast():
                logits = net(x).float()
            wrong = logits.argmax(1) != y
            sums[0] += F.cross_entropy(logits, y, reduction="sum").double()
            sums[1] += wrong.sum()
            sums[2] += y.shape[0]
            if per_class:
                sums[3:3 + per_class].index_add_(0, y, wrong.double())
                sums[3 + per_class:].index_add_(0, y, torch.ones_like(y, dtype=torch.float64))
        if sharded and self.context is not None:
            dist.all_reduce(sums)
        values = sums.tolist()
        if per_class:
            return (*values[:3], values[3:3 + per_class], values[3 + per_class:])
        return tuple(values)

    def param_groups(self) -> list[dict[str, Any]]:
        """The model's trainable parameters (plus the criterion's, in its own groups when
        it defines ``parameter_groups(config)``)."""
        groups_fn = getattr(self.criterion, "parameter_groups", None)
        groups = groups_fn(self.config) if groups_fn else []
        extra = [{**group, "params": list(group["params"])} for group in groups]
        listed = {id(p) for g in extra for p in g["params"]}
        rest = [p for p in self.criterion.parameters() if p.requires_grad and id(p) not in listed]
        return [{"params": [p for p in self.model.parameters() if p.requires_grad] + rest},
                *extra]

    def prepare_distributed(self, context: Any) -> bool:
        return False

    def final_window(self) -> int:
        """The last epochs averaged into ``final_error`` (Section 6.1; ``--final-epochs``)."""
        return final_window(self.config.epochs, self.config.final_epochs)

    # ------------------------------------------------------------------ events (optional)

    def on_epoch_start(self, engine: Any, epoch: int) -> None:
        """Training mode for the model and the criterion."""
        self.model.train()
        self.criterion.train()

    def on_step_start(self, engine: Any, step: int) -> None:
        """The criterion's progress t / T (ISDA's ``lambda = lambda0 t / T``)."""
        self.criterion.set_progress(engine.progress)

    # ------------------------------------------------------------------ the protocol

    def train_step(self, batch: Any, progress: float) -> StepOut:
        raise NotImplementedError

    def epoch_values(self, totals: dict[str, float]) -> tuple[float, float, dict[str, Any]]:
        n = max(totals["n"], 1.0)
        return totals["loss"] / n, 100.0 * round(totals["wrong"]) / n, {}

    def evaluate(self, final: bool) -> dict[str, Any]:
        raise NotImplementedError

    def log_values(self) -> dict[str, Any]:
        values = dict(self.criterion.log_values())
        return {"lambda": values.pop("lambda", None), **{k: float(v) for k, v in values.items()}}

    def summary(self, row: dict[str, Any]) -> str:
        return (f"train loss {row['train_loss']:.4f} err {row['train_error']:6.2f}%  "
                f"test loss {row['test_loss']:.4f} err {row['test_error']:6.2f}%")

    def summary_tail(self, row: dict[str, Any]) -> str:
        return ""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore (and check) the entries of :meth:`state_dict`."""

    def result_fields(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        return {}

    def resolved_fields(self) -> dict[str, Any]:
        return {}

    def generators(self) -> dict[str, Optional[torch.Generator]]:
        return {"data": self.data_generator}

    @staticmethod
    def result_line(result: dict[str, Any]) -> str:
        return f"final error {result['final_error']:.2f}% (best {result['best_error']:.2f}%)"

    @staticmethod
    def result_warning(result: dict[str, Any], name: str = "the model") -> Optional[str]:
        return None

    @staticmethod
    def run_summary(result: dict[str, Any]) -> str:
        """The line ``isda train`` prints for a finished run."""
        return (f"final test error (mean of the {window_text(result['final_error_epochs'])}): "
                f"{result['final_error']:.2f}%  best: {result['best_error']:.2f}% "
                f"(epoch {result['best_epoch']})")

    @classmethod
    def write_comparison(cls, out: Any, variants: Any, runs: Any, config: Any) -> Any:
        """Tables and plots of an ``isda compare`` sweep of this task (see
        :mod:`torch_isda.train.compare`)."""
        raise NotImplementedError
