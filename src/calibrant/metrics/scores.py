r"""Proper scoring rules for multi-class classification and segmentation.

The multi-class Brier score and the negative log-likelihood, both strictly proper, and CRaC's
neighbourhood Brier score (squared error to the local label proportions, *not* the standard
Brier score):

.. math::
    \mathrm{Brier} = \frac1M \sum_i \sum_k (s_{ik} - 1[y_i=k])^2,\qquad
    \mathrm{NLL} = -\frac1M \sum_i \log s_{i,y_i},\qquad
    \mathrm{NBrier} = \frac1M \sum_i \sum_k (s_{ik} - \tau_{ik})^2

over the ``M`` valid elements, with :math:`s_i = \mathrm{softmax}(z_i)` and :math:`\tau_{ik}`
the share of class ``k`` in the ``k^d`` window around element ``i``.

Each score has a pure function and a :class:`torchmetrics.Metric` class. The class states are a
float64 sum and an int64 count (``dist_reduce_fx="sum"``), so streaming over batches and DDP
ranks gives exactly the one-shot value. The conventions are those of
:mod:`calibrant.metrics.calibration`: logits ``(B, C, *spatial)`` (probabilities only with
``input_kind="probs"``), labels ``(B, *spatial)`` with ``ignore_index``, ``pixel_subset`` and
``mask`` select the elements, no valid element gives NaN, and
:class:`~calibrant.metrics.calibration.PerVolumeMean` gives the mean of per-volume values.

Example:
    >>> import torch
    >>> from calibrant.metrics import brier_score, BrierScore
    >>> logits = torch.tensor([[4.0, 0.0], [0.0, 1.0], [2.0, 2.5]])
    >>> target = torch.tensor([0, 0, 1])
    >>> round(float(brier_score(logits, target)), 4)
    0.4515
    >>> metric = BrierScore()
    >>> metric.update(logits[:2], target[:2]); metric.update(logits[2:], target[2:])
    >>> round(float(metric.compute()), 4)
    0.4515

Reference:
    Brier, Verification of forecasts expressed in terms of probability, 1950 (Brier score).
    Gneiting & Raftery, Strictly Proper Scoring Rules, Prediction, and Estimation, JASA 2007.
    CRaC (MICCAI 2024), official code ``seg_brier_score`` (neighbourhood Brier; METHODS §7.1).
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import torch

from calibrant._tensor import float32, neighbor_proportions, valid_mask
from calibrant.metrics import _binning as K
from calibrant.metrics._base import Inputs, MeanMetric, element_function, ratio
from calibrant.metrics.per_volume import _POOLED
from calibrant.registry import METRICS

__all__ = [
    "brier_score",
    "negative_log_likelihood",
    "neighborhood_brier_score",
    "BrierScore",
    "NegativeLogLikelihood",
    "NeighborhoodBrierScore",
]

# the registry metadata that this module's metrics share
_register = functools.partial(METRICS.register, task="multiclass", better="lower")


# ----------------------------------------------------------------------------------------------
# Functions
# ----------------------------------------------------------------------------------------------


class _Sums(NamedTuple):
    brier: torch.Tensor  # float64 sum of the per-element Brier terms
    nll: torch.Tensor  # float64 sum of the per-element NLL terms
    count: torch.Tensor  # int64 count of valid elements


def _score_sums(logits, target, mask, inputs: Inputs) -> _Sums:
    """Float64 sums of the Brier and NLL terms and the int64 count of valid elements."""
    chunks = inputs.chunks(logits, target, mask)
    dev = logits.device
    brier = torch.zeros((), dtype=torch.float64, device=dev)
    nll = torch.zeros((), dtype=torch.float64, device=dev)
    count = torch.zeros((), dtype=torch.int64, device=dev)
    with torch.no_grad(), float32(logits):
        for ch in chunks:
            zmax, e = K.softmax_stats(ch.z, inputs.input_kind)
            v = ch.valid
            if inputs.input_kind == "probs":
                p = e
                log_pt = p.gather(0, ch.t.unsqueeze(0)).squeeze(0).log()
                nll_part = torch.where(v, log_pt, 0).sum(dtype=torch.float64)
            else:
                s = e.sum(0)
                p = e / s
                zt = ch.z.gather(0, ch.t.unsqueeze(0)).squeeze(0)
                nll_part = torch.where(v, zt - zmax - s.log(), 0).sum(dtype=torch.float64)
                if not bool(torch.isfinite(nll_part)):
                    # finite logits, so z_t - max overflowed float32 (a spread beyond 3.4e38):
                    # redo this chunk in float64, where the true value is finite
                    log_pt = zt.double() - zmax.double() - s.log().double()
                    nll_part = torch.where(v, log_pt, 0).sum()
            pt = p.gather(0, ch.t.unsqueeze(0)).squeeze(0)
            b = p.square().sum(0) - 2 * pt + 1
            brier += torch.where(v, b, 0).sum(dtype=torch.float64)
            nll -= nll_part
            count += v.sum()
    return _Sums(brier, nll, count)


@element_function
def brier_score(logits, target, mask, _inputs: Inputs) -> torch.Tensor:
    r"""Multi-class Brier score, :math:`\frac1M\sum_i\sum_k (s_{ik} - 1[y_i=k])^2`.

    Args:
        logits: ``(B, C, *spatial)`` scores (softmax link), or probabilities.
        target: ``(B, *spatial)`` labels.
        ignore_index: label left out of the mean.
        mask: optional bool ``(B, *spatial)``; only True elements count.
        pixel_subset: ``"all"`` or ``"gt_fg"`` (labels other than 0).
        input_kind: ``"logits"`` or ``"probs"`` (used as given, not renormalised).

    Returns:
        float64 scalar in ``[0, 2]``; NaN with no valid element.

    Example:
        >>> round(float(brier_score(torch.tensor([[0.0, 0.0]]), torch.tensor([1]))), 4)
        0.5

    Reference:
        Brier, Verification of forecasts expressed in terms of probability, 1950.
    """
    sums = _score_sums(logits, target, mask, _inputs)
    return ratio(sums.brier, sums.count)


@element_function
def negative_log_likelihood(logits, target, mask, _inputs: Inputs) -> torch.Tensor:
    r"""Mean negative log-likelihood :math:`-\frac1M\sum_i \log s_{i,y_i}` (cross-entropy).

    Args:
        logits: ``(B, C, *spatial)``; the log-softmax is taken stably from the logits.
        target: ``(B, *spatial)``.
        ignore_index: ignored label.
        mask: optional bool subset of the elements.
        pixel_subset: ``"all"`` or ``"gt_fg"``.
        input_kind: ``"logits"``, or ``"probs"`` for the log of the label's given probability.

    Returns:
        float64 scalar ``>= 0`` (``inf`` where a label has probability 0 under ``"probs"``);
        NaN with no valid element.

    Example:
        >>> round(float(negative_log_likelihood(torch.tensor([[0.0, 0.0]]),
        ...                                     torch.tensor([1]))), 4)
        0.6931
    """
    sums = _score_sums(logits, target, mask, _inputs)
    return ratio(sums.nll, sums.count)


def _neighborhood_brier_sums(logits, target, mask, inputs: Inputs, kernel_size, padding):
    inputs.check_batch(logits, target, mask)
    if logits.dim() < 3:
        raise ValueError("neighborhood_brier_score needs spatial dims: logits (B, C, *spatial)")
    C = logits.shape[1]
    ignore_index = inputs.ignore_index
    total = torch.zeros((), dtype=torch.float64, device=logits.device)
    count = torch.zeros((), dtype=torch.int64, device=logits.device)
    with torch.no_grad(), float32(logits):
        for b in range(logits.shape[0]):  # one sample at a time bounds the (C, *spatial) temps
            z = logits[b : b + 1].float()
            K._check_chunk_finite(z.flatten(1), z.flatten(1).amax(0), "logits")
            y = target[b : b + 1]
            safe, valid = valid_mask(y, ignore_index)
            if bool(((safe < 0) | (safe >= C)).any()):
                raise ValueError(f"target holds labels outside [0, {C})")
            if mask is not None:
                valid &= mask[b : b + 1]
            if inputs.pixel_subset == "gt_fg":
                valid &= safe != 0
            tau = neighbor_proportions(
                y, C, kernel_size=kernel_size, padding=padding, ignore_index=ignore_index
            )
            err = (torch.softmax(z, 1) - tau).square().sum(1)
            total += torch.where(valid, err, 0).sum(dtype=torch.float64)
            count += valid.sum()
    return total, count


def neighborhood_brier_score(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    kernel_size: int = 3,
    padding: str = "label0",
    ignore_index: int | None = -100,
    mask: torch.Tensor | None = None,
    pixel_subset: str = "gt_fg",
) -> torch.Tensor:
    r"""CRaC's "Brier" score: squared error to the ``k^d`` neighbourhood label proportions.

    .. math::
        \frac1M \sum_i \sum_k (s_{ik} - \tau_{ik})^2,\qquad
        \tau_{ik} = \text{share of class } k \text{ in the window around } i

    (:func:`calibrant._tensor.neighbor_proportions`; out-of-image neighbours are background).
    This is **not** the standard Brier score (which uses the one-hot label); the CRaC code calls
    it ``seg_brier_score`` and evaluates it on ground-truth foreground pixels (the default here).

    Args:
        logits: ``(B, C, *spatial)`` with 1 to 3 spatial dims.
        target: ``(B, *spatial)``.
        kernel_size: odd window size.
        padding: window padding, see :func:`~calibrant._tensor.neighbor_proportions`.
        ignore_index: ignored label.
        mask: optional bool subset.
        pixel_subset: ``"gt_fg"`` (default, CRaC) or ``"all"``.

    Returns:
        float64 scalar (NaN with no valid element).

    Example:
        >>> logits = torch.zeros(1, 2, 3, 3)
        >>> y = torch.ones(1, 3, 3, dtype=torch.long)
        >>> round(float(neighborhood_brier_score(logits, y, pixel_subset="all")), 4)
        0.083

    Reference:
        CRaC (MICCAI 2024), official code ``seg_brier_score``; METHODS §7.1.
    """
    inputs = Inputs(ignore_index, pixel_subset)
    return ratio(*_neighborhood_brier_sums(logits, target, mask, inputs, kernel_size, padding))


# ----------------------------------------------------------------------------------------------
# Streaming classes
# ----------------------------------------------------------------------------------------------


class _ScoreMetric(MeanMetric):
    """Shared state and update of :class:`BrierScore` and :class:`NegativeLogLikelihood`.

    ``score`` names the :func:`_score_sums` field that the subclass averages.
    """

    score: str

    def __init__(
        self,
        *,
        ignore_index: int | None = -100,
        pixel_subset: str = "all",
        input_kind: str = "logits",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self._set_inputs(ignore_index, pixel_subset, input_kind)
        self._add_mean_state()

    def update(
        self, logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None
    ) -> None:
        """Add a batch."""
        sums = _score_sums(logits, target, mask, self.inputs)
        self._add_to_mean(getattr(sums, self.score), sums.count)


@_register(
    "brier", legend=f"Brier score: squared distance of the softmax to the one-hot label, {_POOLED}"
)
class BrierScore(_ScoreMetric):
    """Streaming multi-class Brier score (see :func:`brier_score`).

    Args:
        ignore_index: label left out of the mean.
        pixel_subset: ``"all"`` or ``"gt_fg"`` (labels other than 0).
        input_kind: ``"logits"`` or ``"probs"`` (used as given, not renormalised).
        **kwargs: forwarded to :class:`torchmetrics.Metric`.

    Example:
        >>> m = BrierScore()
        >>> m.update(torch.tensor([[0.0, 0.0]]), torch.tensor([1]))
        >>> float(m.compute())
        0.5
    """

    score = "brier"


@_register("nll", legend=f"negative log-likelihood of the true label, mean over {_POOLED}")
class NegativeLogLikelihood(_ScoreMetric):
    """Streaming mean NLL (see :func:`negative_log_likelihood`).

    Args:
        ignore_index: label left out of the mean.
        pixel_subset: which elements count: ``"all"``, or ``"gt_fg"`` for labels other than 0.
        input_kind: ``"logits"``, or ``"probs"`` for probabilities.
        **kwargs: forwarded to :class:`torchmetrics.Metric`.

    Example:
        >>> m = NegativeLogLikelihood()
        >>> m.update(torch.tensor([[0.0, 0.0]]), torch.tensor([1]))
        >>> round(float(m.compute()), 4)
        0.6931
    """

    score = "nll"


@_register(
    "neighborhood_brier",
    legend="CRaC's neighbourhood Brier score: squared distance to the label proportions of each "
    "pixel's neighbourhood",
)
class NeighborhoodBrierScore(MeanMetric):
    """Streaming CRaC neighbourhood Brier score (see :func:`neighborhood_brier_score`).

    Args:
        kernel_size: odd window size.
        padding: window padding.
        ignore_index: ignored label.
        pixel_subset: ``"gt_fg"`` (default) or ``"all"``.
        **kwargs: forwarded to :class:`torchmetrics.Metric`.

    Example:
        >>> m = NeighborhoodBrierScore(pixel_subset="all")
        >>> m.update(torch.zeros(1, 2, 3, 3), torch.ones(1, 3, 3, dtype=torch.long))
        >>> m.compute()
        tensor(0.0830, dtype=torch.float64)
    """

    def __init__(
        self,
        kernel_size: int = 3,
        *,
        padding: str = "label0",
        ignore_index: int | None = -100,
        pixel_subset: str = "gt_fg",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self._set_inputs(ignore_index, pixel_subset, "logits")
        self.kernel_size, self.padding = kernel_size, padding
        self._add_mean_state()

    def update(
        self, logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None
    ) -> None:
        """Add a batch of images/volumes."""
        self._add_to_mean(
            *_neighborhood_brier_sums(
                logits, target, mask, self.inputs, self.kernel_size, self.padding
            )
        )
