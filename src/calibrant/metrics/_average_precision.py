"""The average-precision kernel and list-state base of the ranking metrics (private).

Shared by :mod:`~calibrant.metrics.ranking` and :mod:`~calibrant.metrics.retrieval`:
:class:`RankedLists` is the base of the exact metrics that rank samples, and :func:`ap_columns`
ranks every column of a score matrix at once, with scikit-learn's tie semantics (see the
:mod:`~calibrant.metrics.ranking` docstring for the maths).
"""

from __future__ import annotations

from typing import Any

import torch
from torchmetrics.utilities import dim_zero_cat

from calibrant.metrics._base import StreamingMetric, ratio

__all__ = ["RankedLists", "ap_columns", "nanmean", "nanmean_with_count"]


def ap_columns(scores: torch.Tensor, relevant: torch.Tensor) -> torch.Tensor:
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


def nanmean_with_count(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum and count of the entries that are not NaN."""
    ok = ~torch.isnan(values)
    total = torch.where(ok, values, values.new_zeros(())).sum()
    return total, ok.sum()


def nanmean(values: torch.Tensor) -> torch.Tensor:
    """Mean of the entries that are not NaN (NaN if there is none)."""
    return ratio(*nanmean_with_count(values))


class RankedLists(StreamingMetric):
    """Base of the exact metrics that rank samples: ``cat`` list states, ranked in ``compute``.

    This is the documented exception to the fixed-size-state rule: the states grow with the
    number of samples, and DDP gathers them. A subclass names its list states in ``lists``,
    appends to them in ``update`` and ranks their concatenations in :meth:`_rank`.
    """

    higher_is_better = True
    lists: tuple[str, ...]

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        for name in self.lists:
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def compute(self) -> torch.Tensor:
        """The metric over everything stored (NaN before the first update)."""
        if len(getattr(self, self.lists[0])) == 0:
            return torch.tensor(float("nan"), dtype=torch.float64)
        return self._rank(*(dim_zero_cat(getattr(self, name)) for name in self.lists))

    def _rank(self, *stored: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError
