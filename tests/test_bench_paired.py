"""Paired claims: per-item statistics against the library's one-shot metrics, and verdicts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from calibrant.bench.paired import PairedClaim, claims_lines, evaluate_claim, item_statistic
from calibrant.bench.runner import _write_predictions
from calibrant.metrics import (
    PairPredictions,
    TopLabelPredictions,
    accuracy,
    adaptive_calibration_error,
    expected_calibration_error,
    maximum_calibration_error,
    multilabel_calibration_error,
    multilabel_classwise_map,
    multilabel_overconfidence,
    overconfidence,
)


def _multiclass(tmp_path, seed=0, n=300, c=4):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, generator=g) * 2.5
    target = torch.randint(0, c, (n,), generator=g)
    rec = TopLabelPredictions()
    rec.update(logits, target)
    path = tmp_path / f"seed{seed}.json"
    _write_predictions(path.with_suffix(".predictions.npz"), rec.compute())
    return logits, target, {"predictions": path.with_suffix(".predictions.npz").name}, path


def _multilabel(tmp_path, seed=0, n=120, t=5):
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(n, t, generator=g) * 3
    y = torch.randint(0, 2, (n, t), generator=g)
    rec = PairPredictions()
    rec.update(v, y)
    path = tmp_path / f"ml{seed}.json"
    _write_predictions(path.with_suffix(".predictions.npz"), rec.compute())
    return v, y, {"predictions": path.with_suffix(".predictions.npz").name}, path


@pytest.mark.parametrize(
    ("metric", "reference"),
    [
        ("ece", lambda z, y: expected_calibration_error(z, y)),
        ("mce", lambda z, y: maximum_calibration_error(z, y)),
        ("accuracy", lambda z, y: accuracy(z, y)),
        ("oc", lambda z, y: overconfidence(z, y)),
        ("ace", lambda z, y: adaptive_calibration_error(z, y)),
    ],
)
def test_multiclass_resamples_equal_the_metric_on_the_resampled_data(tmp_path, metric, reference):
    logits, target, record, path = _multiclass(tmp_path)
    n, f, looped = item_statistic(record, metric, path)
    assert n == 300 and not looped
    idx = np.random.default_rng(1).integers(0, n, size=(6, n))
    got = f(idx)
    for row, value in zip(idx, got, strict=True):
        r = torch.from_numpy(row)
        assert value == pytest.approx(float(reference(logits[r], target[r])), abs=1e-6)
    full = f(np.arange(n)[None])[0]
    assert full == pytest.approx(float(reference(logits, target)), abs=1e-6)


@pytest.mark.parametrize(
    ("metric", "reference"),
    [
        ("ece", lambda v, y: multilabel_calibration_error(v, y, norm="l1")),
        ("mce", lambda v, y: multilabel_calibration_error(v, y, norm="max")),
        ("ace", lambda v, y: multilabel_calibration_error(v, y, norm="adaptive")),
        ("map_y", lambda v, y: multilabel_classwise_map(v, y)),
        ("oc", lambda v, y: multilabel_overconfidence(v, y)),
    ],
)
def test_multilabel_resamples_equal_the_metric_on_the_resampled_data(tmp_path, metric, reference):
    v, y, record, path = _multilabel(tmp_path)
    n, f, _ = item_statistic(record, metric, path)
    idx = np.random.default_rng(2).integers(0, n, size=(4, n))
    for row, value in zip(idx, f(idx), strict=True):
        r = torch.from_numpy(row)
        assert value == pytest.approx(float(reference(v[r], y[r])), abs=1e-6)


def test_per_volume_items_and_missing_data():
    record = {"items": {"dice": [0.8, float("nan"), 0.6, 0.7]}}
    n, f, looped = item_statistic(record, "dice")
    assert (n, looped) == (4, False)
    assert f(np.array([[0, 1, 2, 3], [1, 1, 0, 0]])).tolist() == pytest.approx([0.7, 0.8])
    with pytest.raises(KeyError, match="no per-item values of 'hd95'"):
        item_statistic(record, "hd95")


def _runs(values_by_method, seeds=(1, 2, 3)):
    rng = np.random.default_rng(0)
    hard = rng.uniform(0.05, 0.3, size=25)  # shared item difficulty
    out = {}
    for m, shift in values_by_method.items():
        for s in seeds:
            noise = rng.normal(0.0, 0.002, size=25)
            out[(m, s)] = ({"items": {"ece": (hard + shift(s) + noise).tolist()}}, None)
    return out


def test_verdicts_clear_win_clear_loss_and_tie():
    claim = PairedClaim("A below B and C", "a", ("b", "c"), "ece", "below")
    win = _runs({"a": lambda s: 0.0, "b": lambda s: 0.02, "c": lambda s: 0.03})
    assert evaluate_claim(claim, win, n_resamples=500).verdict == "holds"
    loss = _runs({"a": lambda s: 0.0, "b": lambda s: 0.02, "c": lambda s: -0.02})
    v = evaluate_claim(claim, loss, n_resamples=500)
    assert v.verdict == "fails" and [d for _, _, d in v.comparisons] == ["holds", "fails"]
    # a tie within noise: the seeds disagree in sign, the mean difference is about zero
    tie = _runs({"a": lambda s: 0.0, "b": lambda s: 0.004 * (s - 2), "c": lambda s: 0.03})
    rng = np.random.default_rng(9)
    for key in [k for k in tie if k[0] == "b"]:  # spread the pairs: noise of 0.02 per item
        items = np.asarray(tie[key][0]["items"]["ece"]) + rng.normal(0, 0.02, size=25)
        tie[key] = ({"items": {"ece": items.tolist()}}, None)
    v = evaluate_claim(claim, tie, n_resamples=500)
    assert v.verdict == "inconclusive"
    assert v.comparisons[0][1].low < 0 < v.comparisons[0][1].high


def test_only_shared_seeds_are_compared_and_missing_rows_are_not_yet_run():
    runs = _runs({"a": lambda s: 0.0, "b": lambda s: 0.02})
    del runs[("b", 3)]
    v = evaluate_claim(PairedClaim("x", "a", ("b",), "ece", "below"), runs, n_resamples=200)
    assert v.seeds == 2
    v = evaluate_claim(PairedClaim("x", "a", ("z",), "ece", "below"), runs, n_resamples=200)
    assert v.verdict == "not yet run" and v.missing == ("z",)
    lines = claims_lines(
        [PairedClaim("A is better", "a", ("b",), "ece", "below")],
        ["t"],
        {"t": runs},
        {"a": "A", "b": "B"},
    )
    assert any(
        line.startswith("| A is better (ece, below +0) | t | holds | 2 | A − (B): ")
        for line in lines
    )


def test_a_weighted_mix_decides_the_phi_claim():
    """φ removes at least half of ASY's gap to BCE ⟺ ASY+φ − (½ ASY + ½ BCE) < 0."""
    runs = _runs({"bce": lambda s: 0.0, "asy": lambda s: 0.2, "asy_phi": lambda s: 0.05})
    claim = PairedClaim("φ halves", "asy_phi", ((("asy", 0.5), ("bce", 0.5)),), "ece", "below")
    v = evaluate_claim(claim, runs, n_resamples=300)
    assert v.verdict == "holds" and v.comparisons[0][1].estimate == pytest.approx(-0.05, abs=3e-3)
    runs = _runs({"bce": lambda s: 0.0, "asy": lambda s: 0.2, "asy_phi": lambda s: 0.15})
    assert evaluate_claim(claim, runs, n_resamples=300).verdict == "fails"
