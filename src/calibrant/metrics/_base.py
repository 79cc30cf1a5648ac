"""The streaming base shared by the calibration metrics and the proper scores (private).

:class:`CalMetric` keeps fixed-size sum states (float64 sums, int64 counts,
``dist_reduce_fx="sum"``), so streaming over batches and DDP ranks gives the one-shot value;
:func:`prepare_batch` is the input check every calibration metric runs first.
"""

from __future__ import annotations

import torch
from torchmetrics import Metric

from calibrant.metrics import _binning as K

__all__ = ["CalMetric", "prepare_batch"]


def prepare_batch(logits, target, mask, *, num_classes, input_kind, pixel_subset):
    """Validate a batch: finite logits, matching shapes and dtypes, labels in range."""
    K.check_inputs(
        logits,
        target,
        num_classes=num_classes,
        mask=mask,
        input_kind=input_kind,
        pixel_subset=pixel_subset,
    )


class CalMetric(Metric):
    """Base: fixed-size sum states; ``_value()`` computes from local state without syncing.

    Also the base of the scores in :mod:`calibrant.metrics.scores`, so :class:`PerVolumeMean`
    wraps any of them.
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def _add_bins(self, prefix: str, shape: tuple[int, ...]) -> None:
        self.add_state(f"{prefix}count", torch.zeros(shape, dtype=torch.int64), "sum")
        self.add_state(f"{prefix}conf", torch.zeros(shape, dtype=torch.float64), "sum")
        self.add_state(f"{prefix}acc", torch.zeros(shape, dtype=torch.float64), "sum")

    def _bins(self, prefix: str = "") -> K.Bins:
        return K.Bins(
            getattr(self, f"{prefix}count"),
            getattr(self, f"{prefix}conf"),
            getattr(self, f"{prefix}acc"),
        )

    def _add_to(self, prefix: str, new: K.Bins) -> None:
        for name, v in zip(("count", "conf", "acc"), new, strict=True):
            getattr(self, f"{prefix}{name}").add_(v)

    def compute(self) -> torch.Tensor:
        """Metric value over everything seen (synchronised across ranks by torchmetrics)."""
        return self._value()

    def _value(self) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError
