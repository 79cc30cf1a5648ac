"""Medical Segmentation Decathlon layout (``imagesTr/``, ``labelsTr/``, optional ``dataset.json``).

Any MSD-style task folder loads the same way (Hippocampus here; FLARE and other Decathlon tasks
when present). Volumes keep nibabel's ``(X, Y, Z)`` axis order; 4D images (several modalities)
become channels, so images are ``(C, X, Y, Z)`` float32 and labels ``(X, Y, Z)`` int64. The
spacing of each case is the header's ``zooms`` ``(dx, dy, dz)``. Intensities are z-scored per
volume and channel by default (``normalize="zscore"``; ``"minmax"`` or ``None`` also possible).

There is no official test split, so cases are split 70/10/20 by a seeded permutation of the case
names (:func:`calibrant.data.acdc.seeded_case_split`). Two views:

* :class:`MSDVolumes` for whole-volume evaluation (optionally padded to a common ``pad_to`` size);
* :class:`MSDPatches` for training: ``samples_per_volume`` random patches of ``patch_size`` per
  case and epoch, positions drawn through a generator (volumes smaller than the patch are padded).

Example:
    >>> pad_to_size(np.ones((2, 3)), (4, 3)).shape
    (4, 3)
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from calibrant._files import read_json
from calibrant.data.acdc import seeded_case_split
from calibrant.data.base import (
    DatasetInfo,
    ForegroundView,
    dataset_dir,
    read_nifti,
)
from calibrant.data.cache import cached_volumes
from calibrant.registry import DATASETS

__all__ = ["pad_to_size", "MSDVolumes", "MSDPatches", "msd_hippocampus", "msd"]

HIPPOCAMPUS_CLASSES = ("background", "anterior", "posterior")


def pad_to_size(x: np.ndarray, size: Sequence[int], fill: float = 0) -> np.ndarray:
    """Pad the last ``len(size)`` axes of ``x`` symmetrically up to ``size`` (never crops).

    Example:
        >>> pad_to_size(np.arange(2), (5,)).tolist()
        [0, 0, 1, 0, 0]
    """
    lead = x.ndim - len(size)
    pads = [(0, 0)] * lead
    for n, s in zip(x.shape[lead:], size, strict=True):
        d = max(int(s) - n, 0)
        pads.append((d // 2, d - d // 2))
    return np.pad(x, pads, constant_values=fill) if any(p[1] for p in pads) else x


def _strip_nii(name: str) -> str:
    return name[:-7] if name.endswith(".nii.gz") else name[:-4]


def _list_cases(folder: Path) -> tuple[list[tuple[str, Path, Path]], dict]:
    meta_path = folder / "dataset.json"
    meta: dict = read_json(meta_path) if meta_path.exists() else {}
    img_dir, lab_dir = folder / "imagesTr", folder / "labelsTr"
    if not img_dir.is_dir() or not lab_dir.is_dir():
        raise FileNotFoundError(
            f"MSD task folder {str(folder)!r} must hold imagesTr/ and labelsTr/ with matching "
            "NAME.nii.gz files"
        )
    if meta.get("training"):
        pairs = [
            ((folder / t["image"]).resolve(), (folder / t["label"]).resolve())
            for t in meta["training"]
        ]
    else:
        pairs = [
            (p, lab_dir / p.name)
            for p in sorted(img_dir.iterdir())
            if not p.name.startswith(".") and p.name.endswith((".nii.gz", ".nii"))
        ]
    missing = [str(lab) for _, lab in pairs if not lab.exists()]
    missing += [str(img) for img, _ in pairs if not img.exists()]
    if missing:
        raise FileNotFoundError(
            f"MSD task {str(folder)!r}: expected files not found: {missing[:5]}"
        )
    if not pairs:
        raise FileNotFoundError(f"no NAME.nii.gz volumes in {str(img_dir)!r}")
    return [(_strip_nii(i.name), i, lab) for i, lab in pairs], meta


def _load_case(image_path: Path, label_path: Path, normalize: str | None):
    def load(path):
        return read_nifti(path, "NIfTI")

    img, image = load(image_path)
    _, label = load(label_path)
    image = image.astype(np.float32)
    image = image[None] if image.ndim == 3 else np.moveaxis(image, -1, 0)
    if label.shape != image.shape[1:]:
        raise ValueError(
            f"{str(label_path)!r}: label shape {label.shape} != image shape {image.shape[1:]}"
        )
    if normalize == "zscore":
        mean = image.mean(axis=(1, 2, 3), keepdims=True)
        std = image.std(axis=(1, 2, 3), keepdims=True)
        image = (image - mean) / np.maximum(std, 1e-8)
    elif normalize == "minmax":
        lo = image.min(axis=(1, 2, 3), keepdims=True)
        hi = image.max(axis=(1, 2, 3), keepdims=True)
        image = (image - lo) / np.maximum(hi - lo, 1e-8)
    elif normalize is not None:
        raise ValueError(f"normalize must be 'zscore', 'minmax' or None, got {normalize!r}")
    spacing = tuple(float(z) for z in img.header.get_zooms()[:3])
    return image.astype(np.float32), np.rint(label).astype(np.int16), spacing


class MSDVolumes(ForegroundView, Dataset):
    """Whole volumes of one split of an MSD-style task: ``(image (C, X, Y, Z), label (X, Y, Z))``.

    Args:
        folder: the task folder (holding ``imagesTr/`` and ``labelsTr/``).
        split: ``"train"``, ``"val"``, ``"test"`` or ``"all"``.
        name: dataset name used in :class:`DatasetInfo`.
        fractions: train/val/test fractions of the seeded case split.
        seed: seed of the case split.
        normalize: per-volume intensity normalisation (``"zscore"``, ``"minmax"``, ``None``).
        pad_to: pad every volume (symmetrically, image 0 / label 0) to at least this size.
        class_names: default from ``dataset.json`` ``labels``, else ``"0".."K-1"``.
        transform: optional joint transform.
        cache_dir, use_cache: decode cache (see :func:`calibrant.data.cache.cached`).
        foreground: classes that become label 1 of a binary "foreground vs rest" view (``[1, 2]``
            whole hippocampus); labels are then ``(1, X, Y, Z)`` in {0, 1} (after the
            transform, also for :class:`MSDPatches`) and ``info`` has one class
            (:func:`~calibrant.data.base.foreground_info`). ``None`` keeps every class.

    Attributes:
        case_ids, spacings: per item.
    """

    def __init__(
        self,
        folder: str | os.PathLike,
        split: str = "train",
        *,
        name: str = "msd",
        fractions: Sequence[float] = (0.7, 0.1, 0.2),
        seed: int = 0,
        normalize: str | None = "zscore",
        pad_to: Sequence[int] | None = None,
        class_names: Sequence[str] | None = None,
        transform: Callable | None = None,
        cache_dir: str | os.PathLike | None = None,
        use_cache: bool = True,
        foreground: Sequence[int] | None = None,
    ) -> None:
        folder = Path(folder)
        if split not in ("train", "val", "test", "all"):
            raise ValueError(f"split must be train, val, test or all, got {split!r}")
        cases, meta = _list_cases(folder)
        self.case_split = seeded_case_split([c[0] for c in cases], fractions, seed)
        keep = {c[0] for c in cases} if split == "all" else set(self.case_split[split])
        chosen = [i for i, c in enumerate(cases) if c[0] in keep]
        # all cases are decoded and cached together, so every split and seed reuses one entry
        options = {"normalize": normalize, "pad_to": list(pad_to) if pad_to else None}

        def decode(image_path, label_path):
            image, label, spacing = _load_case(image_path, label_path, normalize)
            if pad_to is not None:
                image, label = pad_to_size(image, pad_to), pad_to_size(label, pad_to)
            return image, label, spacing

        self.images, self.labels, self.spacings = cached_volumes(
            "msd",
            options,
            [c[1:] for c in cases],
            decode,
            chosen,
            cache_dir=cache_dir,
            use_cache=use_cache,
            data_root=folder,
        )
        self.case_ids = [cases[i][0] for i in chosen]
        if class_names is None:
            labels = meta.get("labels")
            if labels:
                class_names = [labels[k] for k in sorted(labels, key=int)]
            else:
                k = int(max(int(lab.max()) for lab in self.labels)) + 1
                class_names = [str(i) for i in range(k)]
        common = self.spacings[0] if len(set(self.spacings)) == 1 else None
        self.info = DatasetInfo(
            name,
            len(class_names),
            tuple(class_names),
            spatial_dims=3,
            spacing=common,
            task="segmentation",
            in_channels=int(self.images[0].shape[0]),
        )
        self._set_foreground(foreground)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, label = self.images[index], self.labels[index].long()
        if self.transform is not None:
            image, label = self.transform(image, label)
        return image, self._target(label)


class MSDPatches(Dataset):
    """Random 3D training patches: ``samples_per_volume`` items per case, drawn via ``generator``.

    Args:
        volumes: an :class:`MSDVolumes` (usually the train split).
        patch_size: ``(px, py, pz)``.
        samples_per_volume: patches per case per epoch (``len = cases * samples_per_volume``).
        generator: source of randomness for the patch positions.
        transform: optional joint transform applied to each patch.
    """

    def __init__(
        self,
        volumes: MSDVolumes,
        patch_size: Sequence[int] = (32, 32, 32),
        samples_per_volume: int = 1,
        generator: torch.Generator | None = None,
        transform: Callable | None = None,
    ) -> None:
        if len(patch_size) != 3 or min(patch_size) < 1:
            raise ValueError(f"patch_size must be three positive ints, got {patch_size}")
        self.volumes, self.patch_size = volumes, tuple(int(p) for p in patch_size)
        self.samples_per_volume = int(samples_per_volume)
        self.generator, self.transform, self.info = generator, transform, volumes.info

    def __len__(self) -> int:
        return len(self.volumes) * self.samples_per_volume

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        v = index // self.samples_per_volume
        image, label = self.volumes.images[v], self.volumes.labels[v]
        if any(n < p for n, p in zip(image.shape[1:], self.patch_size, strict=True)):
            image = torch.from_numpy(pad_to_size(image.numpy(), self.patch_size))
            label = torch.from_numpy(pad_to_size(label.numpy(), self.patch_size))
        starts = [
            int(torch.randint(n - p + 1, (), generator=self.generator))
            for n, p in zip(image.shape[1:], self.patch_size, strict=True)
        ]
        sl = tuple(slice(s, s + p) for s, p in zip(starts, self.patch_size, strict=True))
        patch, lab = image[(slice(None), *sl)], label[sl].long()
        if self.transform is not None:
            patch, lab = self.transform(patch, lab)
        return patch, self.volumes._target(lab)


@DATASETS.register("msd", task="segmentation", spatial_dims=3)
def msd(root=None, split: str = "train", task: str = "msd_hippocampus", **opts) -> Dataset:
    """Any MSD-style task folder ``root/task`` (or ``root`` itself when it holds ``imagesTr/``).

    ``patch_size``/``samples_per_volume``/``generator`` select the patch view (training).
    """
    patch = {k: opts.pop(k) for k in ("patch_size", "samples_per_volume", "generator") if k in opts}
    patch_transform = opts.pop("transform", None) if patch else None
    if root is not None and (Path(root) / "imagesTr").is_dir():
        folder = Path(root)
    else:
        folder = dataset_dir(root, task, expected="imagesTr/ and labelsTr/")
    vols = MSDVolumes(folder, split, **opts)
    return MSDPatches(vols, transform=patch_transform, **patch) if patch else vols


@DATASETS.register("msd_hippocampus", task="segmentation", spatial_dims=3)
def msd_hippocampus(root=None, split: str = "train", **opts) -> Dataset:
    """MSD Task04 Hippocampus (labels: background, anterior, posterior)."""
    opts.setdefault("name", "msd_hippocampus")
    opts.setdefault("class_names", HIPPOCAMPUS_CLASSES)
    return msd(root, split, task="msd_hippocampus", **opts)
