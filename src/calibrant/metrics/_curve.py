"""The reliability-curve record shared by the calibration metrics and the plotting code."""

from __future__ import annotations

from typing import NamedTuple

import torch

__all__ = ["ReliabilityCurve"]


class ReliabilityCurve(NamedTuple):
    """Per-bin statistics of a reliability diagram.

    Attributes:
        edges: bin edges, shape ``(n_bins + 1,)``, float64.
        count: samples per bin, shape ``(n_bins,)``, int64.
        confidence: mean confidence per bin, ``(n_bins,)`` float64, NaN for empty bins.
        accuracy: mean outcome (accuracy, or positive frequency) per bin, NaN for empty bins.
    """

    edges: torch.Tensor
    count: torch.Tensor
    confidence: torch.Tensor
    accuracy: torch.Tensor
