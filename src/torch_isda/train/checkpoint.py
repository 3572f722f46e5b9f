"""Atomic file writes (temporary file, ``fsync``, :func:`os.replace`; a crash leaves the
previous version, never a truncated file; the file gets the mode ``open()`` would give it,
``0o666`` less the umask) and checkpoint save/load: a checkpoint carries the SHA-256 of its
contents, so a truncated, bit-flipped or foreign file is reported at load
(:class:`CheckpointError`), and the previous checkpoint is kept beside the current one
(``checkpoint.prev.pt``: :data:`KEPT_CHECKPOINTS` in all) for ``--resume auto`` to fall back to."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable

import torch

from ..utils.atomic_file import atomic_write

__all__ = ["CHECKPOINT_NAME", "INTEGRITY_KEY", "KEPT_CHECKPOINTS", "PREVIOUS_CHECKPOINT_NAME",
           "CheckpointError", "atomic_write", "atomic_write_json", "atomic_write_text",
           "load_checkpoint", "load_resumable_checkpoint", "save_checkpoint", "state_digest"]

CHECKPOINT_NAME = "checkpoint.pt"
#: The checkpoint before the latest one, kept by ``save_checkpoint(..., keep_previous=True)``.
PREVIOUS_CHECKPOINT_NAME = "checkpoint.prev.pt"
#: Checkpoints a run keeps: the latest and the one before it.
KEPT_CHECKPOINTS = 2
#: The key of a checkpoint's SHA-256 digest (:func:`state_digest`) of the rest of it.
INTEGRITY_KEY = "integrity_sha256"


class CheckpointError(ValueError):
    """A checkpoint file is damaged (unreadable, truncated, its contents do not match its
    digest) or does not belong to the run loading it."""


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    with atomic_write(path, "w") as f:
        f.write(text)


def atomic_write_json(path: str | os.PathLike[str], data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, allow_nan=False) + "\n")


def _digest_into(hasher: Any, value: Any) -> None:
    if isinstance(value, torch.Tensor):
        data = value.detach().cpu().contiguous().reshape(-1)
        hasher.update(f"T{value.dtype}{tuple(value.shape)}".encode())
        hasher.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    elif isinstance(value, dict):
        hasher.update(f"D{len(value)}".encode())
        for key, item in value.items():
            _digest_into(hasher, key)
            _digest_into(hasher, item)
    elif isinstance(value, (list, tuple)):
        hasher.update(f"{type(value).__name__[0]}{len(value)}".encode())
        for item in value:
            _digest_into(hasher, item)
    else:
        hasher.update(f"V{type(value).__name__}:{value!r};".encode())


def state_digest(state: dict[str, Any]) -> str:
    """SHA-256 of a checkpoint's contents (tensors by dtype, shape and bytes; plain values
    by ``repr``), the :data:`INTEGRITY_KEY` entry left out."""
    hasher = hashlib.sha256()
    _digest_into(hasher, {k: v for k, v in state.items() if k != INTEGRITY_KEY})
    return hasher.hexdigest()


def _keep_as_previous(path: Path) -> None:
    """Make ``path`` also ``checkpoint.prev.pt`` (a hard link where possible), atomically."""
    previous = path.with_name(PREVIOUS_CHECKPOINT_NAME)
    tmp = path.with_name(f".{PREVIOUS_CHECKPOINT_NAME}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(path, tmp)
    except OSError:
        shutil.copy2(path, tmp)
    os.replace(tmp, previous)


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike[str], *,
                    keep_previous: bool = False) -> None:
    """``torch.save(state)`` to ``path`` atomically, with the digest of its contents
    (:data:`INTEGRITY_KEY`); ``keep_previous`` first keeps the file it replaces as
    ``checkpoint.prev.pt``."""
    path = Path(path)
    if keep_previous and path.is_file():
        _keep_as_previous(path)
    with atomic_write(path, "wb") as f:
        torch.save({**state, INTEGRITY_KEY: state_digest(state)}, f)


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` onto the CPU
    (``weights_only=True``: checkpoints hold tensors and plain python values only) and
    check it against its digest (checkpoints without one are loaded unchecked).

    Raises:
        FileNotFoundError: there is no file at ``path``.
        CheckpointError: the file cannot be read (truncated, not a checkpoint) or its
            contents do not match their digest (bit flips, a partial copy).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at '{path}'")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - every reader error means the same to the user
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise CheckpointError(f"the checkpoint '{path}' is damaged: it cannot be read "
                              f"({type(err).__name__}: {reason})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"'{path}' is not a checkpoint: it holds a "
                              f"{type(state).__name__}, not a dict")
    digest = state.pop(INTEGRITY_KEY, None)
    if digest is not None and digest != state_digest(state):
        raise CheckpointError(f"the checkpoint '{path}' is damaged: its contents do not match "
                              f"the SHA-256 written with it (bit flips or a partial copy)")
    return state


def load_resumable_checkpoint(out: str | os.PathLike[str], fallback: bool,
                              log: Callable[[str], None]) -> tuple[dict[str, Any], Path]:
    """The checkpoint a run in ``out`` resumes from and its path: ``checkpoint.pt``, or when
    it is damaged and ``fallback`` (``--resume auto``), ``checkpoint.prev.pt`` (logged).

    Raises:
        CheckpointError: ``checkpoint.pt`` is damaged and there is no good previous one to
            fall back to (or ``fallback`` is false: the message says what would).
    """
    current = Path(out) / CHECKPOINT_NAME
    previous = current.with_name(PREVIOUS_CHECKPOINT_NAME)
    try:
        return load_checkpoint(current), current
    except CheckpointError as err:
        if not previous.is_file():
            raise CheckpointError(f"{err}; there is no previous checkpoint to fall back to: "
                                  f"use --force to start over") from None
        if not fallback:
            raise CheckpointError(f"{err}; '{previous}' holds the previous checkpoint: "
                                  f"--resume auto continues from it") from None
        damaged = err
    try:
        state = load_checkpoint(previous)
    except CheckpointError as err:
        raise CheckpointError(f"{damaged}; the previous one is damaged too: {err}") from None
    log(f"warning: {damaged}; resuming from the previous checkpoint '{previous}' (epoch "
        f"{state.get('epoch', '?')})")
    return state, previous
