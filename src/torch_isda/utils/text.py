"""Text of progress lines shared by the training harness and the GAN trainers."""

from __future__ import annotations

__all__ = ["format_eta"]


def format_eta(seconds: float) -> str:
    """``"42s"``, ``"3m05s"``, ``"1h02m"``."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
