"""The segmentation papers' test protocol: a metric computed per volume, then averaged.

:class:`PerVolumeMean` wraps any calibration metric or proper score
(:class:`~calibrant.metrics._base.CalMetric`); the ``paper_*`` registry entries of
:mod:`~calibrant.metrics.calibration`, :mod:`~calibrant.metrics.classwise` and
:mod:`~calibrant.metrics.overconfidence` are such wrappers on ground-truth-foreground pixels.
The legends of the two protocols (pooled, per volume) are written here once.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from calibrant.metrics._base import CalMetric, StreamingMetric, ratio

__all__ = ["PerVolumeMean"]

# the protocols named in the registry legends (``METRICS.meta(name)["legend"]``)
_POOLED = "all samples pooled (for segmentation every pixel, so the background weighs most)"
_PAPER = (  # the segmentation papers' test protocol, for the registry legends
    "ground-truth-foreground pixels, mean over volumes (the papers' protocol, METHODS §7.2)"
)


class PerVolumeMean(StreamingMetric):
    """Mean over volumes of a metric computed on each volume (the papers' test protocol).

    Each :meth:`update` call is **one volume** (e.g. its slices stacked as a ``(S, C, H, W)``
    batch): the wrapped metric is reset, updated with that volume and its value added to a
    float64 sum. Volumes whose value is NaN (for example no ground-truth foreground under
    ``pixel_subset="gt_fg"``) are skipped and counted in ``skipped``. States are sums, so DDP
    is exact.

    Args:
        metric: a calibrant calibration metric instance (its own sync is never used).
        **kwargs: forwarded to :class:`torchmetrics.Metric`.

    Example:
        >>> from calibrant.metrics import CalibrationError
        >>> pv = PerVolumeMean(CalibrationError(n_bins=10, pixel_subset="gt_fg"))
        >>> pv.update(torch.tensor([[[4.0], [0.0]], [[0.0], [1.0]]]), torch.tensor([[1], [1]]))
        >>> pv.update(torch.tensor([[[0.0], [3.0]]]), torch.tensor([[0]]))  # no foreground: skipped
        >>> round(float(pv.compute()), 4), int(pv.skipped)
        (0.6255, 1)
    """

    higher_is_better = False

    def __init__(self, metric: CalMetric, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not isinstance(metric, CalMetric):
            raise ValueError(f"PerVolumeMean wraps a calibrant calibration metric, got {metric!r}")
        self.metric = metric
        self._add_sum("total")
        self._add_sum("volumes", dtype=torch.int64)
        self._add_sum("skipped", dtype=torch.int64)

    def update(self, *args: Any, **kwargs: Any) -> None:
        """Add one volume."""
        self.metric.reset()
        self.metric.update(*args, **kwargs)
        v = self.metric._value()
        self.metric.reset()
        if math.isnan(float(v)):
            self.skipped += 1
        else:
            self.total += v.double()
            self.volumes += 1

    def compute(self) -> torch.Tensor:
        """Unweighted mean over the volumes seen (NaN if none)."""
        return ratio(self.total, self.volumes)
