r"""Binary segmentation scores of the ALL paper, pooled over the dataset, and AUC-ROC.

Inputs are logits of one foreground channel, ``(B, 1, *spatial)`` or ``(B, *spatial)``, and a
``{0, 1}`` target of the same shape. A pixel is predicted positive iff
:math:`\sigma(v) > t` (``threshold`` :math:`t`, default 0.5), computed exactly as
:math:`v > \operatorname{logit}(t)` (so :math:`v > 0` at 0.5), which avoids the rounding of a
float32 sigmoid near 0.5. Confusion counts are int64 sums pooled over all pixels of all images
(METHODS §9.3: "threshold sigmoid outputs at 0.5 and pool over the test set"), so streaming is
exact. A ratio whose denominator is 0 is NaN.

.. math::
    \mathrm{recall}=\frac{TP}{TP+FN},\;
    \mathrm{specificity}=\frac{TN}{TN+FP},\;
    \mathrm{precision}=\frac{TP}{TP+FP},\;
    F=\frac{2TP}{2TP+FP+FN},\;
    J=\frac{TP}{TP+FP+FN}

AUC-ROC: :func:`binary_auroc` is exact (Mann-Whitney with mid-ranks for ties, equal to
scikit-learn's ``roc_auc_score``). :class:`BinaryAUROC` streams a fixed-size histogram of
:math:`\sigma(v)` (float64) into ``n_bins`` equal-width bins per class; pairs that fall in the same
bin are counted as ties (1/2). The error against the exact AUC is therefore bounded by

.. math::
    |\widehat{\mathrm{AUC}} - \mathrm{AUC}| \le \frac{1}{2}\,
        \frac{\sum_b n^+_b\, n^-_b}{n^+\, n^-},

which :meth:`BinaryAUROC.error_bound` returns from the state itself.

Reference:
    ALL paper (METHODS §9.3); Hanley & McNeil (1982) for AUC = Mann-Whitney U / (n+ n-).
"""

from __future__ import annotations

import functools
import math

import torch

from calibrant._checks import check_finite, check_indicator_target
from calibrant.metrics._base import StreamingMetric
from calibrant.registry import METRICS

__all__ = [
    "BINARY_SCORES",
    "BinaryAUROC",
    "BinarySegmentationScores",
    "binary_auroc",
    "binary_confusion",
    "binary_scores_from_confusion",
    "binary_segmentation_scores",
]

# the registry metadata that this module's metrics share
_register = functools.partial(METRICS.register, task="binary", better="higher")

BINARY_SCORES = ("recall", "specificity", "precision", "f_measure", "jaccard")


def _check_binary(logits: torch.Tensor, target: torch.Tensor) -> None:
    hint = " (use (B, 1, *) for both or (B, *) for both)"
    check_indicator_target(logits, target, kind="binary", shape_hint=hint)
    check_finite("logits", logits)


def _logit_threshold(threshold: float) -> float:
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be a probability in (0, 1), got {threshold}")
    return math.log(threshold) - math.log1p(-threshold)


def binary_confusion(
    logits: torch.Tensor, target: torch.Tensor, *, threshold: float = 0.5
) -> torch.Tensor:
    r"""Pooled int64 confusion counts ``[TP, FP, TN, FN]`` of :math:`\sigma(v) > t`.

    Args:
        logits: foreground logits.
        target: ``{0, 1}`` ground truth (any dtype).
        threshold: probability threshold :math:`t \in (0, 1)`.

    Shape:
        logits and target ``(B, 1, *spatial)`` or ``(B, *spatial)``; returns int64 ``(4,)``.

    Example:
        >>> binary_confusion(torch.tensor([[2.0, -1.0, 0.5, -3.0]]), torch.tensor([[1, 1, 0, 0]]))
        tensor([1, 1, 1, 1])
    """
    _check_binary(logits, target)
    pred = logits > _logit_threshold(threshold)
    gt = target.bool()
    tp = (pred & gt).sum()
    fp = (pred & ~gt).sum()
    fn = (~pred & gt).sum()
    tn = gt.numel() - tp - fp - fn
    return torch.stack([tp, fp, tn, fn]).long()


def binary_scores_from_confusion(confusion: torch.Tensor) -> dict[str, torch.Tensor]:
    """Recall, specificity, precision, F-measure and Jaccard from ``[TP, FP, TN, FN]``.

    Args:
        confusion: int64 counts ``(4,)``.

    Returns:
        Dict of float64 scalars keyed by :data:`BINARY_SCORES`; NaN where a denominator is 0.

    Example:
        >>> s = binary_scores_from_confusion(torch.tensor([6, 2, 10, 2]))
        >>> list(s)
        ['recall', 'specificity', 'precision', 'f_measure', 'jaccard']
        >>> [round(float(v), 4) for v in s.values()]
        [0.75, 0.8333, 0.75, 0.75, 0.6]
    """
    tp, fp, tn, fn = confusion.double().unbind()
    return {
        "recall": tp / (tp + fn),
        "specificity": tn / (tn + fp),
        "precision": tp / (tp + fp),
        "f_measure": 2 * tp / (2 * tp + fp + fn),
        "jaccard": tp / (tp + fp + fn),
    }


def binary_segmentation_scores(
    logits: torch.Tensor, target: torch.Tensor, *, threshold: float = 0.5
) -> dict[str, torch.Tensor]:
    r"""The ALL paper's scores pooled over every pixel (see the module docstring for the maths).

    Args:
        logits: foreground logits.
        target: ``{0, 1}`` ground truth.
        threshold: probability threshold (0.5, i.e. logit 0, by default).

    Shape:
        ``(B, 1, *spatial)`` or ``(B, *spatial)`` each; values are float64 scalars.

    Returns:
        Dict ``recall, specificity, precision, f_measure, jaccard``.

    Example:
        >>> v = torch.tensor([[[2.0, -1.0], [0.5, -3.0]]])
        >>> y = torch.tensor([[[1, 1], [0, 0]]])
        >>> binary_segmentation_scores(v, y)["jaccard"]
        tensor(0.3333, dtype=torch.float64)
    """
    return binary_scores_from_confusion(binary_confusion(logits, target, threshold=threshold))


@_register(
    "binary_scores",
    legend="recall, specificity, precision, F and Jaccard of the foreground at σ > 0.5, "
    "confusion counts pooled over all pixels (the ALL paper's protocol, METHODS §9.3)",
)
class BinarySegmentationScores(StreamingMetric):
    """Streaming ALL-paper scores: int64 ``confusion`` state ``[TP, FP, TN, FN]`` (exact).

    Args:
        threshold: probability threshold.

    Example:
        >>> m = BinarySegmentationScores()
        >>> m.update(torch.tensor([[2.0, -1.0]]), torch.tensor([[1, 1]]))
        >>> m.update(torch.tensor([[0.5, -3.0]]), torch.tensor([[0, 0]]))
        >>> m.compute()["recall"]
        tensor(0.5000, dtype=torch.float64)
    """

    higher_is_better = True

    def __init__(self, threshold: float = 0.5, **kwargs) -> None:
        super().__init__(**kwargs)
        _logit_threshold(threshold)
        self.threshold = threshold
        self._add_sum("confusion", 4, torch.int64)

    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        """Add the batch's confusion counts."""
        self.confusion += binary_confusion(logits, target, threshold=self.threshold)

    def compute(self) -> dict[str, torch.Tensor]:
        """All five scores over everything seen."""
        return binary_scores_from_confusion(self.confusion)


def binary_auroc(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    r"""Exact AUC-ROC from logits, ties counted 1/2 (scikit-learn ``roc_auc_score`` parity).

    .. math::
        \mathrm{AUC} = \frac{\sum_{i:\,y_i=1} r_i - n^+(n^++1)/2}{n^+ n^-}

    with :math:`r_i` the mid-rank (average rank of a tie group) of :math:`v_i` in ascending order.
    Ranking uses the logits, so no ties are introduced by a saturating sigmoid.

    Args:
        logits: scores (any shape).
        target: ``{0, 1}`` of the same shape.

    Shape:
        any, equal; returns a float64 scalar, NaN if one class is absent.

    Example:
        >>> binary_auroc(torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([0, 0, 1, 1]))
        tensor(0.7500, dtype=torch.float64)
    """
    _check_binary(logits, target)
    s = logits.detach().reshape(-1)
    y = target.reshape(-1).bool()
    n = s.numel()
    n_pos = int(y.sum())
    n_neg = n - n_pos
    if n_pos == 0 or n_neg == 0:
        return torch.tensor(float("nan"), dtype=torch.float64, device=s.device)
    sorted_s, order = torch.sort(s, stable=True)
    _, counts = torch.unique_consecutive(sorted_s, return_counts=True)
    ends = torch.cumsum(counts, 0).double()  # 1-based rank of each group's last element
    mid = ends - (counts.double() - 1) / 2
    ranks = torch.repeat_interleave(mid, counts)
    pos_rank_sum = ranks[y[order]].sum()
    return (pos_rank_sum - n_pos * (n_pos + 1) / 2) / (float(n_pos) * float(n_neg))


def _auroc_from_hist(hist: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """AUC and its error bound from a ``(2, n_bins)`` int64 histogram ``[neg, pos]``."""
    neg, pos = hist.double().unbind()
    n_neg, n_pos = neg.sum(), pos.sum()
    denom = n_neg * n_pos
    below = torch.cumsum(neg, 0) - neg  # negatives in strictly lower bins
    u = (pos * (below + 0.5 * neg)).sum()
    tie = 0.5 * (pos * neg).sum()
    if denom == 0:
        nan = torch.tensor(float("nan"), dtype=torch.float64, device=hist.device)
        return nan, nan
    return u / denom, tie / denom


@_register("binary_auroc", legend="AUC-ROC of the foreground probability over all pixels pooled")
class BinaryAUROC(StreamingMetric):
    r"""Streaming AUC-ROC from a fixed histogram of :math:`\sigma(v)` (float64), per class.

    State: int64 ``(2, n_bins)`` counts of negatives and positives per equal-width probability
    bin (bin :math:`b` holds :math:`\lfloor n\,p \rfloor`, :math:`p = 1` in the last bin). Pairs
    within one bin count as ties, so the result differs from :func:`binary_auroc` by at most
    :meth:`error_bound` (typically :math:`O(1/n_\text{bins})` for continuous scores). Scores whose
    sigmoid saturates to 0 or 1 in float64 (|v| > 37) share the end bins.

    Args:
        n_bins: histogram resolution (state = ``16 * n_bins`` bytes).

    Example:
        >>> m = BinaryAUROC(n_bins=1000)
        >>> m.update(torch.tensor([-2.2, -0.4, -0.6, 1.4]), torch.tensor([0, 0, 1, 1]))
        >>> m.compute()
        tensor(0.7500, dtype=torch.float64)
        >>> m.error_bound()
        tensor(0., dtype=torch.float64)
    """

    higher_is_better = True

    def __init__(self, n_bins: int = 10_000, **kwargs) -> None:
        super().__init__(**kwargs)
        if n_bins < 1:
            raise ValueError(f"n_bins must be >= 1, got {n_bins}")
        self.n_bins = n_bins
        self._add_sum("hist", (2, n_bins), torch.int64)

    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        """Histogram the batch's probabilities by class."""
        _check_binary(logits, target)
        p = torch.sigmoid(logits.detach().reshape(-1).double())
        b = (p * self.n_bins).long().clamp_(0, self.n_bins - 1)
        idx = target.reshape(-1).long() * self.n_bins + b
        self.hist += torch.bincount(idx, minlength=2 * self.n_bins).view(2, self.n_bins)

    def compute(self) -> torch.Tensor:
        """Histogram AUC (NaN if a class is absent)."""
        return _auroc_from_hist(self.hist)[0]

    def error_bound(self) -> torch.Tensor:
        r"""Bound :math:`\tfrac12\sum_b n^+_b n^-_b / (n^+ n^-)` on ``|compute() - exact|``."""
        return _auroc_from_hist(self.hist)[1]
