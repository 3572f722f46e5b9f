"""Seeding, determinism and the capture/restore of every RNG state a run uses."""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Iterator
from typing import Any, Optional

import numpy as np
import torch

__all__ = ["deterministic_mode", "get_rng_state", "num_threads", "seed_everything",
           "set_rng_state"]


def seed_everything(seed: int) -> None:
    """Seed python ``random``, numpy and torch (CPU and all CUDA devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextlib.contextmanager
def deterministic_mode(enabled: bool) -> Iterator[None]:
    """Within the block: ``torch.use_deterministic_algorithms(enabled, warn_only=True)``
    and cuDNN ``deterministic=enabled, benchmark=not enabled``; the previous settings are
    restored afterwards (so a run does not leak global state into its caller)."""
    previous = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
    )
    set_env = enabled and "CUBLAS_WORKSPACE_CONFIG" not in os.environ and torch.cuda.is_available()
    if set_env:  # required by deterministic cuBLAS
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"
    try:
        torch.use_deterministic_algorithms(enabled, warn_only=True)
        torch.backends.cudnn.deterministic = enabled
        torch.backends.cudnn.benchmark = not enabled
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
        torch.backends.cudnn.deterministic = previous[2]
        torch.backends.cudnn.benchmark = previous[3]
        if set_env:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)


@contextlib.contextmanager
def num_threads(threads: Optional[int]) -> Iterator[None]:
    """``torch.set_num_threads(threads)`` within the block (``None``: unchanged)."""
    if threads is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _numpy_state() -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    # plain python types: the checkpoint stays loadable with torch.load(weights_only=True)
    return {"name": name, "keys": keys.tolist(), "pos": int(pos), "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached)}


def _set_numpy_state(state: dict[str, Any]) -> None:
    np.random.set_state((state["name"], np.asarray(state["keys"], dtype=np.uint32), state["pos"],
                         state["has_gauss"], state["cached_gaussian"]))


def get_rng_state(generators: Optional[dict[str, Optional[torch.Generator]]] = None,
                  cuda: bool = False) -> dict[str, Any]:
    """Every RNG state: torch CPU, CUDA (all devices, if ``cuda``), python, numpy and the
    named extra ``generators`` (e.g. the data generator)."""
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": [version, list(internal), gauss],
        "numpy": _numpy_state(),
        "generators": {k: g.get_state() for k, g in (generators or {}).items() if g is not None},
    }
    if cuda and torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any],
                  generators: Optional[dict[str, Optional[torch.Generator]]] = None) -> None:
    """Restore what :func:`get_rng_state` captured."""
    torch.set_rng_state(state["torch"].cpu())
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    _set_numpy_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    saved = state.get("generators", {})
    for name, gen in (generators or {}).items():
        if gen is not None and name in saved:
            gen.set_state(saved[name].cpu())
