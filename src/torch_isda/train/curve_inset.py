"""A zoomed inset on the last epochs of ``isda compare``'s ``curves.png``: with five or more
methods the final-error region is a tangle at full scale (:func:`add_last_epochs_inset`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

__all__ = ["INSET_MIN_METHODS", "add_last_epochs_inset", "zoom_start"]

#: From this many methods on, ``curves.png`` gets the inset.
INSET_MIN_METHODS = 5


def zoom_start(longest: int, window: int) -> int:
    """The inset's first epoch: it shows the last ``max(window, a quarter of the run, 3)``."""
    span = max(int(window), int(math.ceil(0.25 * longest)), 3)
    return max(1, longest - span + 1)


def add_last_epochs_inset(ax: Any, series: Sequence[tuple[Any, Any, Any, Any]], window: int) -> Any:
    """Add the inset to ``ax`` (upper right, where falling error curves leave room; y-range
    fitted to the zoomed region); ``series``: :func:`~torch_isda.train.tables.plot_band`'s
    results. Returns the inset axes (``None`` when the run is too short)."""
    import numpy as np

    longest = max(int(s[0][-1]) for s in series if len(s[0]))
    start = zoom_start(longest, window)
    if longest - start < 1:
        return None
    inset = ax.inset_axes([0.5, 0.47, 0.47, 0.48])
    ranges = []
    for epochs, mean, std, color in series:
        keep = epochs >= start
        if not keep.any():
            continue
        low, high = (mean - std)[keep], (mean + std)[keep]
        inset.plot(epochs[keep], mean[keep], lw=1.3, color=color)
        inset.fill_between(epochs[keep], low, high, color=color, alpha=0.2, lw=0)
        ranges.append((float(np.nanmin(low)), float(np.nanmax(high))))
    finite = [(lo, hi) for lo, hi in ranges if math.isfinite(lo) and math.isfinite(hi)]
    if finite:
        lo, hi = min(v[0] for v in finite), max(v[1] for v in finite)
        pad = 0.08 * (hi - lo) + 1e-6
        inset.set_ylim(max(0.0, lo - pad), hi + pad)
    inset.set_xlim(start - 0.3, longest + 0.3)
    inset.axvspan(max(start - 0.3, longest - window + 0.5), longest + 0.3, color="0.93",
                  zorder=0, lw=0)
    from matplotlib.ticker import MaxNLocator

    inset.xaxis.set_major_locator(MaxNLocator(integer=True))
    inset.tick_params(labelsize=7)
    inset.grid(True, alpha=0.3)
    inset.set_title(f"epochs {start}-{longest}", fontsize=7, pad=2)
    ax.indicate_inset_zoom(inset, edgecolor="0.4")
    return inset
