"""The decode cache of the dataset loaders: :func:`cached` and :func:`cached_cases`.

Every loader decodes its source files once, stores the decoded arrays in a cache directory and
reads them back from there on later runs, so that training epochs are compute-bound. The cache key
is a hash of the loader name, its options and the path, size and modification time of every
source file, so editing or replacing a source file invalidates the entry. Cache files are written
to a temporary name and renamed into place, so a crash never leaves a half-written entry. The
cache directory is ``cache_dir`` if given, else ``$CALIBRANT_CACHE``, else ``~/.cache/calibrant``;
nothing is ever written into the data root.

Example:
    >>> import tempfile
    >>> import numpy as np
    >>> from calibrant.data.cache import cached
    >>> with tempfile.TemporaryDirectory() as d:
    ...     calls = []
    ...     build = lambda: calls.append(1) or {"x": np.arange(3)}
    ...     a = cached("demo", [], {"k": 1}, build, cache_dir=d)
    ...     b = cached("demo", [], {"k": 1}, build, cache_dir=d)
    ...     (len(calls), b["x"].tolist())
    (1, [0, 1, 2])
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "CACHE_ENV",
    "atomic_write_bytes",
    "cache_key",
    "cached",
    "cached_cases",
    "cached_volumes",
    "resolve_cache_dir",
]

log = logging.getLogger(__name__)

CACHE_ENV = "CALIBRANT_CACHE"
_CACHE_VERSION = 1


def resolve_cache_dir(path: str | os.PathLike | None = None) -> Path:
    """The cache directory: ``path``, else ``$CALIBRANT_CACHE``, else ``~/.cache/calibrant``."""
    if path is None:
        path = os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "calibrant"
    return Path(path).expanduser()


def _fingerprint(sources: Sequence[str | os.PathLike]) -> list[list[Any]]:
    out = []
    for s in sources:
        st = os.stat(s)
        out.append([str(Path(s).resolve()), st.st_size, st.st_mtime_ns])
    return out


def cache_key(name: str, sources: Sequence[str | os.PathLike], options: dict[str, Any]) -> str:
    """Hash of the loader name, its options and each source file's path, size and mtime.

    Example:
        >>> cache_key("x", [], {"a": 1}) == cache_key("x", [], {"a": 1})
        True
        >>> cache_key("x", [], {"a": 1}) == cache_key("x", [], {"a": 2})
        False
    """
    payload = json.dumps(
        {"v": _CACHE_VERSION, "name": name, "options": options, "sources": _fingerprint(sources)},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _inside(child: Path, parent: Path) -> bool:
    try:
        child.resolve().relative_to(parent.resolve())
        return True
    except ValueError:
        return False


def cached(
    name: str,
    sources: Sequence[str | os.PathLike],
    options: dict[str, Any],
    build: Callable[[], Any],
    *,
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
    data_root: str | os.PathLike | None = None,
) -> Any:
    """Return ``build()``, computed once per (name, options, source files) and cached on disk.

    Args:
        name: loader name (part of the key and of the file name).
        sources: the files the result is decoded from.
        options: every option that changes the result (JSON-serialisable).
        build: computes the value (a picklable object, typically a dict of numpy arrays).
        cache_dir: cache folder (see :func:`resolve_cache_dir`).
        use_cache: ``False`` always calls ``build()`` and writes nothing.
        data_root: when given, a cache folder inside it is refused (the data root is read-only).

    Raises:
        ValueError: if the cache folder lies inside ``data_root``.
    """
    if not use_cache:
        return build()
    folder = resolve_cache_dir(cache_dir)
    if data_root is not None and _inside(folder, Path(data_root)):
        raise ValueError(f"cache folder {str(folder)!r} lies inside the data root; choose another")
    path = folder / f"{name}-{cache_key(name, sources, options)}.pkl"
    if path.exists():
        try:
            with open(path, "rb") as f:
                return pickle.load(f)
        except Exception as err:  # a damaged cache entry is rebuilt, never trusted
            log.warning("discarding unreadable cache entry %s: %s", path, err)
    value = build()
    try:
        atomic_write_bytes(path, pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))
    except OSError as err:
        log.warning("could not write cache entry %s: %s", path, err)
    return value


def cached_cases(
    name: str,
    sources: Sequence[str | os.PathLike],
    options: dict[str, Any],
    build: Callable[[], dict[str, list]],
    chosen: Sequence[int],
    *,
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
    data_root: str | os.PathLike | None = None,
) -> tuple[list[torch.Tensor], list[torch.Tensor], list[tuple[float, ...]]]:
    """``(images, labels, spacings)`` of the cases ``chosen`` of a volume data set.

    ``build()`` decodes *every* case into ``{"images": [...], "labels": [...], "spacings":
    [...]}`` (numpy arrays, one per case), cached by :func:`cached` (same arguments), so that
    every split and seed reuses one cache entry; the chosen cases are then taken from it.

    Example:
        >>> import numpy as np
        >>> build = lambda: {"images": [np.zeros(2), np.ones(2)], "labels": [np.zeros(2)] * 2,
        ...                  "spacings": [[1.0], [2.0]]}
        >>> images, labels, spacings = cached_cases("demo", [], {}, build, [1], use_cache=False)
        >>> images[0].tolist(), spacings
        ([1.0, 1.0], [(2.0,)])
    """
    data = cached(
        name, sources, options, build, cache_dir=cache_dir, use_cache=use_cache, data_root=data_root
    )
    images = [torch.from_numpy(data["images"][i]) for i in chosen]
    labels = [torch.from_numpy(data["labels"][i]) for i in chosen]
    spacings = [tuple(data["spacings"][i]) for i in chosen]
    return images, labels, spacings


def cached_volumes(
    name: str,
    options: dict[str, Any],
    cases: Sequence[Sequence[str | os.PathLike]],
    decode: Callable[..., tuple[Any, Any, Sequence[float]]],
    chosen: Sequence[int],
    *,
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
    data_root: str | os.PathLike | None = None,
) -> tuple[list[torch.Tensor], list[torch.Tensor], list[tuple[float, ...]]]:
    """:func:`cached_cases` of a data set that decodes each case on its own.

    ``cases`` holds the source files of every case and ``decode(*files)`` turns one case's files
    into ``(image, label, spacing)`` (numpy arrays and a sequence of floats). Every case is
    decoded into one cache entry (sources: all files, in order); the cases ``chosen`` are
    returned as in :func:`cached_cases`.

    Example:
        >>> import numpy as np
        >>> decode = lambda path: (np.full(2, float(path)), np.zeros(2), (float(path),))
        >>> images, _, spacings = cached_volumes("demo", {}, [["1"], ["2"]], decode, [1],
        ...                                      use_cache=False)
        >>> images[0].tolist(), spacings
        ([2.0, 2.0], [(2.0,)])
    """

    def build() -> dict[str, list]:
        out: dict[str, list] = {"images": [], "labels": [], "spacings": []}
        for files in cases:
            image, label, spacing = decode(*files)
            out["images"].append(image)
            out["labels"].append(label)
            out["spacings"].append(spacing)
        return out

    sources = [f for files in cases for f in files]
    return cached_cases(
        name,
        sources,
        options,
        build,
        chosen,
        cache_dir=cache_dir,
        use_cache=use_cache,
        data_root=data_root,
    )
