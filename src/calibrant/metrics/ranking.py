r"""Ranking metrics: top-1 accuracy, multi-label mAP (class-wise and instance-wise), SPA retrieval.

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
import itertools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torchmetrics.utilities import dim_zero_cat

from calibrant._checks import (
    check_finite,
    check_labels_in_range,
    check_logits_target,
    check_multilabel_target,
)
from calibrant._tensor import float32, valid_mask
from calibrant.metrics._base import StreamingMetric, ratio
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

Query = tuple[Sequence[int], Sequence[int]]


# --------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------
def _ap_columns(scores: torch.Tensor, relevant: torch.Tensor) -> torch.Tensor:
    """AP of every column of ``scores`` ``(N, Q)`` against bool ``relevant`` ``(N, Q)``.

    Returns float64 ``(Q,)``, NaN where a column has no relevant entry.
    """
    n = scores.shape[0]
    if n == 0:
        return scores.new_full((scores.shape[1],), float("nan"), dtype=torch.float64)
    s, order = torch.sort(scores, dim=0, descending=True, stable=True)
    rel = torch.gather(relevant.long(), 0, order)
    tp = torch.cumsum(rel, dim=0)  # positives ranked at or above i
    # i closes a tie group when the next score differs (or i is the last row).
    is_end = torch.ones_like(s, dtype=torch.bool)
    is_end[:-1] = s[1:] != s[:-1]
    # True positives at the previous group end: cummax of tp masked to group ends, shifted by one.
    tp_end = torch.where(is_end, tp, torch.zeros_like(tp))
    prev = torch.cummax(tp_end, dim=0).values
    prev = torch.cat([torch.zeros_like(prev[:1]), prev[:-1]], dim=0)
    rank = torch.arange(1, n + 1, device=s.device, dtype=torch.float64).unsqueeze(1)
    precision = tp.double() / rank
    contrib = torch.where(is_end, (tp - prev).double() * precision, precision.new_zeros(()))
    n_pos = rel.sum(0).double()
    ap = contrib.sum(0) / n_pos
    return torch.where(n_pos > 0, ap, torch.full_like(ap, float("nan")))


def _nanmean_with_count(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    ok = ~torch.isnan(values)
    total = torch.where(ok, values, values.new_zeros(())).sum()
    return total, ok.sum()


def _nanmean(values: torch.Tensor) -> torch.Tensor:
    """Mean of the entries that are not NaN (NaN if there is none)."""
    return ratio(*_nanmean_with_count(values))


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
    return _ap_columns(scores.unsqueeze(1), target.unsqueeze(1).bool())[0]


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
        ap = _ap_columns(logits.float(), target.bool())
    if not average:
        return ap
    return _nanmean(ap)


def _instancewise_update(
    logits: torch.Tensor, target: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    _check_multilabel(logits, target)
    with float32(logits):
        ap = _ap_columns(logits.float().T, target.bool().T)
    return _nanmean_with_count(ap)


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
class MultilabelClasswiseMAP(StreamingMetric):
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

    higher_is_better = True

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._add_list("logits")
        self._add_list("target")

    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        """Store the batch (validated)."""
        _check_multilabel(logits, target)
        self.logits.append(logits.detach().float())
        self.target.append(target.detach().to(torch.uint8))

    def compute(self) -> torch.Tensor:
        """Class-wise mAP over everything stored."""
        if len(self.logits) == 0:
            return torch.tensor(float("nan"), dtype=torch.float64)
        return multilabel_classwise_map(dim_zero_cat(self.logits), dim_zero_cat(self.target))


# --------------------------------------------------------------------------------------------
# SPA retrieval
# --------------------------------------------------------------------------------------------
def _indicator(queries: Sequence[Query], num_labels: int, device) -> tuple[torch.Tensor, ...]:
    if len(queries) == 0:
        raise ValueError("queries must hold at least one (positive, negative) pair")
    pos = torch.zeros(num_labels, len(queries), dtype=torch.float64, device=device)
    neg = torch.zeros_like(pos)
    for q, (p, n) in enumerate(queries):
        p, n = list(p), list(n)
        if set(p) & set(n):
            raise ValueError(f"query {q}: labels {sorted(set(p) & set(n))} are both in P and N")
        if len(p) + len(n) == 0:
            raise ValueError(f"query {q} is empty")
        if any(not 0 <= j < num_labels for j in p + n):
            raise ValueError(f"query {q} holds labels outside [0, {num_labels}): {p}, {n}")
        pos[p, q] = 1.0
        neg[n, q] = 1.0
    return pos, neg


def _check_retrieval_target(scores: torch.Tensor, target: torch.Tensor) -> None:
    if scores.shape != target.shape:
        raise ValueError(f"target shape {tuple(target.shape)} must equal {tuple(scores.shape)}")
    if bool(((target != 0) & (target != 1)).any()):
        raise ValueError("multi-label target must hold only 0 and 1")


def retrieval_score(
    scores: torch.Tensor,
    queries: Sequence[Query],
    *,
    probs: bool = False,
) -> torch.Tensor:
    r"""SPA retrieval log-score of every sample for every query ``(P, N)`` (METHODS §4.8).

    .. math::
        \log \hat s(x) = \sum_{j\in P}\log\hat\eta_j + \sum_{k\in N}\log(1-\hat\eta_k)

    From logits, :math:`\hat\eta = \sigma(v)` and both logs are ``logsigmoid(±v)`` (stable for
    any logit). Models with another inverse link (SPA's :math:`\Psi^{-1}`) pass their
    probabilities with ``probs=True``; logs of 0 give ``-inf`` (still a valid ranking).

    Args:
        scores: logits ``v``, or probabilities :math:`\hat\eta` when ``probs=True``.
        queries: sequence of ``(positive_labels, negative_labels)``; the two sets are disjoint.
        probs: ``scores`` holds probabilities in [0, 1] (explicit; never guessed).

    Shape:
        scores ``(N, T)``; returns float64 ``(N, Q)``.

    Example:
        >>> v = torch.tensor([[0.0, 0.0], [2.0, -2.0]])
        >>> retrieval_score(v, [([0], [1])]).exp()
        tensor([[0.2500],
                [0.7758]], dtype=torch.float64)
    """
    if scores.dim() != 2 or not torch.is_floating_point(scores):
        raise ValueError(
            f"scores must be a float (N, T) tensor, got {scores.dtype} {tuple(scores.shape)}"
        )
    pos, neg = _indicator(queries, scores.shape[1], scores.device)
    if probs:
        p = scores.double()
        if bool(torch.isnan(p).any()) or bool(((p < 0) | (p > 1)).any()):
            raise ValueError("probs=True needs probabilities in [0, 1] (found NaN or out of range)")
        log_p, log_q = torch.log(p), torch.log1p(-p)
    else:
        check_finite("logits", scores)
        v = scores.double()
        log_p, log_q = F.logsigmoid(v), F.logsigmoid(-v)
    # A 0 * -inf product would be NaN: select instead of multiplying where the indicator is 0.
    lp = torch.where(pos.bool().unsqueeze(0), log_p.unsqueeze(2), log_p.new_zeros(())).sum(1)
    lq = torch.where(neg.bool().unsqueeze(0), log_q.unsqueeze(2), log_q.new_zeros(())).sum(1)
    return lp + lq


def retrieval_relevance(target: torch.Tensor, queries: Sequence[Query]) -> torch.Tensor:
    """Relevance of each sample to each query: all of ``P`` present and none of ``N``.

    Args:
        target: multi-hot ``{0, 1}`` labels.
        queries: sequence of ``(positive_labels, negative_labels)``.

    Shape:
        target ``(N, T)``; returns bool ``(N, Q)``.

    Example:
        >>> retrieval_relevance(torch.tensor([[1, 0, 1], [1, 1, 0]]), [([0], [1])])
        tensor([[ True],
                [False]])
    """
    pos, neg = _indicator(queries, target.shape[1], target.device)
    y = target.double()
    return (y @ pos == pos.sum(0)) & (y @ neg == 0)


def make_queries(
    num_labels: int,
    n_pos: int,
    n_neg: int,
    *,
    num_queries: int | None = None,
    generator: torch.Generator | None = None,
) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    r"""Query set with ``|P| = n_pos`` and ``|N| = n_neg`` disjoint labels.

    With ``num_queries=None`` every combination is enumerated in lexicographic order
    (:math:`\binom{T}{|P|}\binom{T-|P|}{|N|}` queries; refused above 100 000). Otherwise
    ``num_queries`` distinct queries are drawn uniformly without replacement using
    ``generator`` (each draw: a random permutation of the labels, the first ``n_pos`` form P
    and the next ``n_neg`` form N; both sorted; duplicates redrawn).

    Args:
        num_labels: number of labels ``T``.
        n_pos: size of the positive set.
        n_neg: size of the negative set.
        num_queries: how many to sample, or ``None`` for all.
        generator: randomness for sampling.

    Returns:
        List of ``(P, N)`` tuples of label indices.

    Example:
        >>> make_queries(3, 1, 1)
        [((0,), (1,)), ((0,), (2,)), ((1,), (0,)), ((1,), (2,)), ((2,), (0,)), ((2,), (1,))]
    """
    if n_pos < 0 or n_neg < 0 or n_pos + n_neg == 0 or n_pos + n_neg > num_labels:
        raise ValueError(
            f"need n_pos, n_neg >= 0 with 0 < n_pos + n_neg <= num_labels={num_labels}, "
            f"got ({n_pos}, {n_neg})"
        )
    from math import comb

    total = comb(num_labels, n_pos) * comb(num_labels - n_pos, n_neg)
    if num_queries is None:
        if total > 100_000:
            raise ValueError(f"{total} queries to enumerate; pass num_queries to sample")
        out = []
        for p in itertools.combinations(range(num_labels), n_pos):
            rest = [j for j in range(num_labels) if j not in p]
            out.extend((p, n) for n in itertools.combinations(rest, n_neg))
        return out
    if not 0 < num_queries <= total:
        raise ValueError(f"num_queries must be in [1, {total}], got {num_queries}")
    seen: dict = {}
    while len(seen) < num_queries:
        perm = torch.randperm(num_labels, generator=generator).tolist()
        q = (tuple(sorted(perm[:n_pos])), tuple(sorted(perm[n_pos : n_pos + n_neg])))
        seen.setdefault(q, None)
    return list(seen)


def retrieval_map(
    scores: torch.Tensor,
    target: torch.Tensor,
    queries: Sequence[Query],
    *,
    probs: bool = False,
    average: bool = True,
) -> torch.Tensor:
    r"""Retrieval mAP of the SPA paper: per query, rank samples by :math:`\hat s`; mean AP.

    A sample is relevant to ``(P, N)`` iff its labels contain all of ``P`` and none of ``N``.
    Queries without a relevant sample are excluded from the mean.

    Args:
        scores: logits (or probabilities with ``probs=True``).
        target: multi-hot ``{0, 1}`` labels.
        queries: ``(P, N)`` pairs, e.g. from :func:`make_queries`.
        probs: ``scores`` holds probabilities.
        average: if False, return per-query AP (NaN for queries with no relevant sample).

    Shape:
        ``(N, T)`` each; returns a float64 scalar (or ``(Q,)``).

    Example:
        >>> v = torch.tensor([[3.0, -3.0], [1.0, 1.0], [-2.0, 0.0]])
        >>> y = torch.tensor([[1, 0], [1, 1], [0, 0]])
        >>> retrieval_map(v, y, [([0], [1]), ([0, 1], [])])
        tensor(1., dtype=torch.float64)
    """
    _check_retrieval_target(scores, target)
    s = retrieval_score(scores, queries, probs=probs)
    ap = _ap_columns(s, retrieval_relevance(target, queries))
    if not average:
        return ap
    return _nanmean(ap)


@_register(
    "retrieval_map",
    legend="retrieval mAP: average precision of the fixed query set, mean over queries",
)
class RetrievalMAP(StreamingMetric):
    """Streaming retrieval mAP, exact, with O(N x Q) ``cat`` states (documented exception).

    Each update stores the float64 log-scores and the relevance of the batch for the fixed
    query set.

    Args:
        queries: ``(P, N)`` pairs, fixed for the metric's life.
        probs: updates receive probabilities rather than logits.

    Example:
        >>> m = RetrievalMAP([([0], [1])])
        >>> m.update(torch.tensor([[3.0, -3.0], [1.0, 1.0]]), torch.tensor([[1, 0], [1, 1]]))
        >>> m.update(torch.tensor([[-2.0, 0.0]]), torch.tensor([[0, 0]]))
        >>> m.compute()
        tensor(1., dtype=torch.float64)
    """

    higher_is_better = True

    def __init__(self, queries: Sequence[Query], *, probs: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        self.queries = [(tuple(p), tuple(n)) for p, n in queries]
        self.probs = probs
        self._add_list("scores")
        self._add_list("relevant")

    def update(self, scores: torch.Tensor, target: torch.Tensor) -> None:
        """Store the batch's query scores and relevance."""
        _check_retrieval_target(scores, target)
        self.scores.append(retrieval_score(scores.detach(), self.queries, probs=self.probs))
        self.relevant.append(retrieval_relevance(target, self.queries))

    def compute(self) -> torch.Tensor:
        """Mean AP over queries with at least one relevant sample."""
        if len(self.scores) == 0:
            return torch.tensor(float("nan"), dtype=torch.float64)
        ap = _ap_columns(dim_zero_cat(self.scores), dim_zero_cat(self.relevant))
        return _nanmean(ap)
