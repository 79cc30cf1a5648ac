r"""Ranking metrics: top-1 accuracy, multi-label mAP (class-wise and instance-wise), SPA retrieval.

The SPA retrieval metrics live in :mod:`calibrant.metrics.retrieval` and are re-exported here.

Average precision (AP) follows scikit-learn's ``average_precision_score`` exactly, ties included:
thresholds are the distinct scores, and

.. math::
    \mathrm{AP} = \sum_t (R_t - R_{t-1})\,P_t
               = \frac{1}{|\mathcal P|} \sum_{t} n^+_t \,
                 \frac{\#\{\text{pos. with } s \ge t\}}{\#\{s \ge t\}},

where :math:`t` runs over the distinct scores in decreasing order and :math:`n^+_t` counts the
positives scored exactly :math:`t` (so every positive inside a tie group gets the precision at the
end of its group). Scores are ranked on the **logits** (a monotone map of the probabilities), which
avoids the spurious ties that a saturated float32 sigmoid would create.

State sizes. Top-1 accuracy and instance-wise mAP (each sample is ranked on its own) stream with
fixed-size sums and are exact. Class-wise mAP and retrieval mAP rank *samples*, which needs every
score: their streaming classes keep ``cat`` list states of size O(N x labels) (respectively
O(N x queries)). This is the one documented exception to calibrant's fixed-size-state rule, chosen
because it is exact; a histogram would turn every within-bin pair into a tie.

Reference:
    SPA paper §7.5 of METHODS.md (mAP@y = class-wise, mAP@x = instance-wise) and §4.8 (retrieval
    score :math:`\hat s(x) = \prod_{j\in P}\hat\eta_j \prod_{k\in N}(1-\hat\eta_k)`).
"""

from __future__ import annotations

import functools

import torch

from calibrant._checks import (
    check_finite,
    check_labels_in_range,
    check_logits_target,
    check_multilabel_target,
)
from calibrant._tensor import float32, valid_mask
from calibrant.metrics._average_precision import (
    RankedLists,
    ap_columns,
    nanmean,
    nanmean_with_count,
)
from calibrant.metrics._base import StreamingMetric, ratio
from calibrant.metrics.retrieval import (
    RetrievalMAP,
    make_queries,
    retrieval_map,
    retrieval_relevance,
    retrieval_score,
)
from calibrant.registry import METRICS

__all__ = [
    "Accuracy",
    "MultilabelClasswiseMAP",
    "MultilabelInstancewiseMAP",
    "RetrievalMAP",
    "accuracy",
    "average_precision",
    "make_queries",
    "multilabel_classwise_map",
    "multilabel_instancewise_map",
    "retrieval_map",
    "retrieval_relevance",
    "retrieval_score",
]

# the registry metadata that this module's metrics share
_register = functools.partial(METRICS.register, task="multilabel", better="higher")


def _check_multilabel(logits: torch.Tensor, target: torch.Tensor) -> None:
    check_multilabel_target(logits, target)
    if logits.dim() != 2:
        raise ValueError(f"multi-label logits must have shape (N, T), got {tuple(logits.shape)}")
    check_finite("logits", logits)


# --------------------------------------------------------------------------------------------
# Accuracy
# --------------------------------------------------------------------------------------------
def _accuracy_update(
    logits: torch.Tensor, target: torch.Tensor, ignore_index: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    check_logits_target(logits, target)
    check_labels_in_range(target, logits.shape[1], ignore_index)
    safe, mask = valid_mask(target, ignore_index)
    pred = logits.argmax(dim=1)
    correct = ((pred == safe) & mask).sum()
    return correct, mask.sum()


def accuracy(
    logits: torch.Tensor, target: torch.Tensor, *, ignore_index: int | None = -100
) -> torch.Tensor:
    r"""Top-1 accuracy of ``argmax`` over dim 1, on the non-ignored elements.

    .. math::
        \mathrm{acc} = \frac{1}{|V|} \sum_{i \in V} \mathbb 1[\arg\max_k l_{ik} = y_i]

    Args:
        logits: class scores; NaN logits are not checked here (argmax is well defined).
        target: integer labels.
        ignore_index: label to skip, or ``None``.

    Shape:
        logits ``(B, C, *spatial)``, target ``(B, *spatial)``; returns a float64 scalar
        (NaN when every element is ignored).

    Example:
        >>> logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 1.0]])
        >>> accuracy(logits, torch.tensor([0, 0, -100]))
        tensor(0.5000, dtype=torch.float64)
    """
    correct, total = _accuracy_update(logits, target, ignore_index)
    return correct.double() / total.double()  # 0 / 0 = NaN when everything is ignored


# checks_finite=False: accuracy needs only the argmax, which is defined for any input (NaN counts
# as the maximum), so it skips the extra pass over the logits that a finiteness check costs.
@_register("accuracy", task="multiclass", legend="top-1 accuracy", checks_finite=False)
class Accuracy(StreamingMetric):
    """Streaming top-1 accuracy with int64 ``correct`` / ``total`` states (exact).

    Args:
        ignore_index: label to skip, or ``None``.

    Example:
        >>> m = Accuracy()
        >>> m.update(torch.tensor([[2.0, 0.0]]), torch.tensor([0]))
        >>> m.update(torch.tensor([[2.0, 0.0]]), torch.tensor([1]))
        >>> m.compute()
        tensor(0.5000, dtype=torch.float64)
    """

    higher_is_better = True

    def __init__(self, ignore_index: int | None = -100, **kwargs) -> None:
        super().__init__(**kwargs)
        self.ignore_index = ignore_index
        self._add_sum("correct", dtype=torch.int64)
        self._add_sum("total", dtype=torch.int64)

    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        """Accumulate correct and valid counts of one batch."""
        correct, total = _accuracy_update(logits, target, self.ignore_index)
        self.correct += correct
        self.total += total

    def compute(self) -> torch.Tensor:
        """Accuracy over everything seen (NaN if nothing was counted)."""
        return ratio(self.correct.double(), self.total)


# --------------------------------------------------------------------------------------------
# Average precision and multi-label mAP
# --------------------------------------------------------------------------------------------
def average_precision(scores: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    r"""Average precision of one ranking, scikit-learn ``average_precision_score`` semantics.

    .. math::
        \mathrm{AP} = \frac{1}{|\mathcal P|}\sum_t n^+_t\,\mathrm{Prec}(s \ge t)

    over the distinct scores :math:`t` (ties share the precision at the end of their group).

    Args:
        scores: any real scores (logits or probabilities; only the order matters).
        target: ``{0, 1}`` relevance of each entry.

    Shape:
        ``(N,)`` each; returns a float64 scalar, NaN when there is no positive.

    Example:
        >>> average_precision(torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([0, 0, 1, 1]))
        tensor(0.8333, dtype=torch.float64)
    """
    if scores.dim() != 1 or scores.shape != target.shape:
        raise ValueError(
            f"scores and target must be 1-D of equal shape, got {tuple(scores.shape)} and "
            f"{tuple(target.shape)}"
        )
    check_finite("scores", scores)
    return ap_columns(scores.unsqueeze(1), target.unsqueeze(1).bool())[0]


def multilabel_classwise_map(
    logits: torch.Tensor, target: torch.Tensor, *, average: bool = True
) -> torch.Tensor:
    r"""Class-wise mAP ("mAP@y"): per label, rank the samples by score; mean AP over labels.

    .. math::
        \mathrm{mAP@y} = \frac{1}{|\mathcal T^+|}\sum_{t\in\mathcal T^+}
            \mathrm{AP}\big((v_{it})_i, (y_{it})_i\big)

    where :math:`\mathcal T^+` are the labels with at least one positive sample (labels without a
    positive are excluded, whereas scikit-learn's ``average="macro"`` would score them 0).

    Args:
        logits: multi-label logits (ranking is on logits, identical to ranking on sigmoid).
        target: multi-hot ``{0, 1}`` targets.
        average: if False, return the per-label AP (NaN for labels without positives).

    Shape:
        ``(N, T)`` each; returns a float64 scalar (or ``(T,)``).

    Example:
        >>> v = torch.tensor([[2.0, -1.0], [0.5, 1.0], [-1.0, 0.0]])
        >>> y = torch.tensor([[1, 0], [0, 1], [1, 0]])
        >>> multilabel_classwise_map(v, y)
        tensor(0.9167, dtype=torch.float64)
    """
    _check_multilabel(logits, target)
    with float32(logits):
        ap = ap_columns(logits.float(), target.bool())
    if not average:
        return ap
    return nanmean(ap)


def _instancewise_update(
    logits: torch.Tensor, target: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    _check_multilabel(logits, target)
    with float32(logits):
        ap = ap_columns(logits.float().T, target.bool().T)
    return nanmean_with_count(ap)


def multilabel_instancewise_map(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    r"""Instance-wise mAP ("mAP@x"): per sample, rank its labels; mean AP over samples.

    .. math::
        \mathrm{mAP@x} = \frac{1}{|\mathcal I^+|}\sum_{i\in\mathcal I^+}
            \mathrm{AP}\big((v_{it})_t, (y_{it})_t\big)

    over the samples :math:`\mathcal I^+` with at least one positive label.

    Args:
        logits: multi-label logits.
        target: multi-hot ``{0, 1}`` targets.

    Shape:
        ``(N, T)`` each; returns a float64 scalar (NaN if no sample has a positive).

    Example:
        >>> v = torch.tensor([[2.0, -1.0, 0.0], [0.5, 1.0, 3.0]])
        >>> y = torch.tensor([[1, 0, 0], [1, 0, 0]])
        >>> multilabel_instancewise_map(v, y)
        tensor(0.6667, dtype=torch.float64)
    """
    return ratio(*_instancewise_update(logits, target))


@_register(
    "map_instancewise",
    legend="mAP@x: average precision of each sample over its labels, mean over samples",
)
class MultilabelInstancewiseMAP(StreamingMetric):
    """Streaming instance-wise mAP (mAP@x): fixed-size sum of per-sample AP and a count (exact).

    Example:
        >>> m = MultilabelInstancewiseMAP()
        >>> m.update(torch.tensor([[2.0, -1.0, 0.0]]), torch.tensor([[1, 0, 0]]))
        >>> m.update(torch.tensor([[0.5, 1.0, 3.0]]), torch.tensor([[1, 0, 0]]))
        >>> m.compute()
        tensor(0.6667, dtype=torch.float64)
    """

    higher_is_better = True

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._add_sum("ap_sum")
        self._add_sum("count", dtype=torch.int64)

    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        """Add the AP of every sample of the batch that has a positive label."""
        total, count = _instancewise_update(logits, target)
        self.ap_sum += total
        self.count += count

    def compute(self) -> torch.Tensor:
        """Mean AP over samples with a positive label."""
        return ratio(self.ap_sum, self.count)


@_register(
    "map_classwise",
    legend="mAP@y: average precision of each label over the samples, mean over labels",
)
class MultilabelClasswiseMAP(RankedLists):
    """Streaming class-wise mAP (mAP@y), exact, with O(N x T) ``cat`` states (documented exception).

    Ranking samples needs all of them, so scores and targets are kept (as float32 logits and
    uint8 targets) and ranked in ``compute``; DDP gathers them.

    Example:
        >>> m = MultilabelClasswiseMAP()
        >>> m.update(torch.tensor([[2.0, -1.0], [0.5, 1.0]]), torch.tensor([[1, 0], [0, 1]]))
        >>> m.update(torch.tensor([[-1.0, 0.0]]), torch.tensor([[1, 0]]))
        >>> m.compute()
        tensor(0.9167, dtype=torch.float64)
    """

    lists = ("logits", "target")

    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        """Store the batch (validated)."""
        _check_multilabel(logits, target)
        self.logits.append(logits.detach().float())
        self.target.append(target.detach().to(torch.uint8))

    def _rank(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return multilabel_classwise_map(logits, target)
