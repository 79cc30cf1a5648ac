"""Pooled metrics of bootstrap resamples and their intervals, against slow references."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from calibrant.metrics import (
    PairPredictions,
    TopLabelPredictions,
    adaptive_calibration_error,
    expected_calibration_error,
    metric_interval,
    multilabel_calibration_error,
    resampled_metric,
)
from calibrant.stats import bootstrap_indices


def _top_label(seed=0, n=400, c=5, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, generator=g) * scale
    target = torch.randint(0, c, (n,), generator=g)
    rec = TopLabelPredictions()
    rec.update(logits, target)
    return logits, target, rec.compute()


def _slow_ece(conf, correct, n_bins=15):
    """Plain loop: equal-width bins [b/n, (b+1)/n) on float32 p * n, 1.0 in the last bin."""
    conf = np.asarray(conf, dtype=np.float32)
    total = 0.0
    bins = np.minimum((conf * np.float32(n_bins)).astype(np.int64), n_bins - 1)
    for b in range(n_bins):
        members = bins == b
        if members.any():
            gap = correct[members].mean() - conf[members].astype(np.float64).mean()
            total += members.sum() / len(conf) * abs(gap)
    return total


def _slow_interval(values, level=0.95):
    return np.quantile(values, [(1 - level) / 2, 1 - (1 - level) / 2])


def test_ece_interval_equals_a_loop_over_the_same_resamples():
    _, _, p = _top_label()
    conf = p["confidence"].numpy()
    correct = (p["prediction"] == p["label"]).numpy().astype(np.float64)
    ci = metric_interval(p, "ece", n_resamples=300, seed=4)
    idx = bootstrap_indices(len(conf), 300, 4)
    loop = np.array([_slow_ece(conf[r], correct[r]) for r in idx])
    assert ci.estimate == pytest.approx(_slow_ece(conf, correct), abs=1e-12)
    assert (ci.low, ci.high) == pytest.approx(tuple(_slow_interval(loop)), abs=1e-12)
    assert (ci.n_resamples, ci.n_items, ci.level) == (300, len(conf), 0.95)


@pytest.mark.parametrize(
    ("metric", "one_shot"),
    [
        ("ece", expected_calibration_error),
        ("ace", adaptive_calibration_error),
    ],
)
def test_paired_interval_is_the_difference_on_shared_resamples(metric, one_shot):
    logits, target, p = _top_label(seed=1)
    cooler = TopLabelPredictions()
    cooler.update(logits / 3, target)
    ci = metric_interval(cooler.compute(), metric, against=p, n_resamples=200, seed=2)
    idx = torch.from_numpy(bootstrap_indices(len(target), 200, 2))
    loop = np.array(
        [
            float(one_shot(logits[r] / 3, target[r])) - float(one_shot(logits[r], target[r]))
            for r in idx
        ]
    )
    whole = float(one_shot(logits / 3, target)) - float(one_shot(logits, target))
    # the recorder keeps float32 confidences; the one-shot metric softmaxes on its own path
    assert ci.estimate == pytest.approx(whole, abs=1e-6)
    assert (ci.low, ci.high) == pytest.approx(tuple(_slow_interval(loop)), abs=1e-6)
    assert ci.high < 0  # these logits are over-confident; cooling them helps on every resample


def test_multilabel_ace_rows_equal_the_metric_on_resampled_pairs():
    g = torch.Generator().manual_seed(3)
    v = torch.randn(150, 6, generator=g) * 3
    y = torch.randint(0, 2, (150, 6), generator=g)
    rec = PairPredictions()
    rec.update(v, y)
    idx = bootstrap_indices(150, 5, 0)
    got = resampled_metric(rec.compute(), "ace", idx, n_bins=10)
    for row, value in zip(idx, got, strict=True):
        r = torch.from_numpy(row)
        want = float(multilabel_calibration_error(v[r], y[r], norm="adaptive", n_bins=10))
        assert value == pytest.approx(want, abs=1e-6)


def test_interval_is_seeded_and_narrows_with_more_samples():
    _, _, small = _top_label(seed=5, n=200)
    _, _, large = _top_label(seed=5, n=8000)
    a = metric_interval(small, "oc", n_resamples=500, seed=9)
    assert a == metric_interval(small, "oc", n_resamples=500, seed=9)
    b = metric_interval(large, "oc", n_resamples=500, seed=9)
    assert (b.high - b.low) < (a.high - a.low) / 3


def test_bad_inputs_are_named():
    _, _, p = _top_label()
    with pytest.raises(ValueError, match="unknown metric 'brier'; choose from ece, mce"):
        metric_interval(p, "brier")
    with pytest.raises(ValueError, match="same test samples"):
        metric_interval(p, "ece", against=_top_label(n=10)[2])
    with pytest.raises(ValueError, match="must hold 'confidence'"):
        metric_interval({"logits": [1.0]}, "ece")
    with pytest.raises(ValueError, match="'map_y' needs multi-label predictions"):
        metric_interval(p, "map_y")
    with pytest.raises(ValueError, match="n_bins"):
        metric_interval(p, "ece", n_bins=0)
