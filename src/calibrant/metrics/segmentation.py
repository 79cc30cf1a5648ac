r"""Streaming per-case segmentation metrics: Dice, IoU, HD, HD95, ASSD averaged over cases.

The per-case values, their maths and the empty-mask policies are those of
:mod:`calibrant.metrics.per_case` (whose functions are re-exported here); the classes keep, per
metric and class, the sum of the non-NaN per-case values and the number of such cases.

Example:
    >>> m = DiceScore(num_classes=2)
    >>> y = torch.tensor([[[0, 1, 1, 0]]])
    >>> m.update(None, y, pred_labels=torch.tensor([[[0, 1, 0, 0]]]))
    >>> m.update(None, y, pred_labels=y)
    >>> m.compute()
    tensor(0.8333, dtype=torch.float64)
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import torch

from calibrant._checks import check_choice
from calibrant.metrics._base import StreamingMetric
from calibrant.metrics.per_case import *  # noqa: F403  (re-exported)
from calibrant.metrics.per_case import SEGMENTATION_METRICS, _check_options, segmentation_metrics
from calibrant.metrics.per_case import __all__ as _per_case_all
from calibrant.registry import METRICS

__all__ = [
    *_per_case_all,
    "OverlapDistance",
    "DiceScore",
    "IoUScore",
    "HausdorffDistance",
    "HausdorffDistance95",
    "AverageSymmetricSurfaceDistance",
]

# the registry metadata that this module's metrics share
_register = functools.partial(METRICS.register, task="segmentation")

AVERAGES = ("mean", "class_mean", "none")


# --------------------------------------------------------------------------------------------
# Streaming classes
# --------------------------------------------------------------------------------------------
@_register(
    "overlap_distance",
    better="",
    legend="per-class means over the test cases of Dice and IoU (↑) and HD, HD95, ASSD (↓)",
)
class OverlapDistance(StreamingMetric):
    r"""Streaming per-class means of per-case Dice/IoU/HD/HD95/ASSD (NaN cases excluded).

    States (fixed size, summed across processes): ``sums`` ``(M, C)`` float64, the sum over cases
    of each non-NaN per-case value, and ``counts`` ``(M, C)`` int64, the number of such cases.

    Args:
        num_classes: number of classes ``C``.
        metrics: metric names (``M`` of them), see :func:`segmentation_metrics`.
        average: ``"mean"`` (over every valid (case, class) pair: the papers' mDSC/mHD and MONAI's
            ``reduction="mean"``), ``"class_mean"`` (mean of the per-class means over classes with
            a valid case) or ``"none"`` (per-class means ``(C,)``, NaN where no valid case).
        return_counts: ``compute()`` also returns the ``counts`` of valid cases per class.
        **options: ``include_background``, ``ignore_index``, ``spacing``, ``empty``,
            ``percentile``, ``percentile_mode``, ``assd_mode``, ``validate`` as in
            :func:`segmentation_metrics`. ``update`` may override ``spacing`` per batch.

    Example:
        >>> m = OverlapDistance(num_classes=2, metrics=("dice", "hd"), return_counts=True)
        >>> y = torch.tensor([[[0, 1, 1, 0]]])
        >>> m.update(None, y, pred_labels=torch.tensor([[[0, 1, 0, 0]]]))
        >>> m.update(None, y, pred_labels=y)
        >>> values, counts = m.compute()
        >>> values["dice"], counts["dice"]
        (tensor(0.8333, dtype=torch.float64), tensor([0, 2]))
    """

    higher_is_better = None

    def __init__(
        self,
        num_classes: int,
        metrics: Sequence[str] = SEGMENTATION_METRICS,
        *,
        average: str = "mean",
        return_counts: bool = False,
        include_background: bool = False,
        ignore_index: int | None = -100,
        spacing=None,
        empty: str = "nan",
        percentile: float = 95.0,
        percentile_mode: str = "pooled",
        assd_mode: str = "pooled",
        validate: bool = True,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        metrics = tuple(metrics)
        if not metrics:
            raise ValueError("metrics must name at least one metric")
        for name in metrics:
            check_choice("metric", name, SEGMENTATION_METRICS)
        check_choice("average", average, AVERAGES)
        _check_options(empty, percentile, percentile_mode, assd_mode)
        self.num_classes = num_classes
        self.metric_names = metrics
        self.average = average
        self.return_counts = return_counts
        self.options = dict(
            include_background=include_background,
            ignore_index=ignore_index,
            spacing=spacing,
            empty=empty,
            percentile=percentile,
            percentile_mode=percentile_mode,
            assd_mode=assd_mode,
            validate=validate,
        )
        shape = (len(metrics), num_classes)
        self._add_sum("sums", shape)
        self._add_sum("counts", shape, torch.int64)

    def update(
        self,
        logits: torch.Tensor | None,
        target: torch.Tensor,
        *,
        pred_labels: torch.Tensor | None = None,
        spacing=None,
    ) -> None:
        """Add the per-case values of a batch (``spacing`` overrides the constructor's)."""
        options = dict(self.options)
        if spacing is not None:
            options["spacing"] = spacing
        values = segmentation_metrics(
            logits,
            target,
            pred_labels=pred_labels,
            num_classes=self.num_classes,
            metrics=self.metric_names,
            **options,
        )
        for i, name in enumerate(self.metric_names):
            v = values[name].to(self.sums.device)
            ok = ~torch.isnan(v)
            self.sums[i] += torch.where(ok, v, torch.zeros((), dtype=v.dtype)).sum(0)
            self.counts[i] += ok.sum(0)

    def compute(self):
        """Averaged values: a tensor for one metric, else a dict (plus counts if asked for)."""
        per_class = self.sums / self.counts.clamp_min(1)
        per_class = torch.where(self.counts > 0, per_class, torch.full_like(per_class, math.nan))
        if self.average == "none":
            red = per_class
        elif self.average == "mean":
            total = self.counts.sum(1)
            red = self.sums.sum(1) / total.clamp_min(1)
            red = torch.where(total > 0, red, torch.full_like(red, math.nan))
        else:
            red = torch.nanmean(per_class, dim=1)
        values = {n: red[i] for i, n in enumerate(self.metric_names)}
        counts = {n: self.counts[i].clone() for i, n in enumerate(self.metric_names)}
        if len(self.metric_names) == 1:
            name = self.metric_names[0]
            return (values[name], counts[name]) if self.return_counts else values[name]
        return (values, counts) if self.return_counts else values


class _OneOverlapDistance(OverlapDistance):
    """:class:`OverlapDistance` of one metric, named with its direction in the class statement.

    For example ``class DiceScore(_OneOverlapDistance, metric_name="dice", higher_is_better=True)``.
    """

    metric_name: str

    def __init_subclass__(cls, *, metric_name: str, higher_is_better: bool, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.metric_name, cls.higher_is_better = metric_name, higher_is_better

    def __init__(self, num_classes: int, **kwargs) -> None:
        super().__init__(num_classes, (self.metric_name,), **kwargs)


_PER_CASE = ", mean over the classes and the test cases (volumes)"  # ends the registry legends


def _register_one(legend: str):
    """Register a :class:`_OneOverlapDistance` under its ``metric_name``.

    ``better`` follows the class's ``higher_is_better``; the legend gets :data:`_PER_CASE`.
    """

    def decorator(cls: type[_OneOverlapDistance]) -> type[_OneOverlapDistance]:
        better = "higher" if cls.higher_is_better else "lower"
        return _register(cls.metric_name, better=better, legend=legend + _PER_CASE)(cls)

    return decorator


@_register_one("Dice overlap per class")
class DiceScore(_OneOverlapDistance, metric_name="dice", higher_is_better=True):
    """Streaming mean per-case Dice (see :class:`OverlapDistance` for arguments and states).

    Example:
        >>> m = DiceScore(num_classes=2, average="none")
        >>> m.update(None, torch.tensor([[0, 1, 1]]), pred_labels=torch.tensor([[0, 1, 0]]))
        >>> m.compute()
        tensor([   nan, 0.6667], dtype=torch.float64)
    """


@_register_one("IoU (Jaccard) per class")
class IoUScore(_OneOverlapDistance, metric_name="iou", higher_is_better=True):
    """Streaming mean per-case IoU/Jaccard (see :class:`OverlapDistance`).

    Example:
        >>> m = IoUScore(num_classes=2)
        >>> m.update(None, torch.tensor([[0, 1, 1]]), pred_labels=torch.tensor([[0, 1, 0]]))
        >>> m.compute()
        tensor(0.5000, dtype=torch.float64)
    """


@_register_one("Hausdorff distance per class (in spacing units: mm for medical volumes)")
class HausdorffDistance(_OneOverlapDistance, metric_name="hd", higher_is_better=False):
    """Streaming mean per-case Hausdorff distance (see :class:`OverlapDistance`).

    Example:
        >>> m = HausdorffDistance(num_classes=2, spacing=2.0)
        >>> m.update(None, torch.tensor([[0, 1, 1, 0]]), pred_labels=torch.tensor([[0, 1, 1, 1]]))
        >>> m.compute()
        tensor(2., dtype=torch.float64)
    """


@_register_one("95th-percentile Hausdorff distance per class (in spacing units: mm for volumes)")
class HausdorffDistance95(_OneOverlapDistance, metric_name="hd95", higher_is_better=False):
    """Streaming mean per-case HD95, pooled or directed-max (see :class:`OverlapDistance`).

    Example:
        >>> m = HausdorffDistance95(num_classes=2, percentile_mode="directed_max")
        >>> m.update(None, torch.tensor([[0, 1, 1, 0]]), pred_labels=torch.tensor([[0, 1, 1, 1]]))
        >>> m.compute()
        tensor(0.9500, dtype=torch.float64)
    """


@_register_one("average symmetric surface distance per class (in spacing units)")
class AverageSymmetricSurfaceDistance(
    _OneOverlapDistance, metric_name="assd", higher_is_better=False
):
    """Streaming mean per-case ASSD (see :class:`OverlapDistance`).

    Example:
        >>> m = AverageSymmetricSurfaceDistance(num_classes=2)
        >>> m.update(None, torch.tensor([[0, 1, 1, 0]]), pred_labels=torch.tensor([[0, 1, 1, 1]]))
        >>> m.compute()
        tensor(0.5000, dtype=torch.float64)
    """
