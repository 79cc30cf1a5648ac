"""One checkpoint dict, written atomically with its checksum, read back with clear errors.

A checkpoint holds the state dicts of everything that changes during training (model, optimiser,
scheduler, grad scaler, criterion — ALM multipliers are criterion buffers — and calibrator), the
position in the run (epoch, step within the epoch, global step), the config and the RNG states.

File format 2: the state is serialised with :func:`torch.save` into a byte string, and the file
holds, again through :func:`torch.save`, the wrapper ``{"format_version": 2, "sha256": <hex
digest of the bytes>, "payload": <the bytes as a uint8 tensor>}``. The checksum and the data
are one file, so they are written together: the file goes to a temporary name in the same
folder (created with the mode the user's umask gives), is flushed to disk and renamed over the
final name (:func:`os.replace`), so a crash never leaves a half-written checkpoint or a
checkpoint whose checksum belongs to another file. :func:`load_checkpoint` recomputes the
digest and refuses a file that does not match; it never changes or removes the file.

Format 1 files (the plain state dict, written before checksums existed) are still read, with
a warning that they cannot be verified.

Example:
    >>> import tempfile, os, torch
    >>> from calibrant.checkpoint import save_checkpoint, load_checkpoint
    >>> with tempfile.TemporaryDirectory() as d:
    ...     path = os.path.join(d, "last.pt")
    ...     _ = save_checkpoint(path, {"epoch": 3, "model": {"w": torch.ones(2)}})
    ...     load_checkpoint(path, required=("epoch", "model"))["epoch"]
    3
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import pickle
import random
import secrets
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "CheckpointError",
    "save_checkpoint",
    "load_checkpoint",
    "rng_state",
    "set_rng_state",
]

FORMAT_VERSION = 2
LEGACY_VERSIONS = (1,)  # read without verification (no checksum), with a warning

log = logging.getLogger(__name__)

_READ_ERRORS = (
    RuntimeError,
    EOFError,
    pickle.UnpicklingError,
    zipfile.BadZipFile,
    OSError,
    ValueError,
    KeyError,
    AttributeError,
    ImportError,
    IndexError,
    TypeError,
    UnicodeDecodeError,
)


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt or incompatible with the run resuming from it."""


def _write_new(path: Path, data: Any) -> None:
    """Write ``data`` (``torch.save``) to the new file ``path``, mode ``0o666 & ~umask``."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    with os.fdopen(fd, "wb") as f:
        torch.save(data, f)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every platform/filesystem can open a folder
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write ``state`` and its SHA-256 to ``path`` atomically (temporary file + rename).

    The file gets the permissions a newly created file gets from the user's umask (``0o644``
    under the usual ``022``), like any other file of the run folder.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save({"format_version": FORMAT_VERSION, **state}, buffer)
    view = buffer.getbuffer()
    wrapper = {
        "format_version": FORMAT_VERSION,
        "sha256": hashlib.sha256(view).hexdigest(),
        "payload": torch.frombuffer(view, dtype=torch.uint8),
    }
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        _write_new(tmp, wrapper)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def load_checkpoint(
    path: str | os.PathLike, *, required: Iterable[str] = (), map_location: str = "cpu"
) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`, verifying its checksum.

    Args:
        path: checkpoint file.
        required: keys that must be present.
        map_location: passed to :func:`torch.load`.

    Raises:
        CheckpointError: if the file is missing, unreadable/corrupt, fails its checksum, is of
            another format version or lacks a required key. Never returns a silent "fresh
            start", and never changes or removes the file.
    """
    path = Path(path)
    name = repr(str(path))
    if not path.is_file():
        raise CheckpointError(f"checkpoint {name} does not exist")
    try:
        outer = torch.load(path, map_location="cpu", weights_only=False)
    except _READ_ERRORS as e:
        raise CheckpointError(
            f"checkpoint {name} is corrupt or unreadable: {e}; the file is left as it is"
        ) from e
    version = outer.get("format_version") if isinstance(outer, dict) else None
    if version == FORMAT_VERSION:
        state = _verified(outer, name, map_location)
    elif version in LEGACY_VERSIONS:
        log.warning(
            "checkpoint %s has format %d (written by an older calibrant, without a checksum): "
            "loaded unverified",
            name,
            version,
        )
        state = outer
        if map_location != "cpu":
            state = torch.load(path, map_location=map_location, weights_only=False)
    else:
        found = version if isinstance(outer, dict) else type(outer).__name__
        raise CheckpointError(
            f"checkpoint {name} has format {found!r}; this calibrant reads format "
            f"{FORMAT_VERSION} (and {', '.join(map(str, LEGACY_VERSIONS))} unverified)"
        )
    missing = [k for k in required if k not in state]
    if missing:
        raise CheckpointError(f"checkpoint {name} lacks {missing}")
    return state


def _verified(outer: dict[str, Any], name: str, map_location: str) -> dict[str, Any]:
    payload, recorded = outer.get("payload"), outer.get("sha256")
    if not isinstance(payload, torch.Tensor) or payload.dtype != torch.uint8 or not recorded:
        raise CheckpointError(
            f"checkpoint {name} is corrupt: its wrapper lacks the payload or the checksum; "
            "the file is left as it is"
        )
    data = payload.contiguous().numpy()
    digest = hashlib.sha256(data.data).hexdigest()
    if digest != recorded:
        raise CheckpointError(
            f"checkpoint {name} fails its checksum (sha256 {digest[:16]}… of the data, "
            f"{str(recorded)[:16]}… recorded): the file is damaged. It is left as it is; "
            "restore it from a copy, or start the run again"
        )
    try:
        state = torch.load(
            io.BytesIO(data.tobytes()), map_location=map_location, weights_only=False
        )
    except _READ_ERRORS as e:  # a checksum-valid payload that still does not load
        raise CheckpointError(f"checkpoint {name} is unreadable: {e}") from e
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {name} holds a {type(state).__name__}, not a dict")
    return state


def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch CPU (and CUDA, when available) RNG states."""
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),  # noqa: NPY002 (global state is what we restore)
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the states captured by :func:`rng_state`."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])  # noqa: NPY002
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
