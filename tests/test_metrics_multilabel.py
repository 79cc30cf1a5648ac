"""Multi-label calibration: loop reference, sklearn parity, per-label, streaming, DDP, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from calibrant.metrics import (
    MultilabelCalibrationError,
    multilabel_calibration_error,
    multilabel_reliability_curve,
)
from calibrant.registry import METRICS
from tests._ddp import run_ddp


def ref_pairs(logits, target, mask=None):
    v = logits.float().double().numpy().reshape(logits.shape[0], logits.shape[1], -1)
    y = target.numpy().reshape(v.shape)
    m = np.ones(v.shape, bool) if mask is None else mask.numpy().reshape(v.shape)
    per_label = {t: ([], []) for t in range(v.shape[1])}
    for b in range(v.shape[0]):
        for t in range(v.shape[1]):
            for s in range(v.shape[2]):
                if m[b, t, s]:
                    per_label[t][0].append(1.0 / (1.0 + math.exp(-v[b, t, s])))
                    per_label[t][1].append(float(y[b, t, s]))
    return per_label


def ref_error(conf, out, n, norm):
    if not conf:
        return math.nan
    if norm == "adaptive":
        m = len(conf)
        srt = np.sort(conf)
        edges = np.interp(np.linspace(0, m, n + 1), np.arange(m), srt)
        total = 0.0
        for b in range(n):
            idx = [
                i
                for i, c in enumerate(conf)
                if edges[b] < c <= edges[b + 1] or (b == 0 and c == srt[0])
            ]
            if idx:
                total += (
                    len(idx)
                    / m
                    * abs(np.mean([out[i] for i in idx]) - np.mean([conf[i] for i in idx]))
                )
        return total
    bins = {}
    for c, o in zip(conf, out, strict=True):
        b = min(int(np.floor(np.float32(c) * np.float32(n))), n - 1)
        bins.setdefault(b, []).append((c, o))
    gaps = {
        b: abs(np.mean([o for _, o in v]) - np.mean([c for c, _ in v])) for b, v in bins.items()
    }
    w = {b: len(v) / len(conf) for b, v in bins.items()}
    if norm == "l1":
        return sum(w[b] * gaps[b] for b in bins)
    if norm == "l2":
        return math.sqrt(sum(w[b] * gaps[b] ** 2 for b in bins))
    if norm == "max":
        return max(gaps.values())
    return float(np.mean(list(gaps.values())))


def rand_ml(generator, B=40, T=6, scale=2.5):
    logits = torch.randn(B, T, generator=generator) * scale
    target = (torch.rand(B, T, generator=generator) < torch.sigmoid(logits * 0.7)).long()
    return logits, target


@pytest.mark.parametrize("norm", ["l1", "l2", "max", "avg", "adaptive"])
def test_matches_reference_pooled_and_per_label(generator, norm):
    logits, target = rand_ml(generator)
    mask = torch.rand(target.shape, generator=generator) < 0.9
    ref = ref_pairs(logits, target, mask)
    pooled_c = sum((ref[t][0] for t in ref), [])
    pooled_o = sum((ref[t][1] for t in ref), [])
    got = multilabel_calibration_error(logits, target, norm=norm, mask=mask)
    assert float(got) == pytest.approx(ref_error(pooled_c, pooled_o, 15, norm), abs=1e-6)
    per = multilabel_calibration_error(logits, target, norm=norm, per_label=True, mask=mask)
    assert per.shape == (6,)
    expect = [ref_error(ref[t][0], ref[t][1], 15, norm) for t in range(6)]
    np.testing.assert_allclose(per.numpy(), expect, atol=1e-6)


def test_spatial_multilabel_and_edges():
    # (B, T, H) layout; probabilities exactly 0 and 1 via the explicit probs path.
    probs = torch.tensor([[[0.0, 1.0], [1.0, 0.5]]])
    target = torch.tensor([[[0, 1], [0, 1]]])
    curve = multilabel_reliability_curve(probs, target, n_bins=4, input_kind="probs")
    assert curve.count.tolist() == [1, 0, 1, 2]  # 0.0 first bin, 1.0 last bin
    assert float(curve.accuracy[3]) == 0.5
    got = multilabel_calibration_error(probs, target, n_bins=4, input_kind="probs")
    assert float(got) == pytest.approx((0 + 0.5 + 2 * 0.5) / 4)


def test_sklearn_calibration_curve_parity(generator):
    from sklearn.calibration import calibration_curve

    logits, target = rand_ml(generator, B=500, T=4)
    curve = multilabel_reliability_curve(logits, target, n_bins=10)
    p = torch.sigmoid(logits.double()).numpy().ravel()
    prob_true, prob_pred = calibration_curve(target.numpy().ravel(), p, n_bins=10)
    ok = curve.count > 0
    np.testing.assert_allclose(curve.accuracy[ok].numpy(), prob_true, atol=1e-6)
    np.testing.assert_allclose(curve.confidence[ok].numpy(), prob_pred, atol=1e-6)


def test_torchmetrics_binary_parity(generator):
    from torchmetrics.functional.classification import binary_calibration_error

    logits, target = rand_ml(generator, B=300, T=5)
    for norm in ("l1", "l2", "max"):
        tm = binary_calibration_error(torch.sigmoid(logits).ravel(), target.ravel(), norm=norm)
        got = multilabel_calibration_error(logits, target, norm=norm)
        assert float(got) == pytest.approx(float(tm), abs=1e-6)


def test_streaming_equals_one_shot_and_adaptive_bound(generator):
    logits, target = rand_ml(generator, B=3000, T=5)
    for norm in ("l1", "max", "avg"):
        for per_label in (False, True):
            m = MultilabelCalibrationError(norm=norm, per_label=per_label, num_labels=5)
            for part in torch.tensor_split(torch.arange(3000), [7, 1000, 2222]):
                m.update(logits[part], target[part])
            one = multilabel_calibration_error(logits, target, norm=norm, per_label=per_label)
            # float64 sums in another order: equal to about 1e-10 relative (7e-11 seen on an
            # AMD EPYC host), far below any binning difference
            torch.testing.assert_close(m.compute(), one, rtol=1e-9, atol=1e-12)
    m = MultilabelCalibrationError(norm="adaptive")
    m.update(logits, target)
    exact = float(multilabel_calibration_error(logits, target, norm="adaptive"))
    assert abs(float(m.compute()) - exact) <= float(m.error_bound()) + 1e-12
    assert float(m.error_bound()) < 0.01


def test_empty_and_bad_input():
    logits = torch.zeros(2, 3)
    target = torch.zeros(2, 3, dtype=torch.long)
    assert math.isnan(float(multilabel_calibration_error(logits, target, mask=target.bool())))
    with pytest.raises(ValueError, match="only 0 and 1"):
        multilabel_calibration_error(logits, target + 2)
    with pytest.raises(ValueError, match="shape"):
        multilabel_calibration_error(logits, target[:, :2])
    bad = logits.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        multilabel_calibration_error(bad, target)
    with pytest.raises(ValueError, match="norm"):
        multilabel_calibration_error(logits, target, norm="ace")
    with pytest.raises(ValueError, match="num_labels"):
        MultilabelCalibrationError(per_label=True)
    with pytest.raises(ValueError, match="num_labels"):
        MultilabelCalibrationError(per_label=True, num_labels=4).update(logits, target)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        multilabel_calibration_error(logits - 1, target, input_kind="probs")
    assert {"multilabel_ece", "multilabel_ace", "multilabel_mce"} <= set(METRICS.names())
    assert METRICS.build("multilabel_ace").norm == "adaptive"


def _ddp_worker(rank, world_size, logits, target):
    part = torch.tensor_split(torch.arange(logits.shape[0]), world_size)[rank]
    out = []
    for norm in ("l1", "max", "adaptive"):
        m = MultilabelCalibrationError(norm=norm, per_label=True, num_labels=logits.shape[1])
        m.update(logits[part], target[part])
        out.append(m.compute())
    return out


@pytest.mark.ddp
def test_ddp_two_processes_equal_single(generator):
    logits, target = rand_ml(generator, B=200, T=4)
    results = run_ddp(_ddp_worker, world_size=2, args=(logits, target))
    for i, norm in enumerate(("l1", "max", "adaptive")):
        m = MultilabelCalibrationError(norm=norm, per_label=True, num_labels=4)
        m.update(logits, target)
        for r in results:
            torch.testing.assert_close(r[i], m.compute(), rtol=0, atol=1e-12)
