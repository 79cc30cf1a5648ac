"""The segmentation papers' test protocol, registered for the metrics that the papers report.

Each ``paper_*`` entry is a :class:`~calibrant.metrics.per_volume.PerVolumeMean` over a metric
on ground-truth-foreground pixels (``pixel_subset="gt_fg"``): one ``update`` is one volume and
the value is the mean of the per-volume values (METHODS §7.2). The pooled form of each metric is
registered beside its class.
"""

from __future__ import annotations

import functools
from typing import Any

from calibrant.metrics.calibration import CalibrationError
from calibrant.metrics.classwise import TACE, ClasswiseCalibrationError
from calibrant.metrics.overconfidence import OverConfidence
from calibrant.metrics.per_volume import _PAPER, PerVolumeMean
from calibrant.registry import METRICS

_register = functools.partial(METRICS.register, task="multiclass", protocol="per_volume")


@_register("paper_ece", better="lower", legend=f"top-label ECE (15 bins) on {_PAPER}")
def _paper_ece(**kwargs: Any) -> PerVolumeMean:
    """The segmentation papers' protocol: GT-foreground pixels, mean of per-volume values."""
    return PerVolumeMean(CalibrationError(pixel_subset="gt_fg", **kwargs))


@_register(
    "paper_classwise_ece",
    better="lower",
    legend=f"class-wise ECE over the classes present, on {_PAPER}",
)
def _paper_classwise_ece(num_classes: int, **kwargs: Any) -> PerVolumeMean:
    """The segmentation papers' protocol: GT-foreground pixels, mean of per-volume values."""
    return PerVolumeMean(
        ClasswiseCalibrationError(
            num_classes, class_range="present", pixel_subset="gt_fg", **kwargs
        )
    )


@_register(
    "paper_tace",
    better="lower",
    legend=f"TACE (the CRaC code's equal-width variant) on {_PAPER}",
)
def _paper_tace(num_classes: int, mode: str = "crac", **kwargs: Any) -> PerVolumeMean:
    """TACE (``mode="crac"`` by default) under the papers' per-volume protocol."""
    return PerVolumeMean(TACE(num_classes, mode, pixel_subset="gt_fg", **kwargs))


@_register(
    "paper_overconfidence",
    better="zero",
    legend=f"signed over-confidence (confidence minus accuracy, > 0: over-confident) on {_PAPER}",
)
def _paper_overconfidence(**kwargs: Any) -> PerVolumeMean:
    """The segmentation papers' protocol, as ``paper_ece``: GT foreground, per-volume mean."""
    return PerVolumeMean(OverConfidence(pixel_subset="gt_fg", **kwargs))
