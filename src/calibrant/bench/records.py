"""Where a suite's records and run folders live, and what a record holds besides its numbers.

``record_path``/``search_path`` (under ``results``, committed) and ``run_dir`` (under ``work``,
scratch; named by :func:`config_key`), the environment recorded with every run, and the
per-sample predictions stored beside a record. :mod:`calibrant.bench.runner` writes them.

Example:
    >>> config_key({"a": 1}) == config_key({"a": 1}), config_key({"a": 1}) == config_key({"a": 2})
    (True, False)
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "config_key",
    "environment",
    "load_predictions",
    "record_path",
    "run_dir",
    "search_path",
]


def record_path(results: Path, suite: str, profile: str, task: str, method: str, seed: int) -> Path:
    """Where the JSON record of one run lives."""
    return Path(results) / suite / profile / task / method / f"seed{seed}.json"


def config_key(cfg: Mapping[str, Any]) -> str:
    """A short hash of a resolved config: run folders of different configs never collide."""
    text = json.dumps(_normalised(cfg), sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:10]


def run_dir(
    work: Path, suite: str, profile: str, task: str, method: str, seed: int, key: str
) -> Path:
    """The scratch run folder of one trained run (``key``: :func:`config_key` of its config)."""
    return Path(work) / suite / profile / task / method / f"seed{seed}-{key}"


def search_path(results: Path, suite: str, profile: str, task: str, method: str) -> Path:
    """Where the validation-split search of one (task, method) is recorded."""
    return Path(results) / suite / profile / task / method / "search.json"


def environment(device: torch.device | str) -> dict[str, Any]:
    """Commit, library versions, device and thread count, recorded with every run."""
    here = Path(__file__).resolve().parent

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=here, capture_output=True, text=True, check=True)
        return done.stdout.strip()

    try:
        commit = git("rev-parse", "--short=12", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
        commit += "+dirty" if dirty else ""
        # the library's own sources: tracked edits and new files (the code a record comes from)
        src = here.parent.parent  # src/ (this file is src/calibrant/bench/records.py)
        dirty_src = bool(git("status", "--porcelain", "--", str(src)))
    except (OSError, subprocess.CalledProcessError):
        commit, dirty_src = "unknown", None
    device = torch.device(device)
    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"cpu ({os.cpu_count()} logical CPUs)"
    )
    return {
        "commit": commit,
        "dirty_src": dirty_src,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": name,
        "threads": torch.get_num_threads(),
    }


def _normalised(cfg: Mapping[str, Any]) -> Any:
    return json.loads(json.dumps(cfg, default=str))


def _write_predictions(path: Path, predictions: Mapping[str, list]) -> None:
    """Per-sample test predictions beside a record (compressed; float32, small integers)."""
    import numpy as np

    arrays = {}
    for name, values in predictions.items():
        a = np.asarray(values)
        arrays[name] = a.astype(np.float32) if a.dtype.kind == "f" else a.astype(np.int16)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, path)


def load_predictions(record_file: Path) -> dict[str, Any] | None:
    """The per-sample predictions stored beside a record (``None`` if it has none)."""
    import numpy as np

    path = Path(record_file).with_suffix(".predictions.npz")
    if not path.is_file():
        return None
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def _write_atomic(path: Path, payload: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=1, default=str) + "\n")
    os.replace(tmp, path)
