"""CIFAR-10 from the JPEG tree (tarball or folders) or the official python pickle batches.

Layouts, tried in this order below the dataset folder:

* ``cifar-10-batches-py/`` (the official release): ``data_batch_1`` .. ``data_batch_5``,
  ``test_batch`` and ``batches.meta`` (pickles with ``data`` uint8 ``(N, 3072)`` in channel-major
  order and ``labels``);
* ``CIFAR-10-images.tar.gz`` or its extracted folders ``train/<class>/*.jpg`` and
  ``test/<class>/*.jpg``. JPEGs are decoded with Pillow (the ``data`` extra). These files are lossy
  re-encodes of CIFAR-10, not the original pixels: say so wherever results on them are reported.

Classes are in the official order (airplane .. truck; for the JPEG tree, the sorted folder names,
which give the same order). Images are kept as uint8 ``(N, 32, 32, 3)`` in memory (decoded once and
cached) and converted per item to float32 ``(3, 32, 32)`` in [0, 1], then standardised with the
usual CIFAR-10 channel mean/std when ``normalize=True``.

Example:
    >>> x = to_float_chw(np.full((32, 32, 3), 255, np.uint8), normalize=False)
    >>> tuple(x.shape), float(x.max())
    ((3, 32, 32), 1.0)
"""

from __future__ import annotations

import io
import pickle
import re
from functools import partial
from pathlib import Path

import numpy as np
import torch

from calibrant.data.base import DataFileError, DatasetInfo, dataset_dir, tree_files
from calibrant.data.cache import cached
from calibrant.data.longtail import select_array_split
from calibrant.registry import DATASETS

__all__ = [
    "CIFAR10_CLASSES",
    "to_float_chw",
    "read_cifar_pickles",
    "read_cifar_jpegs",
    "load_cifar10",
    "cifar10",
]

CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
_TAR = "CIFAR-10-images.tar.gz"
_PKL = "cifar-10-batches-py"
_JPG_RE = re.compile(r"(?:^|/)(train|test)/([^/]+)/([^/]+\.jpe?g)$", re.I)


def to_float_chw(image: np.ndarray | torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """uint8 ``(H, W, 3)`` -> float32 ``(3, H, W)`` in [0, 1], optionally standardised."""
    x = torch.as_tensor(image).permute(2, 0, 1).float().div_(255.0)
    if normalize:
        mean = torch.tensor(CIFAR10_MEAN).view(3, 1, 1)
        std = torch.tensor(CIFAR10_STD).view(3, 1, 1)
        x = (x - mean) / std
    return x


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            d = pickle.load(f, encoding="bytes")
    except Exception as err:
        if isinstance(err, FileNotFoundError):
            raise
        raise DataFileError(path, f"cannot read CIFAR batch {str(path)!r}: {err}") from err
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in d.items()}


def read_cifar_pickles(folder: Path) -> dict:
    """Decode the official python batches into ``x_train/y_train/x_test/y_test`` and ``classes``."""
    out = {}
    for part, names in (
        ("train", [f"data_batch_{i}" for i in range(1, 6)]),
        ("test", ["test_batch"]),
    ):
        xs, ys = [], []
        for name in names:
            d = _unpickle(folder / name)
            data = np.asarray(d["data"], np.uint8)
            if data.ndim != 2 or data.shape[1] != 3072:
                raise ValueError(
                    f"{folder / name}: data has shape {data.shape}, expected (N, 3072)"
                )
            xs.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
            ys.append(np.asarray(d["labels"], np.int64))
        out[f"x_{part}"] = np.ascontiguousarray(np.concatenate(xs))
        out[f"y_{part}"] = np.concatenate(ys)
    meta = folder / "batches.meta"
    if meta.exists():
        names = _unpickle(meta)["label_names"]
        out["classes"] = [n.decode() if isinstance(n, bytes) else n for n in names]
    else:
        out["classes"] = list(CIFAR10_CLASSES)
    return out


def _decode_jpeg(data: bytes, where: str) -> np.ndarray:
    from PIL import Image  # optional (the data extra), needed only for the JPEG tree

    try:
        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(im.convert("RGB"), np.uint8)
    except Exception as err:
        raise DataFileError(where, f"cannot decode JPEG {where!r}: {err}") from err


def read_cifar_jpegs(folder: Path) -> dict:
    """Decode the JPEG tree (tarball or folders) into ``x_*`` uint8 ``(N, H, W, 3)``, ``y_*``."""
    items: dict[str, list] = {"train": [], "test": []}
    for m, data, where in tree_files(folder, _TAR, _JPG_RE, "CIFAR-10"):
        items[m.group(1)].append((m.group(2), m.group(3), _decode_jpeg(data, where)))
    classes = sorted({c for c, _, _ in items["train"]})
    index = {c: i for i, c in enumerate(classes)}
    out = {"classes": classes}
    for part, rows in items.items():
        if not rows:
            raise FileNotFoundError(f"no {part}/<class>/*.jpg images found in {str(folder)!r}")
        rows.sort(key=lambda r: (r[0], r[1]))
        out[f"x_{part}"] = np.stack([r[2] for r in rows])
        out[f"y_{part}"] = np.array([index[r[0]] for r in rows], np.int64)
    return out


def load_cifar10(root=None, cache_dir=None, use_cache: bool = True) -> dict:
    """Decode CIFAR-10 once (cached): pickles if present, else the JPEG tree."""
    folder = None
    if root is not None:
        p = Path(root).expanduser()
        for cand in (p, p / "cifar10_jpg", p / "cifar10"):
            if (cand / _PKL).is_dir() or (cand / _TAR).exists() or (cand / "train").is_dir():
                folder = cand
                break
    if folder is None:
        base = dataset_dir(root, "cifar10_jpg", expected=_TAR) if root is None else None
        folder = base
    if folder is None or not (
        (folder / _PKL).is_dir() or (folder / _TAR).exists() or (folder / "train").is_dir()
    ):
        where = folder or root
        raise FileNotFoundError(
            f"CIFAR-10 not found in {str(where)!r}: expected {_PKL}/ (python batches), {_TAR} or "
            "train/<class>/*.jpg and test/<class>/*.jpg"
        )
    if (folder / _PKL).is_dir():
        src = folder / _PKL
        name, sources = "cifar10-pkl", sorted(p for p in src.iterdir() if p.is_file())
        build = partial(read_cifar_pickles, src)
    else:
        tar = folder / _TAR
        name = "cifar10-jpg"
        sources = [tar] if tar.exists() else sorted(folder.glob("*/*/*.jpg"))
        build = partial(read_cifar_jpegs, folder)
    return cached(
        name, sources, {}, build, cache_dir=cache_dir, use_cache=use_cache, data_root=folder
    )


@DATASETS.register("cifar10", task="multiclass", spatial_dims=0)
def cifar10(
    root=None,
    split: str = "train",
    *,
    normalize: bool = True,
    transform=None,
    val_fraction: float = 0.1,
    seed: int = 0,
    imbalance_ratio: float | None = None,
    max_per_class: int | None = None,
    cache_dir=None,
    use_cache: bool = True,
):
    """CIFAR-10: items ``(x (3, 32, 32) float32, y int64)``; ``split`` in train/val/trainval/test.

    ``val`` is a stratified, seeded ``val_fraction`` of the official train part; with
    ``imbalance_ratio`` the train part is long-tailed (CIFAR-10-LT) and with ``max_per_class``
    each of its classes is capped (a smaller balanced set), see
    :func:`calibrant.data.longtail.select_split`.
    """
    d = load_cifar10(root, cache_dir, use_cache)
    info = DatasetInfo("cifar10", len(d["classes"]), tuple(d["classes"]), in_channels=3)
    return select_array_split(
        split,
        d,
        info,
        transform=transform,
        convert=lambda im: to_float_chw(im, normalize),
        val_fraction=val_fraction,
        seed=seed,
        imbalance_ratio=imbalance_ratio,
        max_per_class=max_per_class,
    )
