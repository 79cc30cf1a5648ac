r"""Bootstrap confidence intervals for metrics, and paired verdicts on claims.

A comparison of two methods is decided on **paired** differences: the same seeds and the same
test items (volumes, samples), so that what both methods find hard cancels out. The test items
are the random draw a reader cares about ("would this hold on another test set?"), so they are
what the bootstrap resamples: each resample draws ``n`` item indices with replacement and keeps
every seed of each drawn item (a cluster bootstrap over items). The interval is the percentile
interval of the resampled statistic:

.. math::
    \hat\theta^{*}_r = s(x_{I_r}),\quad I_r \sim \mathrm{Uniform}\{1..n\}^n,\qquad
    \mathrm{CI}_{1-\alpha} = [q_{\alpha/2}(\hat\theta^{*}),\ q_{1-\alpha/2}(\hat\theta^{*})].

:func:`decide` turns an interval into a verdict on a claim "the difference is below (or above)
a threshold": ``holds`` when the whole interval is on the claimed side, ``fails`` when the
whole interval is on the other side, ``inconclusive`` when it crosses the threshold.

Everything is seeded: the same inputs and ``seed`` give the same interval.

Example:
    >>> import numpy as np
    >>> a = np.array([0.10, 0.12, 0.09, 0.11, 0.10, 0.13])   # method A, per test volume
    >>> b = np.array([0.05, 0.06, 0.05, 0.07, 0.04, 0.06])   # method B, same volumes
    >>> ci = paired_bootstrap_ci(b, a, n_resamples=2000, seed=0)   # B - A
    >>> round(ci.estimate, 4), ci.low < ci.estimate < ci.high
    (-0.0533, True)
    >>> decide(ci, "below", 0.0)   # "B's value is lower than A's"
    'holds'

Reference:
    Efron & Tibshirani, An Introduction to the Bootstrap, 1993 (percentile interval, ch. 13).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = [
    "Interval",
    "bootstrap_indices",
    "bootstrap_ci",
    "paired_bootstrap_ci",
    "percentile_interval",
    "decide",
    "VERDICTS",
]

#: The three outcomes of :func:`decide`.
VERDICTS = ("holds", "fails", "inconclusive")


@dataclass(frozen=True)
class Interval:
    """A point estimate with its bootstrap percentile interval.

    Attributes:
        estimate: the statistic on the data as observed.
        low, high: interval bounds.
        level: coverage, e.g. 0.95.
        n_resamples: bootstrap resamples used.
        n_items: items resampled.
    """

    estimate: float
    low: float
    high: float
    level: float
    n_resamples: int
    n_items: int

    def __str__(self) -> str:
        return f"{self.estimate:+.4f} [{self.low:+.4f}, {self.high:+.4f}]"


def bootstrap_indices(n_items: int, n_resamples: int = 10_000, seed: int = 0) -> np.ndarray:
    """Item indices of each resample, ``(n_resamples, n_items)``, drawn with replacement.

    Example:
        >>> bootstrap_indices(3, n_resamples=2, seed=1).shape
        (2, 3)
    """
    if n_items < 1:
        raise ValueError(f"a bootstrap needs at least one item, got {n_items}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be positive, got {n_resamples}")
    return np.random.default_rng(seed).integers(0, n_items, size=(n_resamples, n_items))


def _as_items(values) -> np.ndarray:
    """``(seeds, items)`` float64: a 1-D array is one seed."""
    x = np.asarray(values, dtype=np.float64)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2 or x.shape[1] == 0:
        raise ValueError(f"values must be (items,) or (seeds, items), got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("values must be finite (drop items without a value first)")
    return x


def percentile_interval(samples: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The central ``level`` percentile interval of bootstrap ``samples`` (linear quantiles).

    Example:
        >>> percentile_interval(np.arange(101.0), 0.9)
        (5.0, 95.0)
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(samples, [alpha, 1.0 - alpha])
    return float(low), float(high)


def bootstrap_ci(
    values,
    *,
    statistic: Callable[[np.ndarray], np.ndarray] | None = None,
    n_resamples: int = 10_000,
    level: float = 0.95,
    seed: int = 0,
) -> Interval:
    """Percentile interval of a statistic of per-item values, resampling items.

    Args:
        values: per-item values ``(items,)``, or ``(seeds, items)`` with the same items in every
            seed (the items are resampled, all seeds of a drawn item kept).
        statistic: maps an array ``(..., seeds, items)`` to ``(...)``; default the mean over
            seeds and items. It is called once on the data and once on all resamples stacked.
        n_resamples: bootstrap resamples.
        level: coverage of the interval.
        seed: seed of the resampling.

    Returns:
        :class:`Interval`.

    Example:
        >>> ci = bootstrap_ci([1.0, 2.0, 3.0, 4.0], n_resamples=1000, seed=0)
        >>> ci.estimate, 1.0 <= ci.low <= ci.high <= 4.0
        (2.5, True)
    """
    x = _as_items(values)
    stat = statistic or (lambda v: v.mean(axis=(-2, -1)))
    idx = bootstrap_indices(x.shape[1], n_resamples, seed)
    resampled = np.asarray(stat(x[:, idx].transpose(1, 0, 2)), dtype=np.float64)
    low, high = percentile_interval(resampled, level)
    return Interval(float(stat(x)), low, high, level, n_resamples, x.shape[1])


def paired_bootstrap_ci(
    a,
    b,
    *,
    n_resamples: int = 10_000,
    level: float = 0.95,
    seed: int = 0,
) -> Interval:
    """Interval of the mean paired difference ``a - b`` over seeds and items.

    Args:
        a: per-item values of one method, ``(items,)`` or ``(seeds, items)``.
        b: the other method's values on the same items and seeds (same shape).
        n_resamples: bootstrap resamples.
        level: coverage of the interval.
        seed: seed of the resampling.

    Example:
        >>> ci = paired_bootstrap_ci([0.2, 0.3, 0.25], [0.1, 0.1, 0.1], n_resamples=500, seed=0)
        >>> round(ci.estimate, 2), ci.low > 0
        (0.15, True)
    """
    xa, xb = _as_items(a), _as_items(b)
    if xa.shape != xb.shape:
        raise ValueError(f"paired values must have one shape, got {xa.shape} and {xb.shape}")
    return bootstrap_ci(xa - xb, n_resamples=n_resamples, level=level, seed=seed)


def decide(interval: Interval, side: str, threshold: float = 0.0) -> str:
    """Verdict on the claim "the difference is ``side`` ``threshold``".

    Args:
        interval: the difference's interval (e.g. CRaC − CE on ECE).
        side: ``"below"`` (claim: difference < threshold) or ``"above"`` (difference >
            threshold).
        threshold: the claim's margin (0 for "better than"; a tolerance for "within").

    Returns:
        ``"holds"`` when the whole interval is on the claimed side, ``"fails"`` when it is
        wholly on the other side (touching the threshold counts as the other side), else
        ``"inconclusive"``.

    Example:
        >>> ci = Interval(0.01, -0.002, 0.02, 0.95, 1000, 40)
        >>> decide(ci, "below", 0.0), decide(ci, "below", 0.03), decide(ci, "above", -0.01)
        ('inconclusive', 'holds', 'holds')
    """
    if side == "below":
        if interval.high < threshold:
            return "holds"
        return "fails" if interval.low >= threshold else "inconclusive"
    if side == "above":
        if interval.low > threshold:
            return "holds"
        return "fails" if interval.high <= threshold else "inconclusive"
    raise ValueError(f"side must be 'below' or 'above', got {side!r}")
