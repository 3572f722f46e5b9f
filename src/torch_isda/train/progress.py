"""Progress bars (tqdm, when wanted)."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import Any, Optional

__all__ = ["ProgressBar", "progress_enabled"]


def progress_enabled(quiet: bool) -> bool:
    """A bar is shown unless ``quiet`` or stderr is not a terminal."""
    if quiet:
        return False
    try:
        return bool(sys.stderr.isatty())
    except (AttributeError, ValueError):
        return False


class ProgressBar:
    """Iterate ``iterable`` with a tqdm bar (``enabled``) or silently."""

    def __init__(self, iterable: Iterable[Any], total: Optional[int], desc: str,
                 enabled: bool) -> None:
        self._bar = None
        self._iterable = iterable
        if enabled:  # tqdm is in the train extra
            from tqdm.auto import tqdm

            self._bar = tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True,
                             file=sys.stderr)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._bar if self._bar is not None else self._iterable)

    def set_postfix(self, **values: Any) -> None:
        if self._bar is not None:
            self._bar.set_postfix(values, refresh=False)

    @property
    def active(self) -> bool:
        return self._bar is not None

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
