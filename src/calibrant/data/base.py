"""Shared pieces of the dataset loaders: :class:`DatasetInfo`, file checks and datasets.

:class:`DatasetInfo` says what a model, loss and metric need to know about a set; the binary
"foreground vs rest" view of a segmentation set (:func:`foreground_info`,
:func:`binary_foreground`, :class:`ForegroundView`); finding and reading source files
(:func:`dataset_dir`, :func:`require_files`, :func:`tree_files`, :func:`read_nifti`, with
:class:`DataFileError` for a file that exists but cannot be read); and the in-memory datasets
(:class:`ArrayDataset`, :class:`IndexedSubset`). The decode cache is :mod:`calibrant.data.cache`.

Example:
    >>> info = DatasetInfo("seg", 3, ("bg", "a", "b"), spatial_dims=2, task="segmentation")
    >>> foreground_info(info, [2]).class_names
    ('b',)
"""

from __future__ import annotations

import os
import re
import tarfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from calibrant._paths import data_root

__all__ = [
    "ArrayDataset",
    "DataFileError",
    "DatasetInfo",
    "ForegroundView",
    "IndexedSubset",
    "binary_foreground",
    "dataset_dir",
    "foreground_info",
    "read_nifti",
    "require_files",
    "tree_files",
]


class DataFileError(OSError):
    """A data file exists but cannot be read or decoded (truncated, corrupt, wrong format).

    The message names the file; ``path`` holds it. A *missing* file or folder is a
    :class:`FileNotFoundError` instead, so that callers (``calibrant data check``) can tell
    the two apart.

    Example:
        >>> err = DataFileError("x.h5", "cannot read ACDC volume 'x.h5': truncated file")
        >>> isinstance(err, OSError), err.path, str(err)
        (True, 'x.h5', "cannot read ACDC volume 'x.h5': truncated file")
    """

    def __init__(self, path: str | os.PathLike, message: str) -> None:
        super().__init__(message)
        self.path = str(path)

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class DatasetInfo:
    """What a model, loss and metric need to know about a dataset.

    Args:
        name: registry name of the dataset.
        num_classes: number of classes (labels for multi-label sets).
        class_names: one name per class, in label order.
        ignore_index: target value that marks pixels/samples to ignore (``-100`` when unused).
        spatial_dims: 0 for vector/image classification, 2 or 3 for segmentation.
        spacing: voxel/pixel spacing of the samples when known and common to all, else ``None``
            (per-case spacings are exposed by the volume datasets).
        task: ``"multiclass"``, ``"multilabel"`` or ``"segmentation"``.
        in_channels: channels (or feature count, for vector data) of one input sample.

    Example:
        >>> DatasetInfo("toy", 2, ("a", "b"), task="multiclass").num_classes
        2
    """

    name: str
    num_classes: int
    class_names: tuple[str, ...]
    ignore_index: int = -100
    spatial_dims: int = 0
    spacing: tuple[float, ...] | None = None
    task: str = "multiclass"
    in_channels: int = 1

    def __post_init__(self) -> None:
        if len(self.class_names) != self.num_classes:
            raise ValueError(
                f"DatasetInfo {self.name!r}: {len(self.class_names)} class names for "
                f"num_classes={self.num_classes}"
            )
        if self.task not in ("multiclass", "multilabel", "segmentation"):
            raise ValueError(f"DatasetInfo {self.name!r}: unknown task {self.task!r}")


# ----------------------------------------------------------------------- binary (foreground) view


def foreground_info(info: DatasetInfo, foreground: Sequence[int]) -> DatasetInfo:
    """The :class:`DatasetInfo` of the binary "``foreground`` vs rest" view of a segmentation set.

    One label (``num_classes=1``, ``task="multilabel"``: a sigmoid channel), named by joining the
    foreground classes' names with ``+``; everything else (ignore index, spatial dims, spacing,
    input channels) is kept.

    Raises:
        ValueError: if ``foreground`` is empty, repeats a class, names a class outside
            ``0..num_classes-1`` or names every class.

    Example:
        >>> info = DatasetInfo("seg", 3, ("bg", "a", "b"), spatial_dims=3, task="segmentation")
        >>> b = foreground_info(info, [1, 2])
        >>> b.num_classes, b.class_names, b.task
        (1, ('a+b',), 'multilabel')
    """
    fg = [int(c) for c in foreground]
    if not fg:
        raise ValueError(f"{info.name}: foreground must name at least one class")
    if len(set(fg)) != len(fg):
        raise ValueError(f"{info.name}: foreground {fg} names a class twice")
    bad = [c for c in fg if not 0 <= c < info.num_classes]
    if bad:
        raise ValueError(
            f"{info.name}: foreground classes {bad} out of range 0..{info.num_classes - 1} "
            f"({', '.join(info.class_names)})"
        )
    if len(fg) == info.num_classes:
        raise ValueError(f"{info.name}: foreground {fg} names every class (nothing is 'rest')")
    name = "+".join(info.class_names[c] for c in fg)
    return replace(info, num_classes=1, class_names=(name,), task="multilabel")


def binary_foreground(
    label: torch.Tensor,
    foreground: Sequence[int],
    *,
    ignore_index: int = -100,
    channel_dim: int = 0,
) -> torch.Tensor:
    r"""Integer label map -> ``{0, 1}`` int64 target with a channel dim (``ignore_index`` kept).

    .. math::
        y'_i = \begin{cases} \text{ignore} & y_i = \text{ignore} \\
               1 & y_i \in F \\ 0 & \text{otherwise} \end{cases}

    The one channel is inserted at ``channel_dim`` so the target matches the ``(…, 1, *spatial)``
    logits of a one-channel (sigmoid) model: ``0`` for a sample ``(*spatial)``, ``1`` for a
    volume of 2D slices ``(S, *spatial)``.

    Args:
        label: integer class map.
        foreground: the classes ``F`` that become 1.
        ignore_index: value that stays as is.
        channel_dim: where the new channel axis goes.

    Shape:
        ``label`` of any shape; the output has one more dim (size 1 at ``channel_dim``).

    Example:
        >>> binary_foreground(torch.tensor([0, 1, 2, 3, -100]), [1, 2]).tolist()
        [[0, 1, 1, 0, -100]]
    """
    fg = torch.as_tensor([int(c) for c in foreground], dtype=label.dtype, device=label.device)
    out = torch.isin(label, fg).long()
    out = torch.where(label == ignore_index, torch.full_like(out, ignore_index), out)
    return out.unsqueeze(channel_dim)


class ForegroundView:
    """Mixin of the segmentation sets: an optional binary "foreground vs rest" view of the labels.

    A subclass calls :meth:`_set_foreground` once its ``info`` is set: with ``foreground`` given,
    ``info`` becomes :func:`foreground_info` and :meth:`_target` maps each label through
    :func:`binary_foreground`; with ``None`` labels are returned as they are.

    Example:
        >>> class Toy(ForegroundView):
        ...     def __init__(self, foreground):
        ...         self.info = DatasetInfo("toy", 3, ("bg", "a", "b"), task="segmentation")
        ...         self._set_foreground(foreground)
        >>> Toy([2])._target(torch.tensor([0, 1, 2])).tolist(), Toy(None).info.num_classes
        ([[0, 0, 1]], 3)
    """

    info: DatasetInfo
    foreground: list[int] | None = None

    def _set_foreground(self, foreground: Sequence[int] | None) -> None:
        self.foreground = None if foreground is None else [int(c) for c in foreground]
        if self.foreground is not None:
            self.info = foreground_info(self.info, self.foreground)

    def _target(self, label: torch.Tensor, channel_dim: int = 0) -> torch.Tensor:
        if self.foreground is None:
            return label
        return binary_foreground(
            label, self.foreground, ignore_index=self.info.ignore_index, channel_dim=channel_dim
        )


# --------------------------------------------------------------------------------------- paths


def dataset_dir(root: str | os.PathLike | None, *parts: str, expected: str = "") -> Path:
    """``data_root(root) / parts``; a missing folder raises naming the folder and the root.

    ``expected`` (for example ``"scene-train.arff, scene-test.arff"``) is added to the message.
    """
    what = f" holding {expected}" if expected else ""
    try:
        base = data_root(root)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{err}; expected {'/'.join(parts)}/{what} below it") from None
    path = base.joinpath(*parts)
    if not path.exists():
        raise FileNotFoundError(
            f"dataset folder {str(path)!r} not found (data root {str(base)!r}); expected "
            f"{'/'.join(parts)}/{what} below the data root"
        )
    return path


def tree_files(
    folder: Path, tarball: str, pattern: re.Pattern[str], what: str
) -> Iterator[tuple[re.Match[str], bytes, str]]:
    r"""``(match, content, where)`` of each file of a tree whose path matches ``pattern``.

    The tree is read from the gzipped tar ``folder / tarball`` when it exists, else from its
    extracted copy: the files three levels below ``folder`` (``part/class/file``), in sorted
    order. ``pattern`` is searched in the member name (tarball) or in the path relative to
    ``folder``; ``where`` names the file in messages (``tarball:member`` or the path).

    Raises:
        DataFileError: naming the tarball when it is truncated or not a gzip tar file (``what``
            names the data set in the message).

    Example:
        >>> import tempfile, pathlib
        >>> with tempfile.TemporaryDirectory() as d:
        ...     p = pathlib.Path(d, "train", "cat", "1.txt"); p.parent.mkdir(parents=True)
        ...     _ = p.write_bytes(b"x")
        ...     [(m.group(1), data) for m, data, _ in tree_files(
        ...         pathlib.Path(d), "none.tar.gz", re.compile(r"^(\w+)/cat/"), "toy")]
        [('train', b'x')]
    """
    tar = folder / tarball
    if not tar.exists():
        for path in sorted(folder.glob("*/*/*")):
            m = pattern.search(path.relative_to(folder).as_posix())
            if m and path.is_file():
                yield m, path.read_bytes(), str(path)
        return
    try:
        with tarfile.open(tar, "r:gz") as tf:
            for member in tf:
                m = pattern.search(member.name)
                if m and member.isfile():
                    yield m, tf.extractfile(member).read(), f"{tar}:{member.name}"
    except (tarfile.TarError, EOFError, OSError) as err:
        raise DataFileError(tar, f"cannot read {what} tarball {str(tar)!r}: {err}") from err


def require_files(paths: Iterable[Path], what: str) -> list[Path]:
    """Return ``paths`` as a list, raising ``FileNotFoundError`` listing any that are missing."""
    paths = [Path(p) for p in paths]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        shown = ", ".join(missing[:5]) + (
            f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        )
        raise FileNotFoundError(f"{what}: expected file(s) not found: {shown}")
    return paths


# --------------------------------------------------------------------------------------- cache


# ------------------------------------------------------------------------------------ datasets


class ArrayDataset(Dataset):
    """Map-style dataset over in-memory inputs and targets, with an optional joint transform.

    Args:
        inputs: a tensor ``(N, ...)`` or any sequence indexable by sample.
        targets: a tensor ``(N, ...)`` (class labels ``(N,)`` or multi-label ``(N, C)``).
        info: the :class:`DatasetInfo`.
        transform: optional callable ``(x, y) -> (x, y)``.
        convert: optional callable applied to ``inputs[i]`` before the transform (for example
            uint8 -> normalised float), so memory holds the compact form.

    Example:
        >>> info = DatasetInfo("toy", 2, ("a", "b"))
        >>> ds = ArrayDataset(torch.zeros(4, 3), torch.tensor([0, 1, 1, 0]), info)
        >>> x, y = ds[1]; (tuple(x.shape), int(y), len(ds))
        ((3,), 1, 4)
    """

    def __init__(
        self,
        inputs: Any,
        targets: torch.Tensor,
        info: DatasetInfo,
        transform: Callable | None = None,
        convert: Callable | None = None,
    ) -> None:
        if len(inputs) != len(targets):
            raise ValueError(f"{len(inputs)} inputs but {len(targets)} targets")
        self.inputs, self.targets, self.info = inputs, targets, info
        self.transform, self.convert = transform, convert

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.inputs[index]
        if self.convert is not None:
            x = self.convert(x)
        y = self.targets[index]
        if self.transform is not None:
            x, y = self.transform(x, y)
        return x, y


class IndexedSubset(Dataset):
    """A subset of a dataset that keeps its ``info`` and (sub-selected) ``targets``.

    Example:
        >>> info = DatasetInfo("toy", 2, ("a", "b"))
        >>> ds = ArrayDataset(torch.arange(5.0)[:, None], torch.tensor([0, 1, 1, 0, 1]), info)
        >>> sub = IndexedSubset(ds, torch.tensor([4, 0]))
        >>> sub.targets.tolist(), float(sub[0][0])
        ([1, 0], 4.0)
    """

    def __init__(self, dataset: Dataset, indices: torch.Tensor | Sequence[int]) -> None:
        self.dataset = dataset
        self.indices = torch.as_tensor(indices, dtype=torch.int64)
        self.info = dataset.info
        targets = getattr(dataset, "targets", None)
        self.targets = targets[self.indices] if targets is not None else None

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> Any:
        return self.dataset[int(self.indices[index])]


def read_nifti(path: Path, what: str = "NIfTI"):
    """``(nibabel image, array)`` of a NIfTI file; any read failure names the file."""
    import nibabel as nib  # optional (the data extra), needed only for NIfTI files

    if not Path(path).exists():
        raise FileNotFoundError(f"{what} file {str(path)!r} not found")
    try:
        nii = nib.load(str(path))
        return nii, np.asarray(nii.dataobj)
    except Exception as err:
        raise DataFileError(path, f"cannot read {what} {str(path)!r}: {err}") from err
