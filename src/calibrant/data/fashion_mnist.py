"""Fashion-MNIST (Xiao et al., 2017) from the idx files, gzipped or not.

The four files ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``
and ``t10k-labels-idx1-ubyte`` (each optionally ``.gz``) are looked up in the explicit ``root``
(or ``root/fashion-mnist``), then ``$CALIBRANT_DATA/fashion-mnist``, then the Debian package's
``/usr/share/datasets/fashion-mnist``. Items are ``(x (1, 28, 28) float32 in [0, 1], y int64)``.

Example:
    >>> import tempfile, pathlib
    >>> raw = bytes([0, 0, 8, 1, 0, 0, 0, 2, 3, 7])
    >>> with tempfile.TemporaryDirectory() as d:
    ...     p = pathlib.Path(d) / "l-idx1-ubyte"; _ = p.write_bytes(raw)
    ...     read_idx(p).tolist()
    [3, 7]
"""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np

from calibrant.data.base import DataFileError, DatasetInfo
from calibrant.data.cache import cached
from calibrant.data.longtail import select_array_split
from calibrant.registry import DATASETS

__all__ = ["FASHION_MNIST_CLASSES", "SYSTEM_DIR", "read_idx", "fashion_mnist"]

FASHION_MNIST_CLASSES = (
    "t-shirt/top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle_boot",
)
SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one idx file (``.gz`` decompressed transparently).

    Raises:
        ValueError: naming the file on a bad magic number or a size that does not match the header.
        OSError: naming the file when the gzip stream is corrupt or truncated.
    """
    path = Path(path)
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as err:
        if isinstance(err, FileNotFoundError):
            raise
        raise DataFileError(path, f"cannot read idx file {str(path)!r}: {err}") from err
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _DTYPES:
        raise ValueError(f"{str(path)!r} is not an idx file (bad magic number)")
    ndim = raw[3]
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    dtype = np.dtype(_DTYPES[raw[2]])
    expected = int(np.prod(dims)) * dtype.itemsize
    body = raw[4 + 4 * ndim :]
    if len(body) != expected:
        raise ValueError(
            f"{str(path)!r}: header promises {expected} data bytes for shape {dims}, "
            f"found {len(body)}"
        )
    return np.frombuffer(body, dtype).reshape(dims).astype(dtype.newbyteorder("="))


def _find(base: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (base / name).exists():
            return base / name
    return None


def _folder(root) -> Path:
    candidates = []
    if root is not None:
        candidates += [Path(root).expanduser(), Path(root).expanduser() / "fashion-mnist"]
    elif os.environ.get("CALIBRANT_DATA"):
        candidates.append(Path(os.environ["CALIBRANT_DATA"]) / "fashion-mnist")
    candidates.append(SYSTEM_DIR)  # the Debian package, also behind a data root that lacks it
    for c in candidates:
        if all(_find(c, s) for pair in _FILES.values() for s in pair):
            return c
    stems = ", ".join(s + "[.gz]" for pair in _FILES.values() for s in pair)
    raise FileNotFoundError(
        f"Fashion-MNIST not found: expected {stems} in one of "
        f"{', '.join(repr(str(c)) for c in candidates)} "
        "(Debian: apt-get install dataset-fashion-mnist)"
    )


@DATASETS.register("fashion_mnist", task="multiclass", spatial_dims=0)
def fashion_mnist(
    root=None,
    split: str = "train",
    *,
    transform=None,
    val_fraction: float = 0.1,
    seed: int = 0,
    imbalance_ratio: float | None = None,
    max_per_class: int | None = None,
    cache_dir=None,
    use_cache: bool = True,
):
    """Fashion-MNIST; ``split`` in train/val/trainval/test (see ``select_split``)."""
    folder = _folder(root)
    files = {p: [_find(folder, s) for s in stems] for p, stems in _FILES.items()}

    def build():
        out = {}
        for p, (img, lab) in files.items():
            x, y = read_idx(img), read_idx(lab)
            if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
                raise ValueError(f"{img} / {lab}: shapes {x.shape} and {y.shape} do not match")
            out[f"x_{p}"], out[f"y_{p}"] = x, y.astype(np.int64)
        return out

    d = cached(
        "fashion-mnist",
        [f for v in files.values() for f in v],
        {},
        build,
        cache_dir=cache_dir,
        use_cache=use_cache,
        data_root=folder,
    )
    info = DatasetInfo("fashion_mnist", 10, FASHION_MNIST_CLASSES, in_channels=1)
    return select_array_split(
        split,
        d,
        info,
        transform=transform,
        convert=lambda im: im[None].float().div_(255.0),
        val_fraction=val_fraction,
        seed=seed,
        imbalance_ratio=imbalance_ratio,
        max_per_class=max_per_class,
    )
