"""Functions that ``torch.compile`` must not trace, marked without importing ``torch._dynamo``.

``torch.compiler.disable(fn)`` imports ``torch._dynamo`` (about 1.5 s) when it is *called*;
used as a decorator at import time it made ``import torch_isda`` that much slower than
``import torch``. :func:`eager_only` defers the call: nothing can be compiling before
``torch._dynamo`` has been imported (``torch.compile`` imports it), so until then the
function runs as it is; afterwards it runs through ``torch.compiler.disable(fn)``, built
once, so that a compiled caller breaks its graph around it instead of tracing it.
"""

from __future__ import annotations

import functools
import sys
from typing import Any, Callable, TypeVar

import torch

__all__ = ["eager_only"]

F = TypeVar("F", bound=Callable[..., Any])


def eager_only(fn: F) -> F:
    """``fn``, run outside any ``torch.compile`` graph (a graph break), marked lazily."""
    disabled: list = []  # torch.compiler.disable(fn), built at the first call after dynamo loads

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        if "torch._dynamo" not in sys.modules:  # nothing can be compiling yet
            return fn(*args, **kwargs)
        if not disabled:
            disabled.append(torch.compiler.disable(fn))
        return disabled[0](*args, **kwargs)

    return run  # type: ignore[return-value]
