r"""Long-tailed subsets of classification sets and stratified held-out validation splits.

The long-tailed profile is the exponential one of Cao et al. (LDAM, NeurIPS 2019) and Cui et al.
(CVPR 2019): class ``c`` (in ``class_order``, default label order) keeps

.. math::
    n_c = \lfloor n_{\max} \, r^{-c/(C-1)} \rfloor, \qquad c = 0, \dots, C-1,

samples, where ``r`` is the imbalance ratio ``n_0 / n_{C-1}`` (10, 50 or 100 in the literature)
and ``n_max`` the size of the smallest class of the source (so every class can supply its count).
The kept samples of each class are drawn uniformly without replacement through a generator.

Example:
    >>> long_tailed_counts(5000, 10, 100)[[0, 9]].tolist()
    [5000, 50]
    >>> y = torch.arange(10).repeat(100)
    >>> idx = long_tailed_indices(y, 10, generator=torch.Generator().manual_seed(0))
    >>> torch.bincount(y[idx]).tolist()
    [100, 77, 59, 46, 35, 27, 21, 16, 12, 10]
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from calibrant._checks import check_positive
from calibrant.data.base import ArrayDataset, DatasetInfo, IndexedSubset

__all__ = [
    "long_tailed_counts",
    "long_tailed_indices",
    "long_tailed",
    "stratified_split",
    "train_val_split",
    "select_split",
    "select_array_split",
    "SPLITS",
]


def long_tailed_counts(n_max: int, num_classes: int, imbalance_ratio: float) -> torch.Tensor:
    """Per-class counts ``floor(n_max * r ** (-c / (C - 1)))`` (int64, shape ``(C,)``).

    Example:
        >>> long_tailed_counts(100, 3, 10).tolist()
        [100, 31, 10]
    """
    check_positive("n_max", n_max)
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    if imbalance_ratio < 1:
        raise ValueError(f"imbalance_ratio must be >= 1, got {imbalance_ratio}")
    c = torch.arange(num_classes, dtype=torch.float64)
    counts = n_max * torch.as_tensor(float(imbalance_ratio), dtype=torch.float64) ** (
        -c / (num_classes - 1)
    )
    # a tiny tolerance so that exact values (e.g. 5000 / 100 = 50) are not floored to 49
    return torch.floor(counts + 1e-9).to(torch.int64).clamp_min(1)


def long_tailed_indices(
    targets: torch.Tensor,
    imbalance_ratio: float,
    *,
    num_classes: int | None = None,
    n_max: int | None = None,
    class_order: Sequence[int] | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Indices of a seeded long-tailed subset of a labelled set (sorted, int64).

    Args:
        targets: class labels ``(N,)``.
        imbalance_ratio: ``r = n_head / n_tail``.
        num_classes: number of classes (default ``max(targets) + 1``).
        n_max: head-class count (default and maximum: the smallest class count).
        class_order: classes from head to tail (default ``0..C-1``).
        generator: source of randomness.

    Raises:
        ValueError: on non-1D targets, an empty class or ``n_max`` above the smallest class.
    """
    targets = torch.as_tensor(targets)
    if targets.ndim != 1:
        raise ValueError(f"targets must be 1-D class labels, got shape {tuple(targets.shape)}")
    num_classes = int(targets.max()) + 1 if num_classes is None else num_classes
    available = torch.bincount(targets, minlength=num_classes)
    if bool((available == 0).any()):
        raise ValueError(f"class(es) {torch.nonzero(available == 0).flatten().tolist()} are empty")
    smallest = int(available.min())
    n_max = smallest if n_max is None else n_max
    if n_max > smallest:
        raise ValueError(f"n_max={n_max} exceeds the smallest class count {smallest}")
    order = list(range(num_classes)) if class_order is None else list(class_order)
    if sorted(order) != list(range(num_classes)):
        raise ValueError(f"class_order must be a permutation of 0..{num_classes - 1}")
    counts = long_tailed_counts(n_max, num_classes, imbalance_ratio)
    keep = []
    for rank, cls in enumerate(order):
        members = torch.nonzero(targets == cls).flatten()
        perm = torch.randperm(len(members), generator=generator)
        keep.append(members[perm[: int(counts[rank])]])
    return torch.sort(torch.cat(keep)).values


def long_tailed(dataset, imbalance_ratio: float, *, generator=None, **kwargs) -> IndexedSubset:
    """Long-tailed :class:`IndexedSubset` of a dataset that has ``targets`` and ``info``.

    Example:
        >>> from calibrant.data.base import ArrayDataset, DatasetInfo
        >>> ds = ArrayDataset(torch.zeros(40, 1), torch.arange(2).repeat(20),
        ...                   DatasetInfo("t", 2, ("a", "b")))
        >>> len(long_tailed(ds, 10, generator=torch.Generator().manual_seed(0)))
        22
    """
    idx = long_tailed_indices(
        dataset.targets,
        imbalance_ratio,
        num_classes=dataset.info.num_classes,
        generator=generator,
        **kwargs,
    )
    return IndexedSubset(dataset, idx)


def stratified_split(
    targets: torch.Tensor, fraction: float, *, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split indices into (rest, held-out) with ``round(fraction * n_c)`` held out per class.

    Multi-label targets ``(N, C)`` are stratified by their first positive label (all-negative
    rows form their own stratum).

    Example:
        >>> y = torch.tensor([0] * 10 + [1] * 20)
        >>> tr, va = stratified_split(y, 0.1, generator=torch.Generator().manual_seed(0))
        >>> len(tr), torch.bincount(y[va]).tolist()
        (27, [1, 2])
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must lie in (0, 1), got {fraction}")
    targets = torch.as_tensor(targets)
    if targets.ndim == 2:
        pos = targets > 0
        strata = torch.where(
            pos.any(1), pos.int().argmax(1) + 1, torch.zeros_like(pos[:, 0], dtype=torch.int64)
        )
    elif targets.ndim == 1:
        strata = targets.to(torch.int64)
    else:
        raise ValueError(f"targets must be (N,) or (N, C), got shape {tuple(targets.shape)}")
    rest, held = [], []
    for s in torch.unique(strata):
        members = torch.nonzero(strata == s).flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        k = int(round(fraction * len(members)))
        held.append(members[:k])
        rest.append(members[k:])
    return torch.sort(torch.cat(rest)).values, torch.sort(torch.cat(held)).values


def train_val_split(dataset, val_fraction: float = 0.1, *, generator=None):
    """Stratified held-out validation split of a dataset: ``(train_subset, val_subset)``."""
    tr, va = stratified_split(dataset.targets, val_fraction, generator=generator)
    return IndexedSubset(dataset, tr), IndexedSubset(dataset, va)


SPLITS = ("train", "val", "trainval", "test")


def select_split(
    split: str,
    train,
    test=None,
    *,
    val_fraction: float = 0.1,
    imbalance_ratio: float | None = None,
    max_per_class: int | None = None,
    seed: int = 0,
):
    """Pick ``split`` of a classification set from its official train (and test) parts.

    ``"val"`` is a stratified, seeded ``val_fraction`` of the official train part and ``"train"``
    the rest; ``"trainval"`` is the whole official train part and ``"test"`` the official test
    part. With ``imbalance_ratio`` the ``"train"``/``"trainval"`` parts are made long-tailed
    (after the validation part is held out, so validation stays balanced); ``max_per_class``
    caps each class of those parts at a seeded random ``n`` (a balanced subset without
    ``imbalance_ratio``; the head-class count ``n_max`` with it). ``val``/``test`` are never
    subsampled. ``train`` and ``test`` may be zero-argument callables, built on demand.

    Example:
        >>> from calibrant.data.base import ArrayDataset, DatasetInfo
        >>> ds = ArrayDataset(torch.zeros(40, 1), torch.arange(2).repeat(20),
        ...                   DatasetInfo("t", 2, ("a", "b")))
        >>> [len(select_split(s, ds, ds, val_fraction=0.1)) for s in SPLITS]
        [36, 4, 40, 40]
        >>> len(select_split("train", ds, val_fraction=0.1, max_per_class=5))
        10
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if split == "test":
        if test is None:
            raise ValueError("this dataset has no test part")
        return test() if callable(test) and not hasattr(test, "__getitem__") else test
    full = train() if callable(train) and not hasattr(train, "__getitem__") else train
    if split == "trainval":
        part = full
    else:
        g = torch.Generator().manual_seed(seed)
        tr, va = stratified_split(full.targets, val_fraction, generator=g)
        if split == "val":
            return IndexedSubset(full, va)
        part = IndexedSubset(full, tr)
    if imbalance_ratio is not None or max_per_class is not None:
        g = torch.Generator().manual_seed(seed + 1)
        ratio = 1.0 if imbalance_ratio is None else imbalance_ratio
        part = long_tailed(part, ratio, generator=g, n_max=max_per_class)
        if isinstance(part.dataset, IndexedSubset):  # flatten nested subsets
            part = IndexedSubset(part.dataset.dataset, part.dataset.indices[part.indices])
    return part


def select_array_split(
    split: str,
    arrays: Mapping[str, Any],
    info: DatasetInfo,
    *,
    transform: Callable | None = None,
    convert: Callable | None = None,
    **options: Any,
):
    """:func:`select_split` of a set decoded into arrays ``x_train, y_train, x_test, y_test``.

    Each official part is an :class:`~calibrant.data.base.ArrayDataset` over the arrays
    (``convert`` and ``transform`` are passed on); ``options`` (``val_fraction``, ``seed``,
    ``imbalance_ratio``, ``max_per_class``) go to :func:`select_split`.

    Example:
        >>> import numpy as np
        >>> arrays = {"x_train": np.zeros((40, 1)), "y_train": np.arange(2).repeat(20),
        ...           "x_test": np.zeros((6, 1)), "y_test": np.arange(2).repeat(3)}
        >>> info = DatasetInfo("t", 2, ("a", "b"))
        >>> [len(select_array_split(s, arrays, info)) for s in SPLITS]
        [36, 4, 40, 6]
    """

    def part(p: str) -> ArrayDataset:
        x, y = torch.from_numpy(arrays[f"x_{p}"]), torch.from_numpy(arrays[f"y_{p}"])
        return ArrayDataset(x, y, info, transform, convert=convert)

    return select_split(split, lambda: part("train"), lambda: part("test"), **options)
