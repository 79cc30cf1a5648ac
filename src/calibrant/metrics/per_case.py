r"""Overlap and surface-distance values per case and class: Dice, IoU, HD, HD95, ASSD.

For case ``b`` and class ``c`` let ``P`` be the predicted mask (``argmax`` of the logits, or an
explicit label map) and ``G`` the ground-truth mask, both with ignored voxels removed, and let
``S_P, S_G`` be their surfaces (mask minus its connectivity-1 binary erosion, the outside of the
image counting as background, as in medpy and MONAI). With ``d(x, S) = min_{s in S} ||x - s||``
measured in spacing units:

.. math::
    \mathrm{Dice} = \frac{2|P \cap G|}{|P| + |G|}, \qquad
    \mathrm{IoU} = \frac{|P \cap G|}{|P \cup G|}, \qquad
    \mathrm{HD} = \max\big(\max_{p \in S_P} d(p, S_G),\ \max_{g \in S_G} d(g, S_P)\big)

HD95 has two definitions in use, both available through ``percentile_mode``:

* ``"pooled"`` (medpy ``hd95``, the papers' code): the 95th percentile of the pooled list
  ``{d(p, S_G)}_{p} \cup {d(g, S_P)}_{g}``;
* ``"directed_max"`` (MONAI ``compute_hausdorff_distance(percentile=95)``): the larger of the two
  directed 95th percentiles.

ASSD is the mean of the pooled list (``assd_mode="pooled"``, medpy 0.5 and MONAI
``symmetric=True``) or the mean of the two directed means (``"mean_of_directed"``, medpy < 0.5).
Percentiles interpolate linearly (``numpy.percentile`` = ``torch.quantile``).

Empty masks (``empty=``), for (ground truth ``G``, prediction ``P``):

* ``"nan"`` (default): ``G`` empty gives Dice/IoU NaN and distances NaN; ``P`` empty (``G`` not)
  gives Dice/IoU 0 and distances NaN.
* ``"legacy"`` (the papers' code): ``G`` empty gives Dice/IoU 1 and distances 0 whatever ``P``;
  ``P`` empty (``G`` not) gives Dice/IoU 0 and distances 0.
* ``"diagonal"``: exactly one side empty gives Dice/IoU 0 and distances ``D``; both empty gives
  NaN everywhere.

where ``D = sqrt(sum_i (n_i s_i)^2)`` is the image diagonal in spacing units (extent ``n_i`` voxels
of size ``s_i`` per axis). The streaming classes of
:mod:`calibrant.metrics.segmentation` average these values over cases, NaN values excluded.

Results are ``(B, C)`` float64 tensors whose column index is the class index; when
``include_background=False`` (the default) column 0 is NaN. Ignored voxels (``target ==
ignore_index``) are removed from both masks before anything is computed.

Reference:
    Taha and Hanbury, "Metrics for evaluating 3D medical image segmentation: analysis, selection,
    and tool", BMC Medical Imaging 2015. Conventions: medpy ``medpy.metric.binary`` and MONAI
    ``monai.metrics`` (see ``docs/metrics_segmentation.md``).

Example:
    >>> y = torch.zeros(1, 6, 6, dtype=torch.long)
    >>> y[0, 1:4, 1:4] = 1
    >>> p = torch.zeros_like(y)
    >>> p[0, 1:4, 2:5] = 1
    >>> r = segmentation_metrics(None, y, pred_labels=p, num_classes=2)
    >>> r["dice"][0, 1].item(), r["hd"][0, 1].item(), r["hd95"][0, 1].item()
    (0.6666666666666666, 1.0, 1.0)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from calibrant._checks import check_choice
from calibrant.metrics._label_maps import confusion_counts, prepare_label_maps, spacing_table
from calibrant.metrics._surface import class_surface_distances, summarise_distances

__all__ = [
    "EMPTY_POLICIES",
    "PERCENTILE_MODES",
    "ASSD_MODES",
    "SEGMENTATION_METRICS",
    "segmentation_metrics",
    "dice_score",
    "iou_score",
    "hausdorff_distance",
    "hausdorff_distance95",
    "average_symmetric_surface_distance",
]

EMPTY_POLICIES = ("nan", "legacy", "diagonal")
PERCENTILE_MODES = ("pooled", "directed_max")
ASSD_MODES = ("pooled", "mean_of_directed")
SEGMENTATION_METRICS = ("dice", "iou", "hd", "hd95", "assd")
_DISTANCE_METRICS = ("hd", "hd95", "assd")


def _check_options(empty: str, percentile: float, percentile_mode: str, assd_mode: str) -> None:
    check_choice("empty", empty, EMPTY_POLICIES)
    check_choice("percentile_mode", percentile_mode, PERCENTILE_MODES)
    check_choice("assd_mode", assd_mode, ASSD_MODES)
    if not 0.0 <= float(percentile) <= 100.0:
        raise ValueError(f"percentile must lie in [0, 100], got {percentile!r}")


# --------------------------------------------------------------------------------------------
# Functional API
# --------------------------------------------------------------------------------------------
def segmentation_metrics(
    logits: torch.Tensor | None,
    target: torch.Tensor,
    *,
    pred_labels: torch.Tensor | None = None,
    num_classes: int | None = None,
    metrics: Sequence[str] = SEGMENTATION_METRICS,
    include_background: bool = False,
    ignore_index: int | None = -100,
    spacing: float | Sequence[float] | torch.Tensor | np.ndarray | None = None,
    empty: str = "nan",
    percentile: float = 95.0,
    percentile_mode: str = "pooled",
    assd_mode: str = "pooled",
    validate: bool = True,
) -> dict[str, torch.Tensor]:
    r"""Dice, IoU, HD, HD95 and ASSD for every case and class, from one surface pass per case.

    See the module docstring for the maths and the empty-mask table.

    Args:
        logits: class scores ``(B, C, *spatial)``; the prediction is their ``argmax`` over dim 1.
            Pass ``None`` to give ``pred_labels`` instead.
        target: integer labels ``(B, *spatial)``, 1 to 3 spatial dims.
        pred_labels: explicit predicted label map ``(B, *spatial)`` (with ``logits=None``).
        num_classes: number of classes ``C`` (required with ``pred_labels``).
        metrics: which of ``"dice", "iou", "hd", "hd95", "assd"`` to compute (distances are only
            computed when one of the last three is asked for).
        include_background: evaluate class 0 too; otherwise column 0 is NaN.
        ignore_index: target value whose voxels are removed from both masks (``None``: none).
        spacing: voxel size, a number, one size per spatial axis, or a ``(B, n_spatial)`` table.
            ``None`` means unit spacing (distances in voxels, the papers' protocol).
        empty: empty-mask policy, ``"nan"``, ``"legacy"`` or ``"diagonal"``.
        percentile: the percentile of ``"hd95"`` (default 95).
        percentile_mode: ``"pooled"`` (medpy) or ``"directed_max"`` (MONAI).
        assd_mode: ``"pooled"`` (medpy 0.5, MONAI) or ``"mean_of_directed"`` (medpy < 0.5).
        validate: check values (finite logits, label range).

    Returns:
        Dict of float64 tensors ``(B, C)`` keyed by metric name, on the input's device.

    Shape:
        - logits: ``(B, C, *spatial)``; pred_labels and target: ``(B, *spatial)``.
        - each output: ``(B, C)``.

    Example:
        >>> y = torch.tensor([[[0, 1, 1, 0]]])
        >>> p = torch.tensor([[[0, 1, 0, 0]]])
        >>> r = segmentation_metrics(None, y, pred_labels=p, num_classes=2, metrics=["dice", "iou"])
        >>> r["dice"]
        tensor([[   nan, 0.6667]], dtype=torch.float64)
    """
    _check_options(empty, percentile, percentile_mode, assd_mode)
    for name in metrics:
        check_choice("metric", name, SEGMENTATION_METRICS)
    pred, tgt, C = prepare_label_maps(
        logits, target, pred_labels, num_classes, ignore_index, validate
    )
    device = target.device
    B = tgt.shape[0]
    spatial = tuple(tgt.shape[1:])
    nd = len(spatial)
    table = spacing_table(spacing, B, nd)

    first = 0 if include_background else 1  # the background surface is never computed
    wanted = [m for m in _DISTANCE_METRICS if m in metrics]
    overlap = [m for m in ("dice", "iou") if m in metrics]
    surfaces = []
    if wanted:  # surfaces and directed distances of the classes present on both sides
        workers = torch.get_num_threads()  # the directed searches run on a thread pool
        for b in range(B):
            surfaces.append(
                class_surface_distances(
                    pred[b],
                    tgt[b],
                    range(first, C),
                    table[b],
                    return_presence=True,
                    workers=workers,
                )
            )
    if overlap:
        conf = torch.stack([confusion_counts(pred[b], tgt[b], C) for b in range(B)])
        tp = torch.diagonal(conf, dim1=1, dim2=2)
        n_gt = conf.sum(2)
        n_pred = conf.sum(1)
        gt_empty = n_gt == 0
        pred_empty = n_pred == 0
    else:  # a non-empty mask always has a surface voxel: presence comes from the surfaces
        gt_empty = torch.ones(B, C, dtype=torch.bool)
        pred_empty = torch.ones(B, C, dtype=torch.bool)
        for b, (_, presence) in enumerate(surfaces):
            for c, (has_pred, has_gt) in presence.items():
                pred_empty[b, c] = not has_pred
                gt_empty[b, c] = not has_gt
    both_empty = gt_empty & pred_empty
    nan = torch.tensor(float("nan"), dtype=torch.float64)

    out: dict[str, torch.Tensor] = {}
    for name in ("dice", "iou"):
        if name not in metrics:
            continue
        denom = n_pred + n_gt - (tp if name == "iou" else 0)
        num = tp * (2 if name == "dice" else 1)
        val = torch.where(denom > 0, num / denom.clamp_min(1), torch.zeros(()).double())
        if empty == "nan":
            val = torch.where(gt_empty, nan, val)
        elif empty == "legacy":
            val = torch.where(gt_empty, torch.ones(()).double(), val)
        else:
            val = torch.where(both_empty, nan, val)
        out[name] = val

    if wanted:
        dist = {m: torch.full((B, C), float("nan"), dtype=torch.float64) for m in wanted}
        miss = (gt_empty ^ pred_empty) & ~both_empty
        for b in range(B):
            diag = math.sqrt(sum((n * s) ** 2 for n, s in zip(spatial, table[b], strict=True)))
            for c in range(C):
                if gt_empty[b, c] or pred_empty[b, c]:
                    if empty == "legacy":
                        fill = 0.0
                    elif empty == "diagonal" and miss[b, c]:
                        fill = diag
                    else:
                        fill = float("nan")
                    for m in wanted:
                        dist[m][b, c] = fill
            d = surfaces[b][0]
            classes = [c for c in range(first, C) if d[c] is not None]
            for c in classes:
                d_pt, d_tp = d[c]
                hd, hdq_pooled, hdq_dmax, assd_pooled, assd_mean = summarise_distances(
                    d_pt, d_tp, percentile
                )
                if "hd" in dist:
                    dist["hd"][b, c] = hd
                if "hd95" in dist:
                    dist["hd95"][b, c] = hdq_pooled if percentile_mode == "pooled" else hdq_dmax
                if "assd" in dist:
                    dist["assd"][b, c] = assd_pooled if assd_mode == "pooled" else assd_mean
        out.update(dist)

    if not include_background:
        for v in out.values():
            v[:, 0] = float("nan")
    return {m: out[m].to(device) for m in metrics}


def _single(name: str, logits, target, **kwargs) -> torch.Tensor:
    return segmentation_metrics(logits, target, metrics=(name,), **kwargs)[name]


def dice_score(logits: torch.Tensor | None, target: torch.Tensor, **kwargs: object) -> torch.Tensor:
    r"""Dice ``2|P∩G|/(|P|+|G|)`` per case and class, ``(B, C)`` float64.

    Keyword arguments are those of :func:`segmentation_metrics` (``pred_labels``, ``num_classes``,
    ``include_background``, ``ignore_index``, ``empty``, ``validate``).

    Example:
        >>> y = torch.tensor([[[0, 1, 1, 0]]])
        >>> dice_score(torch.tensor([[[[2.0, 0.0, 3.0, 1.0]], [[0.0, 1.0, 0.0, 0.0]]]]), y)
        tensor([[   nan, 0.6667]], dtype=torch.float64)
    """
    return _single("dice", logits, target, **kwargs)


def iou_score(logits: torch.Tensor | None, target: torch.Tensor, **kwargs: object) -> torch.Tensor:
    r"""IoU / Jaccard ``|P∩G|/|P∪G|`` per case and class, ``(B, C)`` float64.

    Keyword arguments are those of :func:`segmentation_metrics`.

    Example:
        >>> y = torch.tensor([[[0, 1, 1, 0]]])
        >>> iou_score(None, y, pred_labels=torch.tensor([[[0, 1, 0, 0]]]), num_classes=2)
        tensor([[   nan, 0.5000]], dtype=torch.float64)
    """
    return _single("iou", logits, target, **kwargs)


def hausdorff_distance(
    logits: torch.Tensor | None, target: torch.Tensor, **kwargs: object
) -> torch.Tensor:
    r"""Symmetric Hausdorff distance between surfaces per case and class, ``(B, C)`` float64.

    Keyword arguments are those of :func:`segmentation_metrics` (``spacing``, ``empty``, ...).

    Example:
        >>> y = torch.zeros(1, 1, 8, dtype=torch.long)
        >>> y[..., 2:4] = 1
        >>> p = torch.zeros_like(y)
        >>> p[..., 2:7] = 1
        >>> hausdorff_distance(None, y, pred_labels=p, num_classes=2, spacing=(1.0, 0.5))
        tensor([[   nan, 1.5000]], dtype=torch.float64)
    """
    return _single("hd", logits, target, **kwargs)


def hausdorff_distance95(
    logits: torch.Tensor | None, target: torch.Tensor, **kwargs: object
) -> torch.Tensor:
    r"""95th-percentile Hausdorff distance per case and class, ``(B, C)`` float64.

    ``percentile_mode="pooled"`` (default, medpy ``hd95``) or ``"directed_max"`` (MONAI); other
    keyword arguments are those of :func:`segmentation_metrics`.

    Example:
        >>> y = torch.zeros(1, 1, 8, dtype=torch.long)
        >>> y[..., 2:4] = 1
        >>> p = torch.zeros_like(y)
        >>> p[..., 2:7] = 1
        >>> hausdorff_distance95(None, y, pred_labels=p, num_classes=2)
        tensor([[   nan, 2.7000]], dtype=torch.float64)
        >>> hausdorff_distance95(
        ...     None, y, pred_labels=p, num_classes=2, percentile_mode="directed_max"
        ... )
        tensor([[   nan, 2.8000]], dtype=torch.float64)
    """
    return _single("hd95", logits, target, **kwargs)


def average_symmetric_surface_distance(
    logits: torch.Tensor | None, target: torch.Tensor, **kwargs: object
) -> torch.Tensor:
    r"""Average symmetric surface distance per case and class, ``(B, C)`` float64.

    ``assd_mode="pooled"`` (default: medpy 0.5 ``assd``, MONAI symmetric ASD) or
    ``"mean_of_directed"``; other keyword arguments are those of :func:`segmentation_metrics`.

    Example:
        >>> y = torch.zeros(1, 1, 8, dtype=torch.long)
        >>> y[..., 2:4] = 1
        >>> p = torch.zeros_like(y)
        >>> p[..., 2:7] = 1
        >>> average_symmetric_surface_distance(None, y, pred_labels=p, num_classes=2)  # 6 / 7
        tensor([[   nan, 0.8571]], dtype=torch.float64)
    """
    return _single("assd", logits, target, **kwargs)
