"""A name -> factory registry (timm style), shared by the dataset and model registries.

One :class:`Registry` per kind of thing (``Registry("dataset")``, ``Registry("model")``);
factories register under a lower-case name, lookups of an unknown name fail with the
available names and the closest match.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable
from typing import Any, Optional, TypeVar

__all__ = ["Registry"]

_F = TypeVar("_F", bound=Callable[..., Any])


class Registry:
    """Factories of one ``kind`` (a noun for the messages: ``"dataset"``, ``"model"``)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.entries: dict[str, Callable[..., Any]] = {}

    def register(self, name: str, fn: _F) -> _F:
        """Register ``fn`` under ``name``. Re-registering the same function (same module
        and qualified name, e.g. after a module reload) replaces the entry; a different
        function under a taken name is a ``ValueError``. Name rules are the caller's."""
        existing = self.entries.get(name)
        if existing is not None and (existing.__module__, existing.__qualname__) != (
            fn.__module__,
            fn.__qualname__,
        ):
            raise ValueError(
                f"{self.kind} {name!r} is already registered by "
                f"{existing.__module__}.{existing.__qualname__}"
            )
        self.entries[name] = fn
        return fn

    def names(self, pattern: Optional[str] = None) -> list[str]:
        """Sorted registered names, optionally ``fnmatch``-filtered by ``pattern``."""
        names = sorted(self.entries)
        if pattern is not None:
            names = fnmatch.filter(names, pattern)
        return names

    def __contains__(self, name: object) -> bool:
        return name in self.entries

    def get(self, name: str) -> Callable[..., Any]:
        """The factory registered under ``name``; ``ValueError`` listing the available
        names (and the closest match) if there is none."""
        try:
            return self.entries[name]
        except KeyError:
            pass
        available = self.names()
        message = f"Unknown {self.kind} {name!r}."
        close = difflib.get_close_matches(str(name).lower(), available, n=1)
        if close:
            message += f" Did you mean {close[0]!r}?"
        message += f" Available {self.kind}s: {', '.join(available)}."
        raise ValueError(message)
