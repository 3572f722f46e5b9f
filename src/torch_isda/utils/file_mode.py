"""The mode ``open()`` gives a new file (``0o666`` less the process umask), for files
written through a temporary file: :func:`tempfile.mkstemp` creates them ``0o600``, so
without a ``chmod`` every result would be unreadable to others whatever the umask."""

from __future__ import annotations

import os
import threading

__all__ = ["apply_new_file_mode", "move_into_place", "new_file_mode"]

_UMASK_LOCK = threading.Lock()


def _umask() -> int:
    """The process umask, read from ``/proc`` where it exists (changes nothing), else set
    and restored under a lock."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def new_file_mode() -> int:
    """``0o666 & ~umask``: the permissions of a file that ``open(path, "w")`` creates."""
    return 0o666 & ~_umask()


def apply_new_file_mode(path: str | os.PathLike[str]) -> None:
    """Give ``path`` (e.g. a ``mkstemp`` file about to replace a result) :func:`new_file_mode`."""
    if os.name == "posix":
        os.chmod(path, new_file_mode())


def move_into_place(tmp: str | os.PathLike[str], path: str | os.PathLike[str]) -> None:
    """Give the temporary file ``tmp`` :func:`new_file_mode`, then :func:`os.replace` it
    onto ``path`` (the last step of an atomic write)."""
    apply_new_file_mode(tmp)
    os.replace(tmp, path)
