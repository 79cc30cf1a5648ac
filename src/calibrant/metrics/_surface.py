"""Surface-distance kernels shared by the segmentation metrics (NumPy/SciPy, CPU).

A voxel of class ``c`` is a *surface* voxel when it belongs to ``c`` and is not in the binary
erosion of the ``c`` mask with the connectivity-1 structuring element (6-neighbourhood in 3-D,
4-neighbourhood in 2-D), the image outside counting as background. This is medpy's and MONAI's
definition (``mask ^ binary_erosion(mask)``; scipy's erosion pads with 0). For a label map it is
the same as: the voxel lies on the image border or one of its face neighbours has another label,
which gives the surfaces of every class from one pass over the volume.

Directed surface distances ``d(S_A -> S_B)`` are Euclidean distances, in spacing units, from each
point of ``S_A`` to the nearest point of ``S_B``. Points of ``S_A`` that are also in ``S_B`` are at
distance 0 and are not queried; the others are answered exactly by a k-d tree built on ``S_B``.

Example:
    >>> import numpy as np
    >>> from calibrant.metrics._surface import label_surface, class_surface_distances
    >>> y = np.zeros((5, 5), dtype=np.int64)
    >>> y[1:4, 1:4] = 1
    >>> label_surface(y).astype(int)[2]
    array([1, 1, 0, 1, 1])
    >>> p = np.zeros_like(y)
    >>> p[1:4, 2:5] = 1
    >>> d = class_surface_distances(p, y, [1], spacing=(1.0, 1.0))[1]
    >>> float(d[0].max()), float(d[1].max())
    (1.0, 1.0)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.spatial import cKDTree

__all__ = ["label_surface", "class_surface_distances", "summarise_distances"]


def label_surface(labels: np.ndarray) -> np.ndarray:
    """Boolean map of surface voxels of every class of an integer label map.

    Args:
        labels: integer array of any dimensionality.

    Returns:
        Bool array of the same shape: True where the voxel touches the image border or has a face
        neighbour (connectivity 1) with a different label.
    """
    nd = labels.ndim
    surf = np.zeros(labels.shape, dtype=bool)
    for ax in range(nd):
        if labels.shape[ax] < 2:
            surf[...] = True  # every voxel touches the border along this axis
            return surf
        lo = [slice(None)] * nd
        hi = [slice(None)] * nd
        lo[ax] = slice(0, -1)
        hi[ax] = slice(1, None)
        diff = labels[tuple(lo)] != labels[tuple(hi)]
        surf[tuple(lo)] |= diff
        surf[tuple(hi)] |= diff
        first = [slice(None)] * nd
        last = [slice(None)] * nd
        first[ax] = 0
        last[ax] = -1
        surf[tuple(first)] = True
        surf[tuple(last)] = True
    return surf


def _points_by_class(labels: np.ndarray, classes: Sequence[int]) -> dict[int, np.ndarray]:
    """Sorted flat indices of the surface voxels of each class in ``classes``."""
    flat = np.flatnonzero(label_surface(labels))
    lab = labels.reshape(-1)[flat]
    order = np.argsort(lab, kind="stable")  # stable: indices stay sorted within a class
    lab_sorted = lab[order]
    out = {}
    for c in classes:
        lo, hi = np.searchsorted(lab_sorted, [c, c + 1])
        out[c] = flat[order[lo:hi]]
    return out


def _directed(
    src: np.ndarray, dst: np.ndarray, shape: tuple[int, ...], scale: np.ndarray
) -> np.ndarray:
    """Distances from each flat index in ``src`` to the nearest flat index in ``dst`` (float64)."""
    out = np.zeros(src.size, dtype=np.float64)
    shared = np.isin(src, dst, assume_unique=True)
    todo = np.flatnonzero(~shared)
    if todo.size:
        dst_xyz = np.stack(np.unravel_index(dst, shape), axis=1) * scale
        src_xyz = np.stack(np.unravel_index(src[todo], shape), axis=1) * scale
        out[todo] = cKDTree(dst_xyz, leafsize=16, balanced_tree=False).query(src_xyz, k=1)[0]
    return out


def class_surface_distances(
    pred: np.ndarray,
    target: np.ndarray,
    classes: Sequence[int],
    spacing: Sequence[float],
) -> dict[int, tuple[np.ndarray, np.ndarray] | None]:
    """Directed surface distances ``pred -> target`` and ``target -> pred`` for each class.

    Args:
        pred: integer label map (any value outside ``classes``, e.g. -1, belongs to no class).
        target: integer label map of the same shape.
        classes: class ids to evaluate.
        spacing: voxel size along each axis.

    Returns:
        ``{c: (d_pred_to_target, d_target_to_pred)}`` as float64 arrays, or ``{c: None}`` when the
        class is absent from ``pred`` or ``target`` (distances are undefined).
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred shape {pred.shape} != target shape {target.shape}")
    scale = np.asarray(spacing, dtype=np.float64)
    sp = _points_by_class(pred, classes)
    st = _points_by_class(target, classes)
    out: dict[int, tuple[np.ndarray, np.ndarray] | None] = {}
    for c in classes:
        a, b = sp[c], st[c]
        if a.size == 0 or b.size == 0:
            out[c] = None
            continue
        out[c] = (_directed(a, b, pred.shape, scale), _directed(b, a, pred.shape, scale))
    return out


def summarise_distances(
    d_pt: np.ndarray, d_tp: np.ndarray, percentile: float = 95.0
) -> tuple[float, float, float, float, float]:
    """HD, pooled HD-q, directed-max HD-q, pooled ASSD and mean-of-directed ASSD.

    Percentiles use linear interpolation (``numpy.percentile``'s and ``torch.quantile``'s default).
    """
    both = np.concatenate([d_pt, d_tp])
    hd = float(max(d_pt.max(), d_tp.max()))
    hd_pooled = float(np.percentile(both, percentile))
    hd_dmax = float(max(np.percentile(d_pt, percentile), np.percentile(d_tp, percentile)))
    assd_pooled = float(both.mean())
    assd_mean = 0.5 * float(d_pt.mean() + d_tp.mean())
    return hd, hd_pooled, hd_dmax, assd_pooled, assd_mean
