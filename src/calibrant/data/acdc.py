"""ACDC cardiac cine-MRI segmentation (Bernard et al., IEEE TMI 2018): 2D slices and 3D volumes.

Two on-disk layouts are read:

* ``"h5"``: the preprocessed volumes ``ACDC_training_volumes/patientNNN_frameFF.h5`` with
  datasets ``image`` (float32 ``(S, H, W)`` in [0, 1]) and ``label`` (uint8 ``(S, H, W)``); no
  spacing is stored, so distances are in pixels (spacing ``(1, 1, 1)``).
* ``"nifti"``: the official release, ``patientNNN/patientNNN_frameFF.nii.gz`` with
  ``patientNNN_frameFF_gt.nii.gz`` and ``Info.cfg``; only frames with a ground truth (ED and ES)
  are used. The nibabel ``(X, Y, Z)`` array is transposed to ``(Z, Y, X)`` = ``(S, H, W)`` (the
  order of the h5 copy), the spacing is read from the header (``(dz, dy, dx)`` in mm) and
  intensities are min-max scaled per volume to [0, 1] like the h5 copy.

Labels: 0 background, 1 right ventricle, 2 myocardium, 3 left ventricle.

Splits are by patient: the ``split_ssl4mis_patients.txt`` file (70 train / 10 val / 20 test
patients) when present, else a seeded 70/10/20 permutation of the patients found.

Every slice is cropped/padded to a common ``size`` (default 192×192). ``crop="center"`` (default)
centre-crops or zero-pads (label 0) each axis; ``crop="marginloss"`` first takes the fixed window
``[16:208, 16:208]`` of the MbLS/CRaC code and then pads to ``size``. On the dominant 256×216 shape
the fixed window keeps rows 16..207 and columns 16..207 (an off-centre window: 16 rows dropped at
the top, 48 at the bottom, 16 columns on the left, 8 on the right), and on the smaller images
(e.g. 154×224) it yields fewer than 192 rows, so a pad is needed anyway; the centre crop
(rows 32..223 and columns 12..203 on 256×216) is symmetric and defined for every shape.
``downsample=f`` reduces the in-plane resolution by an integer factor after the crop (area
average for the image, the centre pixel of each f×f block for the label) for CPU runs.

Example:
    >>> center_crop_or_pad(np.ones((1, 256, 216), np.float32), (192, 192)).shape
    (1, 192, 192)
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from calibrant.data.base import (
    DataFileError,
    DatasetInfo,
    ForegroundView,
    dataset_dir,
    read_nifti,
    require_files,
)
from calibrant.data.cache import cached_volumes
from calibrant.registry import DATASETS

__all__ = [
    "ACDC_CLASSES",
    "read_patient_split",
    "seeded_case_split",
    "center_crop_or_pad",
    "ACDCVolumes",
    "ACDCSlices",
    "acdc",
]

ACDC_CLASSES = ("background", "right_ventricle", "myocardium", "left_ventricle")
_H5_DIR = "ACDC_training_volumes"
_SPLIT_FILE = "split_ssl4mis_patients.txt"
_H5_RE = re.compile(r"^patient(\d{3})_frame(\d{2})\.h5$")
_NII_RE = re.compile(r"^patient(\d{3})_frame(\d{2})\.nii(\.gz)?$")


def read_patient_split(path: str | os.PathLike) -> dict[str, list[int]]:
    """Parse the patient split file into ``{"train": [...], "val": [...], "test": [...]}``.

    Lines are ``name: id id ...``; a line ``name: all other patients of A-B`` takes every patient
    of ``A..B`` not listed elsewhere. ``#`` starts a comment.

    Raises:
        ValueError: naming the file on a malformed line or a patient in two splits.
    """
    path = Path(path)
    explicit: dict[str, list[int]] = {}
    rest: dict[str, tuple[int, int]] = {}
    for lineno, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, body = line.partition(":")
        if not sep:
            raise ValueError(f"{path}:{lineno}: expected 'split: ids', got {raw!r}")
        name = name.strip()
        m = re.search(r"all other patients of (\d+)\s*-\s*(\d+)", body)
        if m:
            rest[name] = (int(m.group(1)), int(m.group(2)))
            continue
        try:
            explicit[name] = [int(t) for t in body.split()]
        except ValueError:
            raise ValueError(f"{path}:{lineno}: non-numeric patient id in {raw!r}") from None
    listed = [p for ids in explicit.values() for p in ids]
    if len(listed) != len(set(listed)):
        raise ValueError(f"{path}: a patient appears in more than one split")
    out = dict(explicit)
    for name, (a, b) in rest.items():
        out[name] = [p for p in range(a, b + 1) if p not in set(listed)]
    return out


def seeded_case_split(
    cases: Sequence, fractions: Sequence[float] = (0.7, 0.1, 0.2), seed: int = 0
) -> dict[str, list]:
    """Seeded train/val/test split of case identifiers (``round`` of each fraction; test = rest).

    Example:
        >>> s = seeded_case_split(list(range(10)), seed=0)
        >>> [len(s[k]) for k in ("train", "val", "test")]
        [7, 1, 2]
    """
    if len(fractions) != 3 or abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"fractions must be three numbers summing to 1, got {fractions}")
    cases = sorted(cases)
    perm = torch.randperm(len(cases), generator=torch.Generator().manual_seed(seed)).tolist()
    n_tr = int(round(fractions[0] * len(cases)))
    n_va = int(round(fractions[1] * len(cases)))
    pick = [cases[i] for i in perm]
    return {
        "train": sorted(pick[:n_tr]),
        "val": sorted(pick[n_tr : n_tr + n_va]),
        "test": sorted(pick[n_tr + n_va :]),
    }


def center_crop_or_pad(x: np.ndarray, size: Sequence[int], fill: float = 0) -> np.ndarray:
    """Centre-crop or pad the last ``len(size)`` axes of ``x`` to ``size`` (pad value ``fill``).

    Cropping removes ``(n - s) // 2`` elements at the start; padding adds ``(s - n) // 2``.

    Example:
        >>> center_crop_or_pad(np.arange(5), (3,)).tolist()
        [1, 2, 3]
        >>> center_crop_or_pad(np.arange(2), (4,)).tolist()
        [0, 0, 1, 0]
    """
    lead = x.ndim - len(size)
    slices, pads = [slice(None)] * lead, [(0, 0)] * lead
    for n, s in zip(x.shape[lead:], size, strict=True):
        if n >= s:
            a = (n - s) // 2
            slices.append(slice(a, a + s))
            pads.append((0, 0))
        else:
            slices.append(slice(None))
            a = (s - n) // 2
            pads.append((a, s - n - a))
    out = x[tuple(slices)]
    if any(p != (0, 0) for p in pads):
        out = np.pad(out, pads, constant_values=fill)
    return np.ascontiguousarray(out)


def _fit(image: np.ndarray, label: np.ndarray, size, crop: str, downsample: int):
    if crop == "marginloss":
        image, label = image[:, 16:208, 16:208], label[:, 16:208, 16:208]
    elif crop != "center":
        raise ValueError(f"crop must be 'center' or 'marginloss', got {crop!r}")
    image = center_crop_or_pad(image, size, 0.0)
    label = center_crop_or_pad(label, size, 0)
    if downsample > 1:
        f = downsample
        if size[0] % f or size[1] % f:
            raise ValueError(f"size {tuple(size)} is not divisible by downsample={f}")
        s, h, w = image.shape
        image = image.reshape(s, h // f, f, w // f, f).mean(axis=(2, 4), dtype=np.float32)
        label = np.ascontiguousarray(label[:, f // 2 :: f, f // 2 :: f])
    return image.astype(np.float32), label.astype(np.uint8)


def _read_h5(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import h5py  # optional (the data extra), needed only for the .h5 layout

    try:
        with h5py.File(path, "r") as f:
            return np.asarray(f["image"][:], np.float32), np.asarray(f["label"][:], np.uint8)
    except (OSError, KeyError) as err:
        if not Path(path).exists():
            raise FileNotFoundError(f"ACDC volume {str(path)!r} not found") from err
        raise DataFileError(path, f"cannot read ACDC volume {str(path)!r}: {err}") from err


def _read_nifti(image_path: Path, label_path: Path):
    def load(path):
        return read_nifti(path, "ACDC NIfTI")

    img, image = load(image_path)
    _, label = load(label_path)
    image, label = image.astype(np.float32), np.rint(label).astype(np.uint8)
    if image.ndim == 4:
        image = image[..., 0]
    image = np.ascontiguousarray(image.transpose(2, 1, 0))
    label = np.ascontiguousarray(label.transpose(2, 1, 0))
    lo, hi = float(image.min()), float(image.max())
    image = (image - lo) / (hi - lo) if hi > lo else np.zeros_like(image)
    zooms = [float(z) for z in img.header.get_zooms()[:3]]
    return image.astype(np.float32), label, (zooms[2], zooms[1], zooms[0])


def _find_cases(folder: Path, layout: str):
    """List ``(patient, frame, files)`` for the chosen layout (``auto`` picks what is there)."""
    h5_dir = folder / _H5_DIR
    if layout in ("auto", "h5") and h5_dir.is_dir():
        cases = []
        for p in sorted(h5_dir.iterdir()):
            m = _H5_RE.match(p.name)
            if m:
                cases.append((int(m.group(1)), int(m.group(2)), (p,)))
        if cases:
            return "h5", cases
    if layout in ("auto", "nifti"):
        cases = []
        for pdir in sorted(folder.glob("patient[0-9][0-9][0-9]")):
            for p in sorted(pdir.iterdir()):
                m = _NII_RE.match(p.name)
                if not m:
                    continue
                gt = p.with_name(p.name.replace(".nii", "_gt.nii"))
                if gt.exists():
                    cases.append((int(m.group(1)), int(m.group(2)), (p, gt)))
        if cases:
            return "nifti", cases
    raise FileNotFoundError(
        f"no ACDC volumes found in {str(folder)!r}: expected {_H5_DIR}/patientNNN_frameFF.h5 "
        "(preprocessed copy) or patientNNN/patientNNN_frameFF.nii.gz with "
        "patientNNN_frameFF_gt.nii.gz (official release)"
    )


def _resolve_folder(root) -> Path:
    if root is not None:
        p = Path(root).expanduser()
        if (p / _H5_DIR).is_dir() or any(p.glob("patient[0-9][0-9][0-9]")):
            return p
        if (p / "acdc").is_dir():
            return p / "acdc"
        if p.is_dir():
            return p  # _find_cases names the expected files
    return dataset_dir(root, "acdc", expected=f"{_H5_DIR}/patientNNN_frameFF.h5")


class ACDCVolumes(ForegroundView, Dataset):
    """ACDC volumes of one split (evaluation view): ``(image (S, 1, H, W), label (S, H, W))``.

    The slices of a volume form the batch dimension, so a 2D network can run on one item as is
    (``slice_stacks = True``: the experiment evaluates one volume per batch).

    Args:
        root: data root (holding ``acdc/``) or the ACDC folder itself; default ``$CALIBRANT_DATA``.
        split: ``"train"``, ``"val"``, ``"test"`` or ``"all"``.
        size: common in-plane size after crop/pad.
        crop: ``"center"`` or ``"marginloss"`` (fixed ``[16:208, 16:208]`` window, then pad).
        downsample: integer in-plane reduction factor (1 = none).
        layout: ``"auto"``, ``"h5"`` or ``"nifti"``.
        split_file: patient split file; default ``split_ssl4mis_patients.txt`` next to the data,
            else a seeded 70/10/20 patient split with ``seed``.
        seed: seed of the fallback split.
        transform: optional joint transform applied to ``(image, label)``.
        cache_dir: decode cache folder; ``use_cache=False`` disables caching.
        foreground: classes that become label 1 of a binary "foreground vs rest" view (``[3]``
            left ventricle, ``[1]`` right ventricle); labels are then ``(S, 1, H, W)`` in {0, 1}
            (after the transform) and ``info`` has one class (see
            :func:`calibrant.data.base.foreground_info`). ``None`` (default) keeps the 4 classes.
        train_patients: keep only this many of the training split's patients (a fixed subset,
            drawn with seed 0 whatever the run's seed, so every run of a comparison trains on the
            same patients); ``None`` keeps all. Validation and test splits are never reduced.

    Attributes:
        case_ids: ``"patientNNN_frameFF"`` per item. spacings: ``(dz, dy, dx)`` per item (after
        downsampling, in mm for NIfTI, pixels for h5).
    """

    #: Items are stacks of 2D slices, evaluated one volume per batch.
    slice_stacks = True

    def __init__(
        self,
        root: str | os.PathLike | None = None,
        split: str = "train",
        *,
        size: Sequence[int] = (192, 192),
        crop: str = "center",
        downsample: int = 1,
        layout: str = "auto",
        split_file: str | os.PathLike | None = None,
        seed: int = 0,
        transform: Callable | None = None,
        cache_dir: str | os.PathLike | None = None,
        use_cache: bool = True,
        foreground: Sequence[int] | None = None,
        train_patients: int | None = None,
    ) -> None:
        if split not in ("train", "val", "test", "all"):
            raise ValueError(f"split must be train, val, test or all, got {split!r}")
        if layout not in ("auto", "h5", "nifti"):
            raise ValueError(f"layout must be auto, h5 or nifti, got {layout!r}")
        if int(downsample) < 1:
            raise ValueError(f"downsample must be a positive integer, got {downsample}")
        folder = _resolve_folder(root)
        layout, cases = _find_cases(folder, layout)
        patients = sorted({c[0] for c in cases})
        sf = Path(split_file) if split_file is not None else folder / _SPLIT_FILE
        if split_file is not None:
            require_files([sf], "ACDC split file")
        if sf.exists():
            self.patient_split = read_patient_split(sf)
        else:
            self.patient_split = seeded_case_split(patients, seed=seed)
        keep = set(patients) if split == "all" else set(self.patient_split.get(split, []))
        if split == "train" and train_patients is not None:
            keep = _patient_subset(keep, train_patients)
        chosen = [i for i, c in enumerate(cases) if c[0] in keep]
        if not chosen:
            raise FileNotFoundError(f"no ACDC volumes of split {split!r} found in {str(folder)!r}")
        size = tuple(int(s) for s in size)
        # all volumes are decoded and cached together, so every split reuses one cache entry
        options = {"size": size, "crop": crop, "downsample": int(downsample), "layout": layout}

        def decode(*files):
            if layout == "h5":
                image, label = _read_h5(files[0])
                spacing = (1.0, 1.0, 1.0)
            else:
                image, label, spacing = _read_nifti(*files)
            if image.shape != label.shape:
                raise ValueError(
                    f"{str(files[0])!r}: image {image.shape} and label {label.shape} differ"
                )
            image, label = _fit(image, label, size, crop, int(downsample))
            f = float(downsample)
            return image, label, (spacing[0], spacing[1] * f, spacing[2] * f)

        self.images, self.labels, self.spacings = cached_volumes(
            "acdc",
            options,
            [c[2] for c in cases],
            decode,
            chosen,
            cache_dir=cache_dir,
            use_cache=use_cache,
            data_root=folder,
        )
        cases = [cases[i] for i in chosen]
        self.patients = sorted({c[0] for c in cases})
        self.case_ids = [f"patient{p:03d}_frame{f:02d}" for p, f, _ in cases]
        self.layout = layout
        self.transform = transform
        self.info = DatasetInfo(
            "acdc",
            4,
            ACDC_CLASSES,
            spatial_dims=2,
            spacing=None,
            task="segmentation",
            in_channels=1,
        )
        self._set_foreground(foreground)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.images[index][:, None]
        label = self.labels[index].long()
        if self.transform is not None:
            image, label = self.transform(image, label)
        return image, self._target(label, 1)


class ACDCSlices(Dataset):
    """ACDC 2D slices of one split (training view): ``(image (1, H, W), label (H, W))``.

    With ``foreground`` the label is ``(1, H, W)`` in {0, 1} (see :class:`ACDCVolumes`).

    Takes the same arguments as :class:`ACDCVolumes` (it is built from one). The transform, if
    any, is applied per slice. ``slice_index[i] = (volume, slice)``.
    """

    def __init__(self, *args, transform: Callable | None = None, **kwargs) -> None:
        self.volumes = ACDCVolumes(*args, **kwargs)
        self.info = self.volumes.info
        self.transform = transform
        self.slice_index = [
            (v, s) for v, im in enumerate(self.volumes.images) for s in range(im.shape[0])
        ]

    def __len__(self) -> int:
        return len(self.slice_index)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        v, s = self.slice_index[index]
        image = self.volumes.images[v][s][None]
        label = self.volumes.labels[v][s].long()
        if self.transform is not None:
            image, label = self.transform(image, label)
        return image, self.volumes._target(label, 0)


def _patient_subset(patients: set[str], n: int) -> set[str]:
    """``n`` of ``patients``, drawn with a fixed seed (0) from their sorted list."""
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= len(patients):
        raise ValueError(f"train_patients must be an integer in [1, {len(patients)}], got {n!r}")
    order = np.random.default_rng(0).permutation(len(patients))
    ordered = sorted(patients)
    return {ordered[i] for i in order[:n]}


@DATASETS.register("acdc", task="segmentation", spatial_dims=2)
def acdc(root=None, split: str = "train", view: str | None = None, **opts) -> Dataset:
    """Build ACDC: ``view="slices"`` (default for ``train``) or ``"volumes"`` (default otherwise).

    Other options go to :class:`ACDCVolumes`.
    """
    view = view or ("slices" if split == "train" else "volumes")
    if view == "slices":
        return ACDCSlices(root, split, **opts)
    if view == "volumes":
        return ACDCVolumes(root, split, **opts)
    raise ValueError(f"view must be 'slices' or 'volumes', got {view!r}")
