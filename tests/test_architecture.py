"""Issue 25 items 3-4: one resolution into a frozen type the engine requires, a small Task
protocol, one event mechanism on the engine, TrainConfig in sections."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

import torch_isda
from torch_isda.train import TrainConfig
from torch_isda.train.config import (SHARED_SECTIONS, TASK_SECTIONS, ResolvedConfig,
                                     SemiOptions, section_fields)
from torch_isda.train.engine import Callback, Engine
from torch_isda.train.resolve import resolve_config
from torch_isda.train.tasks import TASKS, task_class
from torch_isda.train.tasks.base import OPTIONAL_HOOKS, PROTOCOL, Task

SRC = Path(torch_isda.__file__).parent


def test_resolved_config_is_frozen_and_required_by_the_engine(tmp_path):
    cfg = TrainConfig(epochs=1, out=str(tmp_path / "run"))
    resolved = resolve_config(cfg)
    assert isinstance(resolved, ResolvedConfig) and resolved.lr is not None
    with pytest.raises(dataclasses.FrozenInstanceError):
        resolved.lr = 1.0
    assert resolve_config(resolved) is resolved  # resolved once
    changed = resolved.replace(lr=0.5)
    assert type(changed) is TrainConfig and changed.lr == 0.5 and resolved.lr != 0.5
    with pytest.raises(TypeError, match="ResolvedConfig"):
        Engine(cfg)
    engine = Engine(resolved, quiet=True)
    with pytest.raises(AttributeError):
        engine.model  # noqa: B018  (the task's attributes live on engine.task)


def test_resolve_config_is_called_by_entry_points_only():
    allowed = {"train/engine.py", "train/compare.py", "train/command_train.py",
               "train/command_compare.py", "train/resolve.py", "analysis/resolve.py"}
    callers = set()
    for path in SRC.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "resolve_config":
                callers.add(str(path.relative_to(SRC)))
    assert callers <= allowed, callers - allowed


def test_sections_keep_the_flat_fields_and_their_order():
    names = [f.name for f in dataclasses.fields(TrainConfig)]
    sections = (*SHARED_SECTIONS, *TASK_SECTIONS.values())
    declared = [n for s in sections for n in section_fields(s)]
    assert sorted(declared) == sorted(names) and len(declared) == len(set(declared)) == 55
    assert names[:5] == ["dataset", "data_dir", "download", "dataset_kwargs", "augment"]
    assert TrainConfig(labels=7).section(SemiOptions)["labels"] == 7


def test_task_protocol_is_small_and_every_task_answers_it():
    assert len(PROTOCOL) <= 12
    for name in TASKS:
        cls = task_class(name)
        for method in (*PROTOCOL, *OPTIONAL_HOOKS):
            assert callable(getattr(cls, method, None)), (name, method)
        for method in ("resolve", "build", "train_step", "evaluate", "write_comparison"):
            assert getattr(cls, method) is not getattr(Task, method), (name, method)


def test_the_engine_asks_a_task_only_the_protocol_and_events():
    events = {n for n in vars(Callback) if n.startswith("on_")}
    asked = set()
    for rel in ("train/engine.py", "train/compare.py", "train/command_train.py"):
        for node in ast.walk(ast.parse((SRC / rel).read_text())):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id == "task" and not node.attr.startswith("_")):
                asked.add(node.attr)
    attributes = {"model", "criterion", "train_batches", "num_classes", "image_size",
                  "train_size", "test_size", "augment", "schedule_per_step"}
    assert asked - attributes <= set(PROTOCOL) | set(OPTIONAL_HOOKS) | events, asked


class _Recorder:
    def __init__(self):
        self.events = []

    def __getattr__(self, name):
        if not name.startswith("on_"):
            raise AttributeError(name)
        return lambda engine, *args: self.events.append((name, args[0]))


def test_one_event_mechanism_reaches_task_criterion_and_callbacks(tmp_path):
    from torch_isda.train.engine import train

    rec = _Recorder()
    train(TrainConfig(epochs=1, threads=1, out=str(tmp_path / "run"), loss="ce"),
          quiet=True, callbacks=[rec])
    names = [name for name, _ in rec.events]
    order = ["on_epoch_start", "on_step_start", "on_step", "on_after_backward", "on_step_end"]
    assert names[:5] == order
    assert names[-2:] == ["on_train_epoch_end", "on_epoch_end"]


def test_a_criterion_handles_events_too(tmp_path):
    from torch_isda.train.criteria import CriterionModifier, register_criterion, unregister_criterion
    from torch_isda.train.engine import train

    seen = []

    @register_criterion("t_events")
    class _Events(CriterionModifier):
        def on_step_end(self, engine, step):
            seen.append((step, engine.progress))

    try:
        train(TrainConfig(epochs=1, threads=1, out=str(tmp_path / "run"), loss="ce+t_events"),
              quiet=True)
    finally:
        unregister_criterion("t_events")
    assert [s for s, _ in seen] == list(range(len(seen))) and len(seen) >= 2
    assert seen[0][1] == 0.0 and 0.0 < seen[-1][1] < 1.0


def test_one_runs_configuration_enters_each_module_at_most_twice(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "config_walk", Path(__file__).parents[1] / "tools" / "config_walk.py")
    walk = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(walk)
    stops = walk.walk(["--losses", "isda", "--seeds", "1", "--epochs", "1", "--threads", "1",
                       "--quiet", "--out", str(tmp_path / "cmp")], from_sweep=True)
    assert stops[0][1] == "run_comparison" and stops[-1] == ("torch_isda.train.engine", "__init__")
    counts = walk.entries(stops)
    assert max(counts.values()) <= 2, counts
