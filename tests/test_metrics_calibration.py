"""Calibration metrics: slow references, peers (torchmetrics, netcal, sklearn, MONAI), streaming,
DDP, exactness at CT scale, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from calibrant.metrics import (
    TACE,
    AdaptiveCalibrationError,
    BrierScore,
    CalibrationError,
    ClasswiseCalibrationError,
    NegativeLogLikelihood,
    NeighborhoodBrierScore,
    PerVolumeMean,
    ReliabilityCurve,
    adaptive_calibration_error,
    average_calibration_error,
    brier_score,
    classwise_calibration_error,
    expected_calibration_error,
    maximum_calibration_error,
    negative_log_likelihood,
    neighborhood_brier_score,
    reliability_curve,
    rms_calibration_error,
    tace,
)
from calibrant.registry import METRICS
from tests._ddp import run_ddp

TOP = {
    "l1": expected_calibration_error,
    "l2": rms_calibration_error,
    "max": maximum_calibration_error,
    "avg": average_calibration_error,
}

# ---------------------------------------------------------------------------------------------
# Slow, obviously-correct references (numpy, loops)
# ---------------------------------------------------------------------------------------------


def ref_probs(logits: torch.Tensor) -> np.ndarray:
    """(N, C) float64 softmax rows of (B, C, *) logits, computed from the float32 values."""
    x = logits.float().double().movedim(1, -1).reshape(-1, logits.shape[1]).numpy()
    out = np.empty_like(x)
    for i, row in enumerate(x):
        e = np.exp(row - row.max())
        out[i] = e / e.sum()
    return out


def ref_valid(target, ignore_index=-100, mask=None, subset="all"):
    t = target.reshape(-1).numpy()
    v = np.array([ti != ignore_index for ti in t])
    if mask is not None:
        v &= mask.reshape(-1).numpy()
    if subset == "gt_fg":
        v &= t != 0
    return t, v


def ref_bin(p: float, n: int) -> int:
    """The documented rule: floor(float32(p) * n) clamped to n-1."""
    return min(int(np.floor(np.float32(p) * np.float32(n))), n - 1)


def ref_binned_error(conf, outcome, n, norm):
    count = [0] * n
    sc = [0.0] * n
    sa = [0.0] * n
    for c, a in zip(conf, outcome, strict=True):
        b = ref_bin(c, n)
        count[b] += 1
        sc[b] += c
        sa[b] += a
    return ref_reduce(count, sc, sa, norm)


def ref_reduce(count, sc, sa, norm, total=None):
    m = sum(count) if total is None else total
    if m == 0:
        return math.nan
    gaps = [abs(sa[b] / count[b] - sc[b] / count[b]) for b in range(len(count)) if count[b]]
    weights = [count[b] / m for b in range(len(count)) if count[b]]
    if norm == "l1":
        return sum(w * g for w, g in zip(weights, gaps, strict=True))
    if norm == "l2":
        return math.sqrt(sum(w * g * g for w, g in zip(weights, gaps, strict=True)))
    if norm == "max":
        return max(gaps)
    return sum(gaps) / len(gaps)


def ref_top_label(logits, target, ignore_index=-100, mask=None, subset="all"):
    p = ref_probs(logits)
    t, v = ref_valid(target, ignore_index, mask, subset)
    conf, acc = [], []
    for i in range(len(t)):
        if v[i]:
            conf.append(p[i].max())
            acc.append(float(int(np.argmax(p[i])) == t[i]))
    return conf, acc


def ref_adaptive(conf, outcome, n):
    """Research-code AdaptiveECELoss, with the minimum included (METHODS E6)."""
    m = len(conf)
    if m == 0:
        return math.nan
    srt = np.sort(np.asarray(conf, dtype=np.float64))
    edges = np.interp(np.linspace(0, m, n + 1), np.arange(m), srt)
    total = 0.0
    for b in range(n):
        lo, hi = edges[b], edges[b + 1]
        members = [i for i, c in enumerate(conf) if (lo < c <= hi) or (b == 0 and c == srt[0])]
        if members:
            a = np.mean([outcome[i] for i in members])
            c = np.mean([conf[i] for i in members])
            total += len(members) / m * abs(a - c)
    return total


def ref_svls_class(conf, outcome, n):
    """SVLS TACE for one class: rank chunks of m // n, last takes the rest, / n_bins."""
    order = np.argsort(np.asarray(conf), kind="stable")
    m = len(order)
    if m == 0:
        return 0.0
    q = m // n
    total = 0.0
    for b in range(n):
        idx = order[b * q : (b + 1) * q] if b < n - 1 else order[(n - 1) * q :]
        if len(idx):
            a = np.mean([outcome[i] for i in idx])
            c = np.mean([conf[i] for i in idx])
            total += len(idx) * abs(a - c) / m
    return total / n


def ref_classwise(
    logits,
    target,
    n,
    *,
    class_range="all",
    include_background=True,
    threshold=0.0,
    binning="uniform",
    subset="all",
    ignore_index=-100,
):
    p = ref_probs(logits)
    t, v = ref_valid(target, ignore_index, None, subset)
    p, t = p[v], t[v]
    if len(t) == 0:
        return math.nan
    classes = range(p.shape[1]) if class_range == "all" else range(int(t.max()) + 1)
    vals = []
    for c in classes:
        if c == 0 and not include_background:
            continue
        keep = [i for i in range(len(t)) if threshold == 0 or p[i, c] > threshold]
        conf = [p[i, c] for i in keep]
        out = [float(t[i] == c) for i in keep]
        if binning == "uniform":
            e = ref_binned_error(conf, out, n, "l1")
        elif binning == "adaptive":
            e = ref_adaptive(conf, out, n)
        else:
            e = ref_svls_class(conf, out, n)
        vals.append(0.0 if math.isnan(e) else e)
    return float(np.mean(vals)) if vals else math.nan


def rand_seg(generator, B=2, C=4, H=7, W=9, scale=3.0, ignore_frac=0.1):
    logits = torch.randn(B, C, H, W, generator=generator) * scale
    target = torch.randint(0, C, (B, H, W), generator=generator)
    ign = torch.rand(B, H, W, generator=generator) < ignore_frac
    return logits, target.masked_fill(ign, -100)


# ---------------------------------------------------------------------------------------------
# Top-label against the reference
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("norm", ["l1", "l2", "max", "avg"])
@pytest.mark.parametrize("subset", ["all", "gt_fg"])
def test_top_label_matches_reference(generator, norm, subset):
    logits, target = rand_seg(generator)
    mask = torch.rand(target.shape, generator=generator) < 0.8
    for n_bins in (1, 7, 15):
        got = TOP[norm](logits, target, n_bins=n_bins, mask=mask, pixel_subset=subset)
        conf, acc = ref_top_label(logits, target, mask=mask, subset=subset)
        assert float(got) == pytest.approx(ref_binned_error(conf, acc, n_bins, norm), abs=1e-6)


def test_classification_shape_and_reliability_curve(generator):
    logits = torch.randn(300, 6, generator=generator) * 2
    target = torch.randint(0, 6, (300,), generator=generator)
    curve = reliability_curve(logits, target, n_bins=10)
    assert isinstance(curve, ReliabilityCurve)
    conf, acc = ref_top_label(logits, target)
    for b in range(10):
        members = [i for i, c in enumerate(conf) if ref_bin(c, 10) == b]
        assert int(curve.count[b]) == len(members)
        if members:
            assert float(curve.confidence[b]) == pytest.approx(np.mean([conf[i] for i in members]))
            assert float(curve.accuracy[b]) == pytest.approx(np.mean([acc[i] for i in members]))
        else:
            assert math.isnan(float(curve.confidence[b]))
    assert torch.equal(curve.edges, torch.linspace(0, 1, 11, dtype=torch.float64))


def test_edges_one_in_last_bin_zero_in_first():
    # Huge logits: confidence exactly 1.0 in float32 -> last bin.
    logits = torch.tensor([[1e4, 0.0], [0.0, 1e4], [0.3, 0.0]])
    curve = reliability_curve(logits, torch.tensor([0, 0, 0]), n_bins=5)
    assert curve.count.tolist() == [0, 0, 1, 0, 2]
    assert float(curve.confidence[4]) == 1.0
    # Probabilities exactly 0 and 1 through the explicit probs path (class-wise sees both).
    probs = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    got = classwise_calibration_error(
        probs, torch.tensor([0, 0]), num_classes=2, n_bins=4, input_kind="probs"
    )
    # class 0: bins {3: p=1 y=1, 0: p=0 y=1} -> (0 + 1)/2 ; class 1: {0: p=0 y=0, 3: p=1 y=0}
    assert float(got) == pytest.approx(0.5)


def test_empty_bins_single_sample_and_all_ignored():
    logits = torch.tensor([[2.0, 0.0, -1.0]])
    one = expected_calibration_error(logits, torch.tensor([0]))
    p = torch.softmax(logits, 1).max().item()
    assert float(one) == pytest.approx(1 - p)
    assert float(maximum_calibration_error(logits, torch.tensor([1]))) == pytest.approx(p)
    ignored = torch.tensor([-100])
    for fn in (*TOP.values(), adaptive_calibration_error, brier_score, negative_log_likelihood):
        assert math.isnan(float(fn(logits, ignored)))
    assert math.isnan(float(classwise_calibration_error(logits, ignored, num_classes=3)))
    assert math.isnan(float(tace(logits, ignored, num_classes=3)))
    m = CalibrationError()
    m.update(logits, ignored)
    assert math.isnan(float(m.compute()))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_logits(generator, dtype):
    logits, target = rand_seg(generator, C=5)
    low = logits.to(dtype)
    conf, acc = ref_top_label(low.float(), target)
    got = expected_calibration_error(low, target)
    assert float(got) == pytest.approx(ref_binned_error(conf, acc, 15, "l1"), abs=1e-6)
    got = classwise_calibration_error(low, target, num_classes=5)
    assert float(got) == pytest.approx(ref_classwise(low.float(), target, 15), abs=1e-6)


def test_ties_follow_argmax_first_index():
    # bfloat16-style ties: the target shares the max with an earlier class -> not correct.
    logits = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 2.0, 2.0]])
    target = torch.tensor([1, 0, 1])
    conf, acc = ref_top_label(logits, target)
    assert acc == [0.0, 1.0, 1.0]
    got = expected_calibration_error(logits, target, n_bins=4)
    assert float(got) == pytest.approx(ref_binned_error(conf, acc, 4, "l1"))


def test_huge_logits_stay_finite(generator):
    logits = torch.randn(50, 4, generator=generator) * 1e6
    target = torch.randint(0, 4, (50,), generator=generator)
    conf, acc = ref_top_label(logits, target)
    assert float(expected_calibration_error(logits, target)) == pytest.approx(
        ref_binned_error(conf, acc, 15, "l1")
    )
    assert math.isfinite(float(negative_log_likelihood(logits, target)))


def test_probs_input_equals_logits_input(generator):
    logits, target = rand_seg(generator)
    probs = torch.softmax(logits, 1)
    for fn in TOP.values():
        a = fn(logits, target)
        b = fn(probs, target, input_kind="probs")
        assert float(a) == pytest.approx(float(b), abs=1e-6)


def test_probs_ties_follow_argmax_first_index_at_any_confidence(generator):
    """Issue 16 item 13: given probabilities need not sum to 1, so a tie can sit above 0.5."""
    probs, target = torch.tensor([[0.9, 0.9, 0.2]]), torch.tensor([1])
    assert int(probs.argmax(1)) == 0  # so the prediction is wrong: |acc - conf| = 0.9
    for fn in (*TOP.values(), adaptive_calibration_error):
        assert float(fn(probs, target, input_kind="probs")) == pytest.approx(0.9)
    for metric in (
        CalibrationError(input_kind="probs"),
        AdaptiveCalibrationError(input_kind="probs"),
    ):
        metric.update(probs, target)
        assert float(metric.compute()) == pytest.approx(0.9)
    curve = reliability_curve(probs, target, input_kind="probs", n_bins=10)
    assert curve.count[9] == 1 and float(curve.accuracy[9]) == 0.0
    # many ties, unnormalised rows, every confidence: the reference takes np.argmax (first max)
    probs = torch.randint(0, 5, (400, 4), generator=generator).float() / 4
    target = torch.randint(0, 4, (400,), generator=generator)
    conf = probs.max(1).values.double().tolist()
    acc = (probs.argmax(1) == target).double().tolist()
    assert sum(acc) > 0
    for norm, fn in TOP.items():
        got = fn(probs, target, input_kind="probs", n_bins=10)
        assert float(got) == pytest.approx(ref_binned_error(conf, acc, 10, norm))
    got = adaptive_calibration_error(probs, target, input_kind="probs", n_bins=5)
    assert float(got) == pytest.approx(ref_adaptive(conf, acc, 5))


def test_finite_logits_of_extreme_size_are_accepted_and_exact():
    """Issue 16 item 15: ±3e38 is finite; ``max - min`` overflowing must not read as inf."""
    logits = torch.tensor([[3e38, -3e38, 0.0], [-3e38, 3e38, 3e38], [0.5, 2.0, -1.0]])
    target = torch.tensor([1, 2, 1])
    conf, acc = ref_top_label(logits, target)
    assert acc == [0.0, 0.0, 1.0]  # row 2: a tie at 3e38, argmax takes class 1
    assert float(expected_calibration_error(logits, target)) == pytest.approx(
        ref_binned_error(conf, acc, 15, "l1")
    )
    assert float(adaptive_calibration_error(logits, target, n_bins=2)) == pytest.approx(
        ref_adaptive(conf, acc, 2)
    )
    p = ref_probs(logits)
    onehot = np.eye(3)[target.numpy()]
    assert float(brier_score(logits, target)) == pytest.approx(((p - onehot) ** 2).sum(1).mean())
    x = logits.double().numpy()
    lse = x.max(1) + np.log(np.exp(x - x.max(1, keepdims=True)).sum(1))
    nll_ref = (lse - x[np.arange(3), target.numpy()]).mean()  # row 0: 6e38 (float64 only)
    nll = negative_log_likelihood(logits, target)
    assert math.isfinite(float(nll)) and float(nll) == pytest.approx(nll_ref, rel=1e-6)
    for metric in (CalibrationError(), AdaptiveCalibrationError(), BrierScore()):
        metric.update(logits, target)
        assert math.isfinite(float(metric.compute()))
    assert float(classwise_calibration_error(logits, target, num_classes=3)) == pytest.approx(
        ref_classwise(logits, target, 15)
    )
    seg = logits.T.reshape(1, 3, 3, 1)  # the same rows as a 3x1 image
    assert float(expected_calibration_error(seg, target.view(1, 3, 1))) == pytest.approx(
        ref_binned_error(conf, acc, 15, "l1")
    )


# ---------------------------------------------------------------------------------------------
# Adaptive
# ---------------------------------------------------------------------------------------------


def test_adaptive_exact_matches_reference(generator):
    for n, nb in ((1, 15), (7, 3), (40, 15), (333, 15), (500, 7)):
        logits = torch.randn(n, 5, generator=generator) * 2
        target = torch.randint(0, 5, (n,), generator=generator)
        conf, acc = ref_top_label(logits, target)
        got = adaptive_calibration_error(logits, target, n_bins=nb)
        assert float(got) == pytest.approx(ref_adaptive(conf, acc, nb), abs=1e-6)


def _expanded_ace(conf, acc, weights, n_bins):
    """The independent reference on the data set that ``weights`` describes, written out."""
    conf = np.repeat(np.asarray(conf, dtype=np.float64), weights)
    acc = np.repeat(np.asarray(acc, dtype=np.float64), weights)
    return ref_adaptive(conf.tolist(), acc.tolist(), n_bins) if len(conf) else math.nan


def test_adaptive_weighted_equals_each_expanded_data_set(generator):
    from calibrant.metrics import _binning as K

    for n, nb in ((1, 15), (9, 1), (40, 4), (300, 15)):
        conf = torch.rand(n, generator=generator)
        acc = (torch.rand(n, generator=generator) < conf).double()
        weights = torch.randint(0, 4, (5, n), generator=generator)
        weights[0] = 0  # an empty data set: no bins filled, NaN error
        weights[1] = 1  # the data set itself
        got = K.reduce_bins(K.adaptive_weighted(conf, acc, weights, nb), "l1")
        for row, value in zip(weights, got.tolist(), strict=True):
            expected = _expanded_ace(conf.tolist(), acc.tolist(), row.numpy(), nb)
            assert value == pytest.approx(expected, abs=1e-9, nan_ok=True)


def test_adaptive_weighted_ties_match_the_exact_kernel(generator):
    # Quantised confidences put ties on the interpolated edges; each row must bin them as the
    # one-shot kernel bins the expanded data (same edges, same (lower, upper] membership).
    from calibrant.metrics import _binning as K

    for levels, n, nb in ((2, 30, 15), (4, 60, 6), (10, 45, 15), (1000, 200, 15)):
        conf = torch.randint(0, levels + 1, (n,), generator=generator).float() / levels
        acc = (torch.rand(n, generator=generator) < conf).float()
        draws = torch.randint(0, n, (20, n), generator=generator)  # bootstrap resamples
        weights = torch.stack([torch.bincount(d, minlength=n) for d in draws])
        got = K.adaptive_weighted(conf, acc, weights, nb)
        for r, row in enumerate(weights):
            want = K.adaptive_exact(
                conf.repeat_interleave(row), acc.repeat_interleave(row), nb, "interp"
            )
            assert torch.equal(got.count[r], want.count)
            torch.testing.assert_close(got.conf[r], want.conf, rtol=0, atol=1e-9)
            torch.testing.assert_close(got.acc[r], want.acc, rtol=0, atol=1e-9)


def test_adaptive_includes_minimum_sample():
    # 3 samples, 3 bins: the research code's (lower, upper] drops the smallest confidence.
    logits = torch.tensor([[0.1, 0.0], [1.0, 0.0], [3.0, 0.0]])
    target = torch.tensor([1, 0, 0])
    conf, acc = ref_top_label(logits, target)
    got = float(adaptive_calibration_error(logits, target, n_bins=3))
    assert got == pytest.approx(ref_adaptive(conf, acc, 3))
    dropped = sum(abs(a - c) for c, a in zip(conf[1:], acc[1:], strict=True)) / 2
    assert got != pytest.approx(dropped)


@pytest.mark.parametrize("fine_bins", [1 << 10, 1 << 14])
def test_streamed_adaptive_within_documented_bound(generator, fine_bins):
    logits = torch.randn(20000, 8, generator=generator) * 2.5
    target = torch.randint(0, 8, (20000,), generator=generator)
    m = AdaptiveCalibrationError(fine_bins=fine_bins)
    for part in torch.tensor_split(torch.arange(20000), 7):
        m.update(logits[part], target[part])
    exact = float(adaptive_calibration_error(logits, target))
    bound = float(m.error_bound())
    assert abs(float(m.compute()) - exact) <= bound + 1e-12
    assert bound < (0.05 if fine_bins == 1 << 10 else 0.005)  # the bound is informative


def test_streamed_adaptive_bound_is_tight_enough_to_fail():
    # A coarse histogram (2 sub-bins) must give a bound > 0 and a real error on spread data.
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(4000, 3, generator=g) * 3
    target = torch.randint(0, 3, (4000,), generator=g)
    m = AdaptiveCalibrationError(fine_bins=2)
    m.update(logits, target)
    exact = float(adaptive_calibration_error(logits, target))
    assert float(m.error_bound()) > 0.5
    assert abs(float(m.compute()) - exact) <= float(m.error_bound())


# ---------------------------------------------------------------------------------------------
# Class-wise, TACE, scores
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("class_range", ["all", "present"])
@pytest.mark.parametrize("include_background", [True, False])
@pytest.mark.parametrize("threshold", [0.0, 0.05])
def test_classwise_matches_reference(generator, class_range, include_background, threshold):
    logits, target = rand_seg(generator, C=5)
    target[target == 4] = 2  # class 4 absent: "present" stops at 3
    got = classwise_calibration_error(
        logits,
        target,
        num_classes=5,
        n_bins=10,
        class_range=class_range,
        include_background=include_background,
        threshold=threshold,
    )
    ref = ref_classwise(
        logits,
        target,
        10,
        class_range=class_range,
        include_background=include_background,
        threshold=threshold,
    )
    assert float(got) == pytest.approx(ref, abs=1e-6)


@pytest.mark.parametrize(
    "mode,binning,n,bg,cr",
    [
        ("nixon", "adaptive", 15, False, "all"),
        ("crac", "uniform", 15, True, "present"),
        ("svls", "svls", 10, False, "all"),
    ],
)
def test_tace_modes_match_reference(generator, mode, binning, n, bg, cr):
    logits, target = rand_seg(generator, B=3, C=4, H=12, W=12, scale=4.0)
    for subset in ("all", "gt_fg"):
        got = tace(logits, target, num_classes=4, mode=mode, pixel_subset=subset)
        ref = ref_classwise(
            logits,
            target,
            n,
            class_range=cr,
            include_background=bg,
            threshold=1e-3,
            binning=binning,
            subset=subset,
        )
        assert float(got) == pytest.approx(ref, abs=1e-6), (mode, subset)


def test_tace_svls_is_conventional_over_n_bins(generator):
    # svls = (weighted sum over rank-chunk bins) / n_bins, background excluded.
    logits, target = rand_seg(generator, B=4, C=3, H=10, W=10)
    v = float(tace(logits, target, num_classes=3, mode="svls"))
    p = ref_probs(logits)
    t, ok = ref_valid(target)
    p, t = p[ok], t[ok]
    conventional = []
    for c in (1, 2):
        keep = p[:, c] > 1e-3
        conventional.append(10 * ref_svls_class(list(p[keep, c]), list(t[keep] == c), 10))
    assert v == pytest.approx(np.mean(conventional) / 10, abs=1e-6)
    assert v < float(tace(logits, target, num_classes=3, mode="nixon", n_bins=10)) / 3


def test_brier_and_nll_match_reference_and_torch(generator):
    logits, target = rand_seg(generator)
    p = ref_probs(logits)
    t, v = ref_valid(target)
    b = np.mean(
        [sum((p[i, k] - (k == t[i])) ** 2 for k in range(p.shape[1])) for i in np.where(v)[0]]
    )
    nll = np.mean([-np.log(p[i, t[i]]) for i in np.where(v)[0]])
    assert float(brier_score(logits, target)) == pytest.approx(b, abs=1e-6)
    assert float(negative_log_likelihood(logits, target)) == pytest.approx(nll, abs=1e-6)
    ce = torch.nn.functional.cross_entropy(logits, target, ignore_index=-100)
    assert float(negative_log_likelihood(logits, target)) == pytest.approx(float(ce), abs=1e-5)


def test_neighborhood_brier_matches_loop_reference(generator):
    logits = torch.randn(2, 3, 5, 6, generator=generator)
    target = torch.randint(0, 3, (2, 5, 6), generator=generator)
    p = torch.softmax(logits.double(), 1).numpy()
    y = target.numpy()
    errs = []
    for b in range(2):
        for i in range(5):
            for j in range(6):
                if y[b, i, j] == 0:
                    continue
                tau = np.zeros(3)
                for di in (-1, 0, 1):
                    for dj in (-1, 0, 1):
                        ii, jj = i + di, j + dj
                        inside = 0 <= ii < 5 and 0 <= jj < 6
                        tau[y[b, ii, jj] if inside else 0] += 1 / 9
                errs.append(sum((p[b, k, i, j] - tau[k]) ** 2 for k in range(3)))
    assert float(neighborhood_brier_score(logits, target)) == pytest.approx(np.mean(errs))
    m = NeighborhoodBrierScore()
    m.update(logits[:1], target[:1])
    m.update(logits[1:], target[1:])
    assert float(m.compute()) == pytest.approx(np.mean(errs))


# ---------------------------------------------------------------------------------------------
# Peers under their conventions
# ---------------------------------------------------------------------------------------------


def test_parity_torchmetrics_netcal_sklearn(generator):
    from netcal.metrics import ECE as NetcalECE
    from netcal.metrics import MCE as NetcalMCE
    from sklearn.calibration import calibration_curve
    from torchmetrics.functional.classification import multiclass_calibration_error

    logits = torch.randn(5000, 7, generator=generator) * 2
    target = torch.randint(0, 7, (5000,), generator=generator)
    probs = torch.softmax(logits, 1)
    for norm in ("l1", "l2", "max"):
        tm = multiclass_calibration_error(probs, target, 7, n_bins=15, norm=norm)
        assert float(TOP[norm](logits, target)) == pytest.approx(float(tm), abs=1e-6)
    pn = probs.double().numpy()
    assert float(expected_calibration_error(logits, target)) == pytest.approx(
        NetcalECE(bins=15).measure(pn, target.numpy()), abs=1e-6
    )
    assert float(maximum_calibration_error(logits, target)) == pytest.approx(
        NetcalMCE(bins=15).measure(pn, target.numpy()), abs=1e-6
    )
    curve = reliability_curve(logits, target, n_bins=15)
    conf, acc = ref_top_label(logits, target)
    prob_true, prob_pred = calibration_curve(np.array(acc), np.array(conf), n_bins=15)
    nonempty = curve.count > 0
    np.testing.assert_allclose(curve.accuracy[nonempty].numpy(), prob_true, atol=1e-6)
    np.testing.assert_allclose(curve.confidence[nonempty].numpy(), prob_pred, atol=1e-6)


def test_divergence_torchmetrics_phantom_bin_for_confidence_one():
    """torchmetrics puts confidence 1.0 into an extra (n+1-th) bin; calibrant uses the last."""
    from torchmetrics.functional.classification import multiclass_calibration_error

    probs = torch.tensor([[1.0, 0.0], [0.95, 0.05], [0.97, 0.03], [0.6, 0.4]])
    target = torch.tensor([1, 0, 0, 0])
    ours = float(expected_calibration_error(probs, target, n_bins=10, input_kind="probs"))
    theirs = float(multiclass_calibration_error(probs, target, 2, n_bins=10))
    # calibrant, last bin {1.0 (wrong), 0.95, 0.97 (right)}: 3 |2/3 - 0.9733| ; bin 6: |1 - 0.6|
    assert ours == pytest.approx((3 * abs(2 / 3 - (1 + 0.95 + 0.97) / 3) + 0.4) / 4, abs=1e-6)
    # torchmetrics: {1.0} alone in its phantom bin, then {0.95, 0.97} and {0.6}
    assert theirs == pytest.approx((1.0 + 2 * 0.04 + 0.4) / 4, abs=1e-6)
    assert ours != pytest.approx(theirs)


def test_parity_monai_classwise(generator):
    from monai.metrics import CalibrationErrorMetric

    C = 5
    logits = torch.randn(1, C, 40, 50, generator=generator) * 3
    target = torch.randint(0, C, (1, 40, 50), generator=generator)
    probs = torch.softmax(logits, 1)
    onehot = torch.nn.functional.one_hot(target, C).movedim(-1, 1).float()
    for bg in (True, False):
        metric = CalibrationErrorMetric(num_bins=15, include_background=bg)
        metric(y_pred=probs, y=onehot)
        ours = classwise_calibration_error(logits, target, num_classes=C, include_background=bg)
        assert float(ours) == pytest.approx(float(metric.aggregate()), abs=1e-6)


# ---------------------------------------------------------------------------------------------
# Streaming, protocols, DDP
# ---------------------------------------------------------------------------------------------


def _metric_pairs(C):
    return [
        (CalibrationError(norm="l1"), lambda x, y: expected_calibration_error(x, y)),
        (CalibrationError(norm="l2"), lambda x, y: rms_calibration_error(x, y)),
        (CalibrationError(norm="max"), lambda x, y: maximum_calibration_error(x, y)),
        (CalibrationError(norm="avg"), lambda x, y: average_calibration_error(x, y)),
        (
            ClasswiseCalibrationError(C, class_range="present"),
            lambda x, y: classwise_calibration_error(x, y, num_classes=C, class_range="present"),
        ),
        (TACE(C, mode="crac"), lambda x, y: tace(x, y, num_classes=C, mode="crac")),
        (BrierScore(), lambda x, y: brier_score(x, y)),
        (NegativeLogLikelihood(), lambda x, y: negative_log_likelihood(x, y)),
    ]


def test_streaming_equals_one_shot(generator):
    logits, target = rand_seg(generator, B=9, C=4, H=11, W=13)
    for _ in range(3):
        cuts = sorted(torch.randperm(8, generator=generator)[:3].add(1).tolist())
        for metric, fn in _metric_pairs(4):
            for part in torch.tensor_split(torch.arange(9), cuts):
                metric.update(logits[part], target[part])
            assert float(metric.compute()) == pytest.approx(float(fn(logits, target)), abs=1e-9)


def test_streamed_tace_adaptive_modes_within_bound(generator):
    logits, target = rand_seg(generator, B=6, C=4, H=30, W=30, scale=3.0)
    for mode in ("nixon", "svls"):
        m = TACE(4, mode=mode)
        for part in torch.tensor_split(torch.arange(6), 3):
            m.update(logits[part], target[part])
        exact = float(tace(logits, target, num_classes=4, mode=mode))
        assert abs(float(m.compute()) - exact) <= float(m.error_bound()) + 1e-12
        assert float(m.error_bound()) < 0.1  # 5400 pixels, 4096 sub-bins per class


def test_per_volume_mean_protocol(generator):
    vols = [rand_seg(generator, B=3, C=4, H=8, W=8) for _ in range(4)]
    vols[2][1].fill_(0)  # a volume without foreground: NaN under gt_fg -> skipped
    pv = PerVolumeMean(ClasswiseCalibrationError(4, class_range="present", pixel_subset="gt_fg"))
    vals = []
    for x, y in vols:
        pv.update(x, y)
        v = ref_classwise(x, y, 15, class_range="present", subset="gt_fg")
        if not math.isnan(v):
            vals.append(v)
    assert int(pv.skipped) == 1 and int(pv.volumes) == 3
    assert float(pv.compute()) == pytest.approx(np.mean(vals), abs=1e-6)
    pooled = ClasswiseCalibrationError(4, class_range="present", pixel_subset="gt_fg")
    for x, y in vols:
        pooled.update(x, y)
    assert float(pooled.compute()) != pytest.approx(float(pv.compute()))


def test_registry_names():
    for name in (
        "ece",
        "rmsce",
        "mce",
        "average_ce",
        "adaptive_ece",
        "classwise_ece",
        "tace",
        "brier",
        "nll",
        "neighborhood_brier",
        "paper_ece",
        "paper_classwise_ece",
        "paper_tace",
    ):
        assert name in METRICS
    assert isinstance(METRICS.build("paper_tace", num_classes=4), PerVolumeMean)
    assert METRICS.build("mce").norm == "max"


def _ddp_worker(rank, world_size, logits, target):
    parts = torch.tensor_split(torch.arange(logits.shape[0]), world_size)[rank]
    out = []
    for metric, _ in _metric_pairs(logits.shape[1]):
        metric.update(logits[parts], target[parts])
        out.append(float(metric.compute()))
    ada = AdaptiveCalibrationError()
    ada.update(logits[parts], target[parts])
    out.append(float(ada.compute()))
    pv = PerVolumeMean(CalibrationError())
    for i in parts.tolist():
        pv.update(logits[i : i + 1], target[i : i + 1])
    out.append(float(pv.compute()))
    return out


@pytest.mark.ddp
def test_ddp_two_processes_equal_single(generator):
    logits, target = rand_seg(generator, B=6, C=4, H=10, W=10)
    results = run_ddp(_ddp_worker, world_size=2, args=(logits, target))
    single = [float(fn(logits, target)) for _, fn in _metric_pairs(4)]
    ada = AdaptiveCalibrationError()
    ada.update(logits, target)
    pv = PerVolumeMean(CalibrationError())
    for i in range(6):
        pv.update(logits[i : i + 1], target[i : i + 1])
    single += [float(ada.compute()), float(pv.compute())]
    for r in results:
        np.testing.assert_allclose(r, single, rtol=0, atol=1e-9)


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------


def test_bad_input_raises_value_error():
    x = torch.randn(4, 3, 5)
    y = torch.randint(0, 3, (4, 5))
    bad_x = [x.clone(), x.clone(), x.clone()]
    bad_x[0][1, 2, 3] = float("nan")
    bad_x[1][0, 0, 0] = float("inf")
    bad_x[2][2, 1, 4] = float("-inf")
    for b in bad_x:
        for fn in (expected_calibration_error, brier_score):
            with pytest.raises(ValueError, match="NaN or infinite"):
                fn(b, y)
        with pytest.raises(ValueError, match="NaN or infinite"):
            classwise_calibration_error(b, y, num_classes=3)
    with pytest.raises(ValueError, match="does not match"):
        expected_calibration_error(x, y[:, :4])
    with pytest.raises(ValueError, match="integer"):
        expected_calibration_error(x, y.float())
    with pytest.raises(ValueError, match="floating"):
        expected_calibration_error(x.long(), y)
    with pytest.raises(ValueError, match="outside"):
        expected_calibration_error(x, y.masked_fill(y == 0, 3))
    with pytest.raises(ValueError, match="outside"):
        expected_calibration_error(x, y.masked_fill(y == 0, -5))
    with pytest.raises(ValueError, match="num_classes"):
        classwise_calibration_error(x, y, num_classes=4)
    with pytest.raises(ValueError, match="num_classes"):
        ClasswiseCalibrationError(4).update(x, y)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        expected_calibration_error(x, y, input_kind="probs")
    with pytest.raises(ValueError, match="input_kind"):
        expected_calibration_error(x, y, input_kind="probabilities")
    with pytest.raises(ValueError, match="n_bins"):
        expected_calibration_error(x, y, n_bins=0)
    with pytest.raises(ValueError, match="mode"):
        tace(x, y, num_classes=3, mode="guo")
    with pytest.raises(ValueError, match="mask"):
        expected_calibration_error(x, y, mask=torch.ones(4, 5))
    # Issue 16 item 16: an out-of-range label raises even where mask= excludes it (as a NaN
    # logit there does); only ignore_index is exempt.
    y_bad, only_ok = y.clone(), torch.ones(4, 5, dtype=torch.bool)
    y_bad[1, 2], only_ok[1, 2] = 7, False
    masked_fns = (
        expected_calibration_error,
        adaptive_calibration_error,
        reliability_curve,
        brier_score,
        negative_log_likelihood,
        neighborhood_brier_score,
        lambda a, b, mask: classwise_calibration_error(a, b, num_classes=3, mask=mask),
        lambda a, b, mask: tace(a, b, num_classes=3, mask=mask),
    )
    for fn in masked_fns:
        with pytest.raises(ValueError, match="outside"):
            fn(x, y_bad, mask=only_ok)
        fn(x, y_bad.masked_fill(~only_ok, -100), mask=only_ok)  # ignored: accepted
    for metric in (CalibrationError(), BrierScore(), ClasswiseCalibrationError(3)):
        with pytest.raises(ValueError, match="outside"):
            metric.update(x, y_bad, mask=only_ok)
    m = CalibrationError()
    with pytest.raises(ValueError):
        m.update(bad_x[0], y)
    assert int(m.count.sum()) == 0  # a failed update leaves the state untouched


# ---------------------------------------------------------------------------------------------
# Exactness at CT scale: 2.6e7 voxels x 14 classes
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_exact_at_ct_scale_where_float32_peers_drift():
    """One CT-sized volume, 13 * 2^21 = 2.7e7 voxels x 14 classes.

    The logits are 13 rolled copies of one random (14, 2^21) block, so the float64 reference
    needs the softmax of one block only; labels are drawn afresh for every voxel.
    """
    from monai.metrics import CalibrationErrorMetric
    from torchmetrics.functional.classification.calibration_error import _ce_compute

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # many small ops: one thread is fastest on a loaded 2-core box
    try:
        g = torch.Generator().manual_seed(7)
        C, n, W, reps = 14, 15, 1 << 21, 13
        N = W * reps
        winner = torch.randint(0, C, (W,), generator=g)
        winner[torch.rand(W, generator=g) < 0.85] = 0  # background-dominated and confident
        base = torch.randn(C, W, generator=g)
        base[winner, torch.arange(W)] += 9.0
        logits = torch.empty(1, C, N)
        target = torch.empty(1, N, dtype=torch.long)
        shifts = [int(s) for s in torch.randint(0, W, (reps,), generator=g)]
        for k, sh in enumerate(shifts):
            logits[0, :, k * W : (k + 1) * W] = base.roll(sh, 1)
            lab = winner.roll(sh)
            flip = torch.rand(W, generator=g) < 0.1
            target[0, k * W : (k + 1) * W] = torch.where(
                flip, torch.randint(0, C, (W,), generator=g), lab
            )
        ece = float(expected_calibration_error(logits, target))
        cw = float(classwise_calibration_error(logits, target, num_classes=C))

        # float64 reference from the softmax of the single block
        p = torch.softmax(base.double(), 0)
        conf, pred = p.max(0)
        b = (conf.float() * n).long().clamp(max=n - 1)
        bc = (p.float() * n).long().clamp(max=n - 1)
        cnt = torch.bincount(b, minlength=n).double() * reps
        sconf = torch.bincount(b, conf, minlength=n) * reps
        ccnt = torch.stack([torch.bincount(bc[c], minlength=n) for c in range(C)]).double() * reps
        cconf = torch.stack([torch.bincount(bc[c], p[c], minlength=n) for c in range(C)]) * reps
        sacc = torch.zeros(n, dtype=torch.float64)
        cacc = torch.zeros(C * n, dtype=torch.float64)
        for k, sh in enumerate(shifts):
            t = target[0, k * W : (k + 1) * W]
            sacc += torch.bincount(b.roll(sh), (pred.roll(sh) == t).double(), minlength=n)
            idx = t * n + bc.roll(sh, 1).gather(0, t.unsqueeze(0))[0]
            cacc += torch.bincount(idx, minlength=C * n).double()
        cacc = cacc.view(C, n)
        ref_ece = float((sacc - sconf).abs().sum() / N)
        ref_cw = float(((cacc - cconf).abs().sum(1) / N).mean())
        assert cnt.max() > 2**24 and ccnt.max() > 2**24  # where float32 counters stall
        assert ece == pytest.approx(ref_ece, abs=1e-7)
        assert cw == pytest.approx(ref_cw, abs=1e-7)

        # Named divergence 1: torchmetrics' float32 bin counters stop at 2^24 and ECE drifts.
        conf_all = torch.cat([conf.float().roll(sh) for sh in shifts])
        acc_all = torch.cat(
            [
                (pred.roll(sh) == target[0, k * W : (k + 1) * W]).float()
                for k, sh in enumerate(shifts)
            ]
        )
        tm = float(_ce_compute(conf_all, acc_all, torch.linspace(0, 1, n + 1), norm="l1"))
        assert abs(tm - ref_ece) > 1e-3
        # Named divergence 2: MONAI's class-wise ECE counts in float32 too. A cheap 2-class
        # version of the volume (background vs foreground) shows it.
        t2 = (target != 0).long()
        x2 = torch.stack([logits[:, 0], logits[:, 1:].amax(1)], 1)
        ours2 = float(classwise_calibration_error(x2, t2, num_classes=2))
        monai = CalibrationErrorMetric(num_bins=n)
        monai(y_pred=torch.softmax(x2, 1), y=torch.stack([t2 == 0, t2 == 1], 1).float())
        p2 = torch.softmax(x2.double(), 1)[0]
        ref2 = []
        for c in range(2):
            bb = (p2[c].float() * n).long().clamp(max=n - 1)
            sc = torch.bincount(bb, p2[c], minlength=n)
            sa = torch.bincount(bb, (t2[0] == c).double(), minlength=n)
            ref2.append(float((sa - sc).abs().sum() / N))
        assert ours2 == pytest.approx(np.mean(ref2), abs=1e-7)
        assert abs(float(monai.aggregate()) - np.mean(ref2)) > 0.1 * np.mean(ref2)
    finally:
        torch.set_num_threads(threads)


def test_state_sizes_are_fixed_and_small(generator):
    metrics = [CalibrationError(), AdaptiveCalibrationError(), ClasswiseCalibrationError(14)]
    before = [sum(v.numel() for v in m.metric_state.values()) for m in metrics]
    logits, target = rand_seg(generator, B=3, C=14, H=16, W=16)
    for m in metrics:
        m.update(logits, target)
        nbytes = sum(v.numel() * v.element_size() for v in m.metric_state.values())
        assert nbytes <= 2**20
    after = [sum(v.numel() for v in m.metric_state.values()) for m in metrics]
    assert before == after
    assert all(v.dtype in (torch.int64, torch.float64) for v in metrics[0].metric_state.values())


def test_top_label_predictions_record_what_the_ece_bins(generator):
    """The recorder's confidences are the ECE kernel's, bit for bit (one body for both)."""
    from calibrant.metrics import TopLabelPredictions

    logits = 3 * torch.randn(5, 4, 7, 7, generator=generator)
    target = torch.randint(0, 4, (5, 7, 7), generator=generator)
    target[:, 0] = -100
    rec = TopLabelPredictions()
    rec.update(logits[:2], target[:2])
    rec.update(logits[2:], target[2:])
    got = rec.compute()
    keep = target.reshape(-1) != -100
    z = logits.movedim(1, -1).reshape(-1, 4)[keep]
    assert torch.equal(got["label"], target.reshape(-1)[keep])
    assert torch.equal(got["prediction"], z.argmax(1))
    torch.testing.assert_close(got["confidence"], z.softmax(1).amax(1), rtol=3e-7, atol=0)
    bins = torch.zeros(15, dtype=torch.float64)
    correct = (got["prediction"] == got["label"]).double()
    b = (got["confidence"] * 15).long().clamp(max=14)
    conf_sum = bins.index_add(0, b, got["confidence"].double())
    acc_sum = bins.index_add(0, b, correct)
    ece = (acc_sum - conf_sum).abs().sum() / len(b)
    assert float(ece) == float(expected_calibration_error(logits, target))
