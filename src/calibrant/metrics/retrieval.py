r"""SPA retrieval: rank the samples for a query ``(P, N)`` of wanted and unwanted labels; mAP.

A sample is relevant to ``(P, N)`` iff its labels contain all of ``P`` and none of ``N``, and its
score is :math:`\hat s(x) = \prod_{j\in P}\hat\eta_j \prod_{k\in N}(1-\hat\eta_k)`. Average
precision follows :mod:`~calibrant.metrics.ranking` (scikit-learn's, ties included). The streaming
class keeps ``cat`` list states of size O(N x queries), the documented exception to the
fixed-size-state rule (see :mod:`~calibrant.metrics.ranking`).

Reference:
    SPA paper, §4.8 of METHODS.md (retrieval score) and §7.5 (mAP).
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from calibrant._checks import check_finite
from calibrant.metrics._average_precision import RankedLists, ap_columns, nanmean
from calibrant.registry import METRICS

__all__ = [
    "RetrievalMAP",
    "make_queries",
    "retrieval_map",
    "retrieval_relevance",
    "retrieval_score",
]

Query = tuple[Sequence[int], Sequence[int]]

# the registry metadata that this module's metrics share
_register = functools.partial(METRICS.register, task="multilabel", better="higher")


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
    ap = ap_columns(s, retrieval_relevance(target, queries))
    if not average:
        return ap
    return nanmean(ap)


@_register(
    "retrieval_map",
    legend="retrieval mAP: average precision of the fixed query set, mean over queries",
)
class RetrievalMAP(RankedLists):
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

    lists = ("scores", "relevant")

    def __init__(self, queries: Sequence[Query], *, probs: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        self.queries = [(tuple(p), tuple(n)) for p, n in queries]
        self.probs = probs

    def update(self, scores: torch.Tensor, target: torch.Tensor) -> None:
        """Store the batch's query scores and relevance."""
        _check_retrieval_target(scores, target)
        self.scores.append(retrieval_score(scores.detach(), self.queries, probs=self.probs))
        self.relevant.append(retrieval_relevance(target, self.queries))

    def _rank(self, scores: torch.Tensor, relevant: torch.Tensor) -> torch.Tensor:
        """Mean AP over queries with at least one relevant sample."""
        return nanmean(ap_columns(scores, relevant))
