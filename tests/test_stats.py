"""Bootstrap intervals against a slow loop reference, coverage, and the paired verdict logic."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from calibrant.stats import (
    Interval,
    bootstrap_ci,
    bootstrap_indices,
    decide,
    paired_bootstrap_ci,
)


def _reference_percentile(sorted_values, q):
    """Linear interpolation between order statistics (numpy's default 'linear' method)."""
    pos = q * (len(sorted_values) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (pos - lo) * (sorted_values[hi] - sorted_values[lo])


def _reference_ci(values, indices, level):
    """Loop over resamples and seeds in pure Python."""
    seeds = values if isinstance(values[0], list) else [values]
    stats = []
    for row in indices.tolist():
        total = 0.0
        for seed_values in seeds:
            total += sum(seed_values[i] for i in row)
        stats.append(total / (len(seeds) * len(row)))
    stats.sort()
    alpha = (1 - level) / 2
    return _reference_percentile(stats, alpha), _reference_percentile(stats, 1 - alpha)


@pytest.mark.parametrize("seeds", [1, 3])
def test_matches_loop_reference(seeds):
    rng = random.Random(4)
    values = [[rng.gauss(0.1, 0.05) for _ in range(17)] for _ in range(seeds)]
    data = values[0] if seeds == 1 else values
    ci = bootstrap_ci(data, n_resamples=3000, level=0.9, seed=11)
    low, high = _reference_ci(data, bootstrap_indices(17, 3000, 11), 0.9)
    assert ci.low == pytest.approx(low, abs=1e-12)
    assert ci.high == pytest.approx(high, abs=1e-12)
    assert ci.estimate == pytest.approx(sum(map(sum, values)) / (17 * seeds), abs=1e-12)
    assert (ci.n_items, ci.n_resamples, ci.level) == (17, 3000, 0.9)


def test_paired_is_the_interval_of_differences_and_seeded():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(3, 20)), rng.normal(size=(3, 20))
    ci = paired_bootstrap_ci(a, b, n_resamples=2000, seed=5)
    assert ci == bootstrap_ci(a - b, n_resamples=2000, seed=5)
    assert ci == paired_bootstrap_ci(a, b, n_resamples=2000, seed=5)  # reproducible
    assert ci != paired_bootstrap_ci(a, b, n_resamples=2000, seed=6)


def test_pairing_removes_the_shared_item_difficulty():
    rng = np.random.default_rng(1)
    hardness = rng.uniform(0.0, 0.5, size=40)  # what both methods find hard
    a = hardness + 0.02 + rng.normal(0, 0.005, size=40)
    b = hardness + rng.normal(0, 0.005, size=40)
    paired = paired_bootstrap_ci(a, b, n_resamples=2000, seed=0)
    assert decide(paired, "above", 0.0) == "holds"
    # the unpaired intervals of the two means overlap widely: no decision without pairing
    ca, cb = bootstrap_ci(a, seed=0), bootstrap_ci(b, seed=1)
    assert ca.low < cb.high


def test_coverage_of_the_mean_is_near_the_level():
    rng = np.random.default_rng(2)
    covered = 0
    trials = 300
    for t in range(trials):
        x = rng.exponential(1.0, size=60)  # true mean 1
        ci = bootstrap_ci(x, n_resamples=1000, seed=t)
        covered += ci.low <= 1.0 <= ci.high
    assert 0.88 <= covered / trials <= 0.98


def test_custom_statistic_gets_seeds_and_items():
    x = np.arange(12.0).reshape(2, 6)
    ci = bootstrap_ci(x, statistic=lambda v: v.max(axis=(-2, -1)), n_resamples=200, seed=0)
    assert ci.estimate == 11.0
    assert ci.high == 11.0 and ci.low >= 6.0  # a resample's max is a seed-2 value


@pytest.mark.parametrize(
    ("diffs", "side", "threshold", "verdict"),
    [
        # clear win: B below A on every volume by about 0.05
        (np.full(30, -0.05) + np.linspace(-0.01, 0.01, 30), "below", 0.0, "holds"),
        # clear loss: B above A everywhere
        (np.full(30, 0.04) + np.linspace(-0.01, 0.01, 30), "below", 0.0, "fails"),
        # tie within noise: mean zero, large spread
        (np.linspace(-0.1, 0.1, 30), "below", 0.0, "inconclusive"),
        # "within one point of the best": a 0.5-point gap with little noise holds at 0.01
        (np.full(30, 0.005) + np.linspace(-0.001, 0.001, 30), "below", 0.01, "holds"),
        (np.full(30, 0.03), "above", 0.0, "holds"),
    ],
)
def test_paired_verdicts_on_synthetic_tables(diffs, side, threshold, verdict):
    a = np.random.default_rng(3).uniform(0.05, 0.2, size=(3, 30))
    b = a + diffs  # three seeds, the same 30 test items, paired
    ci = paired_bootstrap_ci(b, a, n_resamples=2000, seed=0)
    assert decide(ci, side, threshold) == verdict


def test_decide_edges_and_bad_input():
    touching = Interval(0.0, 0.0, 0.1, 0.95, 100, 5)
    assert decide(touching, "below", 0.0) == "fails"
    assert decide(touching, "above", 0.0) == "inconclusive"
    with pytest.raises(ValueError, match="side"):
        decide(touching, "lower")
    with pytest.raises(ValueError, match="finite"):
        bootstrap_ci([1.0, float("nan")])
    with pytest.raises(ValueError, match="one shape"):
        paired_bootstrap_ci([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="level"):
        bootstrap_ci([1.0, 2.0], level=95)
    with pytest.raises(ValueError, match="at least one item"):
        bootstrap_indices(0)
