"""One checkpoint dict, written atomically, read back with clear errors.

A checkpoint holds the state dicts of everything that changes during training (model, optimiser,
scheduler, grad scaler, criterion — ALM multipliers are criterion buffers — and calibrator), the
position in the run (epoch, step within the epoch, global step), the config and the RNG states.
Writing goes to a temporary file in the same folder followed by :func:`os.replace`, so a crash
never leaves a half-written checkpoint under the final name.

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

import os
import pickle
import random
import tempfile
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

FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt or incompatible with the run resuming from it."""


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically (temporary file + rename in the same folder)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format_version": FORMAT_VERSION, **state}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def load_checkpoint(
    path: str | os.PathLike, *, required: Iterable[str] = (), map_location: str = "cpu"
) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Args:
        path: checkpoint file.
        required: keys that must be present.
        map_location: passed to :func:`torch.load`.

    Raises:
        CheckpointError: if the file is missing, unreadable/corrupt, of another format version
            or lacks a required key. Never returns a silent "fresh start".
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, OSError) as e:
        raise CheckpointError(f"checkpoint {str(path)!r} is corrupt or unreadable: {e}") from e
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        found = state.get("format_version") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(
            f"checkpoint {str(path)!r} has format {found!r}; this calibrant reads "
            f"format {FORMAT_VERSION}"
        )
    missing = [k for k in required if k not in state]
    if missing:
        raise CheckpointError(f"checkpoint {str(path)!r} lacks {missing}")
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
