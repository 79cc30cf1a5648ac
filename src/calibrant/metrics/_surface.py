"""Surface-distance kernels shared by the segmentation metrics (NumPy/SciPy, CPU).

A voxel of class ``c`` is a *surface* voxel when it belongs to ``c`` and is not in the binary
erosion of the ``c`` mask with the connectivity-1 structuring element (6-neighbourhood in 3-D,
4-neighbourhood in 2-D), the image outside counting as background. This is medpy's and MONAI's
definition (``mask ^ binary_erosion(mask)``; scipy's erosion pads with 0). For a label map it is
the same as: the voxel lies on the image border or one of its face neighbours has another label,
which gives the surfaces of every class from one pass over the volume.

Directed surface distances ``d(S_A -> S_B)`` are Euclidean distances, in spacing units, from each
point of ``S_A`` to the nearest point of ``S_B``, computed exactly in three stages:

1. *Row distances.* Both surfaces are placed in a grid cropped to their joint bounding box. One
   axis is the *row* axis (the one with the finest spacing, so the disk below is smallest). Two
   sweeps along it give, for every voxel, the distance ``r(v)`` (in voxels) to the nearest ``S_B``
   point in the same row (``∞`` if none).
2. *Disk search.* For ``p`` in ``S_A`` and an offset ``o`` on the other axes,
   ``|o|^2 + (s_row r(p + o))^2`` is the squared distance to the nearest ``S_B`` point of the row
   through ``p + o``, so ``d(p)^2 = min_o`` of it. Offsets are tried in order of increasing
   ``|o|``, all points at once (one gather per offset); a point is final as soon as its best value
   is at most the next ``|o|^2``, and every point whose best value is at most ``R^2`` after the
   disk of radius ``R`` is exact (every ``S_B`` point within ``R`` lies on a row of the disk). A
   point at distance ``d`` costs about ``π d^2`` gathers, against ``4/3 π d^3`` for a 3-D ball.
3. *Far points* (nothing within ``R``) are answered by a k-d tree (exact) built only on the
   ``S_B`` points inside the bounding box of the far points grown by the largest upper bound
   found in stage 2 (or on all of ``S_B`` when a far point has no finite bound).

The directed computations of the classes are independent: with ``workers > 1`` they run on a
thread pool (NumPy and SciPy release the GIL in the gathers and the tree).

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
from concurrent.futures import ThreadPoolExecutor

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
    return {c: flat[lab == c] for c in classes}


def _disk(scale: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Integer offsets on the non-row axes inside the disk of ``radius``, sorted by length.

    Returns ``(offsets (K, d), squared lengths (K,), half_widths (d,))``; ``d`` may be 0.
    """
    half = np.floor(radius / scale + 1e-9).astype(np.int64)
    if scale.size == 0:  # 1-D images: the row distance alone is exact
        return np.zeros((1, 0), np.int64), np.zeros(1), half
    grids = np.meshgrid(*[np.arange(-h, h + 1) for h in half], indexing="ij")
    off = np.stack([g.reshape(-1) for g in grids], axis=1)
    sq = ((off * scale) ** 2).sum(1)
    keep = sq <= radius * radius
    order = np.argsort(sq[keep], kind="stable")
    return off[keep][order], sq[keep][order], half


def _row_distance(mask: np.ndarray) -> np.ndarray:
    """Distance (voxels) along axis 0 to the nearest True of ``mask``; ``n0`` where none."""
    n0 = mask.shape[0]
    d = np.empty(mask.shape, np.int16 if n0 < 32000 else np.int32)
    d[0] = np.where(mask[0], 0, n0)
    for i in range(1, n0):  # forward sweep, saturating at n0 ("no point in this row")
        cur, prev = d[i : i + 1], d[i - 1 : i]  # slices: arrays even for 1-D images
        np.add(prev, 1, out=cur)
        np.minimum(cur, n0, out=cur)
        cur[mask[i : i + 1]] = 0
    for i in range(n0 - 2, -1, -1):  # backward sweep
        cur = d[i : i + 1]
        np.minimum(cur, d[i + 1 : i + 2] + 1, out=cur)
    return d


class _Case:
    """Geometry shared by the two directed computations of one class."""

    def __init__(self, a, b, shape, scale, perm, half):
        # Coordinates in the permuted layout (row axis first), shifted into the padded crop.
        ca = np.stack(np.unravel_index(a, shape), axis=1)[:, perm]
        cb = np.stack(np.unravel_index(b, shape), axis=1)[:, perm]
        pad = np.concatenate([[0], half])
        lo = np.minimum(ca.min(0), cb.min(0)) - pad
        self.crop = tuple(int(n) for n in np.maximum(ca.max(0), cb.max(0)) - lo + pad + 1)
        self.strides = np.array(
            [int(np.prod(self.crop[i + 1 :])) for i in range(len(self.crop))], np.int64
        )
        self.coords = (ca - lo, cb - lo)
        self.flat = (self.coords[0] @ self.strides, self.coords[1] @ self.strides)
        self.scale = scale[perm]


def _directed(case: _Case, src: int, steps, sq, radius: float) -> np.ndarray:
    """Distances from the points of surface ``src`` (0 or 1) of ``case`` to the other surface."""
    dst = 1 - src
    mask = np.zeros(case.crop, dtype=bool)
    mask.reshape(-1)[case.flat[dst]] = True
    rows = _row_distance(mask).reshape(-1)
    del mask
    n0 = case.crop[0]
    lut = (np.arange(n0 + 2, dtype=np.float64) * case.scale[0]) ** 2
    lut[n0:] = np.inf  # n0 (and n0 + 1 from the backward sweep) mean "no point in the row"

    q = case.flat[src]
    out = np.zeros(q.size, dtype=np.float64)  # zeros: the sqrt below reads unfinished slots
    todo = np.arange(q.size)
    best = np.full(q.size, np.inf)
    r2 = radius * radius
    # Scratch buffers reused by every gather (their first m entries are live).
    idx = np.empty(q.size, dtype=np.int64)
    near = np.empty(q.size, dtype=rows.dtype)
    cand = np.empty(q.size, dtype=np.float64)
    k, n = 0, len(steps)
    while k < n and todo.size:
        stop = k + 1
        while stop < n and sq[stop] == sq[k]:
            stop += 1
        m = q.size
        i_, n_, c_ = idx[:m], near[:m], cand[:m]
        for j in range(k, stop):  # one shell (offsets of equal length)
            np.add(q, steps[j], out=i_)
            np.take(rows, i_, out=n_)
            np.take(lut, n_, out=c_)
            c_ += sq[j]
            np.minimum(best, c_, out=best)
        done = best <= (sq[stop] if stop < n else r2)  # nothing later can be closer
        if done.any():
            out[todo[done]] = best[done]
            keep = ~done
            todo, q, best = todo[keep], q[keep], best[keep]
        k = stop
    np.sqrt(out, out=out)
    if todo.size:  # farther than the radius from every point of dst: exact k-d tree
        scale = case.scale
        src_xyz = case.coords[src][todo] * scale
        dst_xyz = case.coords[dst] * scale
        if np.isfinite(best).all():  # every nearest dst point is within this bound
            bound = float(np.sqrt(best.max())) * (1 + 1e-9)
            lo, hi = src_xyz.min(0) - bound, src_xyz.max(0) + bound
            dst_xyz = dst_xyz[np.all((dst_xyz >= lo) & (dst_xyz <= hi), axis=1)]
        # Sliding-midpoint, non-compact tree with larger leaves: half the build time, same answers.
        tree = cKDTree(dst_xyz, leafsize=32, balanced_tree=False, compact_nodes=False)
        out[todo] = tree.query(src_xyz, k=1)[0]
    return out


def class_surface_distances(
    pred: np.ndarray,
    target: np.ndarray,
    classes: Sequence[int],
    spacing: Sequence[float],
    radius: float | None = None,
    return_presence: bool = False,
    workers: int = 1,
):
    """Directed surface distances ``pred -> target`` and ``target -> pred`` for each class.

    Args:
        pred: integer label map (any value outside ``classes``, e.g. -1, belongs to no class).
        target: integer label map of the same shape.
        classes: class ids to evaluate.
        spacing: voxel size along each axis.
        radius: disk-search radius in spacing units (default 20 voxels of the finest axis);
            farther points fall back to a k-d tree. Only speed depends on it.
        return_presence: also return ``{c: (c in pred, c in target)}``.
        workers: threads running the directed computations (one per class and direction).

    Returns:
        ``{c: (d_pred_to_target, d_target_to_pred)}`` as float64 arrays, or ``{c: None}`` when the
        class is absent from ``pred`` or ``target`` (distances are undefined); with
        ``return_presence`` a pair ``(distances, presence)``.
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred shape {pred.shape} != target shape {target.shape}")
    scale = np.asarray(spacing, dtype=np.float64)
    radius = 20.0 * float(scale.min()) if radius is None else float(radius)
    # Row axis: the finest one (smallest disk for a given radius); the disk spans the others.
    row = int(np.argmin(scale))
    perm = [row] + [i for i in range(pred.ndim) if i != row]
    offsets, sq, half = _disk(scale[perm[1:]], radius)
    sp = _points_by_class(pred, classes)
    st = _points_by_class(target, classes)
    presence = {c: (sp[c].size > 0, st[c].size > 0) for c in classes}
    cases = {}
    jobs = []
    for c in classes:
        if sp[c].size and st[c].size:
            cases[c] = _Case(sp[c], st[c], pred.shape, scale, perm, half)
            jobs += [(c, 0), (c, 1)]
    jobs.sort(key=lambda j: -cases[j[0]].flat[j[1]].size)  # largest first: better balance

    def run(job):
        case = cases[job[0]]
        return _directed(case, job[1], offsets @ case.strides[1:], sq, radius)

    if workers > 1 and len(jobs) > 1:
        with ThreadPoolExecutor(min(workers, len(jobs))) as pool:
            results = list(pool.map(run, jobs))
    else:
        results = [run(j) for j in jobs]
    dist = dict(zip(jobs, results, strict=True))
    out = {c: ((dist[(c, 0)], dist[(c, 1)]) if c in cases else None) for c in classes}
    return (out, presence) if return_presence else out


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
