"""Signed over-confidence against slow float64 loop references, streamed, and under DDP."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from calibrant.metrics import (
    MultilabelOverConfidence,
    OverConfidence,
    PerVolumeMean,
    expected_calibration_error,
    multilabel_overconfidence,
    overconfidence,
)
from calibrant.registry import METRICS
from tests._ddp import run_ddp


def _reference(logits, target, *, gt_fg=False, ignore_index=-100):
    """Loop over elements in float64: mean(max softmax) - mean(argmax == label)."""
    z = logits.double().movedim(1, -1).reshape(-1, logits.shape[1]).tolist()
    t = target.reshape(-1).tolist()
    gaps = []
    for row, label in zip(z, t, strict=True):
        if label == ignore_index or (gt_fg and label == 0):
            continue
        m = max(row)
        e = [math.exp(v - m) for v in row]
        conf = max(e) / sum(e)
        pred = row.index(m)  # first maximal index
        gaps.append(conf - (1.0 if pred == label else 0.0))
    return sum(gaps) / len(gaps) if gaps else math.nan


def _multilabel_reference(logits, target):
    gaps = []
    for v, y in zip(logits.double().reshape(-1).tolist(), target.reshape(-1).tolist(), strict=True):
        p = 1.0 / (1.0 + math.exp(-v))
        present = p >= 0.5
        gaps.append(max(p, 1.0 - p) - (1.0 if present == bool(y) else 0.0))
    return sum(gaps) / len(gaps)


def _seg(seed, B=3, C=4, H=9, W=7, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, C, H, W, generator=g) * scale
    target = torch.randint(0, C, (B, H, W), generator=g)
    target[0, 0, :3] = -100
    return logits, target


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("gt_fg", [False, True])
def test_matches_loop_reference(seed, gt_fg):
    logits, target = _seg(seed)
    subset = "gt_fg" if gt_fg else "all"
    got = float(overconfidence(logits, target, pixel_subset=subset))
    assert got == pytest.approx(_reference(logits, target, gt_fg=gt_fg), abs=1e-6)


def test_sign_and_bound_by_ece():
    g = torch.Generator().manual_seed(5)
    target = torch.randint(0, 5, (400,))
    # right 60 % of the time with confidence near 1: over-confident by about +0.4
    logits = torch.randn(400, 5, generator=g)
    right = torch.rand(400, generator=g) < 0.6
    pred = torch.where(right, target, (target + 1) % 5)
    logits[torch.arange(400), pred] += 12.0
    oc = float(overconfidence(logits, target))
    assert 0.3 < oc < 0.5
    assert abs(oc) <= float(expected_calibration_error(logits, target)) + 1e-12
    # temperatures far above 1 make the same network under-confident
    assert float(overconfidence(logits / 50.0, target)) < 0


def test_streamed_equals_one_shot_and_per_volume():
    logits, target = _seg(3, B=5)
    m = OverConfidence(pixel_subset="gt_fg")
    for i in range(5):
        m.update(logits[i : i + 1], target[i : i + 1])
    assert float(m.compute()) == pytest.approx(
        float(overconfidence(logits, target, pixel_subset="gt_fg")), abs=1e-12
    )
    pv = METRICS.build("paper_overconfidence")
    assert isinstance(pv, PerVolumeMean)
    for i in range(5):
        pv.update(logits[i : i + 1], target[i : i + 1])
    per_volume = [_reference(logits[i : i + 1], target[i : i + 1], gt_fg=True) for i in range(5)]
    assert float(pv.compute()) == pytest.approx(np.mean(per_volume), abs=1e-6)


def test_no_valid_element_is_nan():
    logits = torch.randn(1, 3, 4)
    assert math.isnan(float(overconfidence(logits, torch.zeros(1, 4, dtype=torch.long),
                                           pixel_subset="gt_fg")))  # fmt: skip


def test_probs_input_and_bad_input():
    logits, target = _seg(4)
    probs = logits.softmax(1)
    assert float(overconfidence(probs, target, input_kind="probs")) == pytest.approx(
        float(overconfidence(logits, target)), abs=1e-6
    )
    with pytest.raises(ValueError):
        overconfidence(logits, target.clamp_min(0) + 4)  # labels out of range
    with pytest.raises(ValueError):
        overconfidence(torch.full_like(logits, math.nan), target)


def test_multilabel_matches_reference_and_streams():
    g = torch.Generator().manual_seed(7)
    v = torch.randn(20, 6, generator=g) * 4
    y = torch.randint(0, 2, (20, 6), generator=g)
    got = float(multilabel_overconfidence(v, y))
    assert got == pytest.approx(_multilabel_reference(v, y), abs=1e-9)
    m = METRICS.build("multilabel_overconfidence")
    assert isinstance(m, MultilabelOverConfidence)
    m.update(v[:7], y[:7])
    m.update(v[7:], y[7:])
    assert float(m.compute()) == pytest.approx(got, abs=1e-12)


def _ddp_worker(rank, world_size, logits, target, v, y):
    part = torch.tensor_split(torch.arange(logits.shape[0]), world_size)[rank]
    m = OverConfidence()
    m.update(logits[part], target[part])
    pv = METRICS.build("paper_overconfidence")
    for i in part.tolist():
        pv.update(logits[i : i + 1], target[i : i + 1])
    ml = MultilabelOverConfidence()
    rows = torch.tensor_split(torch.arange(v.shape[0]), world_size)[rank]
    ml.update(v[rows], y[rows])
    return [float(m.compute()), float(pv.compute()), float(ml.compute())]


@pytest.mark.ddp
def test_ddp_two_processes_equal_single():
    logits, target = _seg(8, B=6)
    g = torch.Generator().manual_seed(9)
    v, y = torch.randn(10, 5, generator=g) * 3, torch.randint(0, 2, (10, 5), generator=g)
    results = run_ddp(_ddp_worker, world_size=2, args=(logits, target, v, y))
    per_volume = [_reference(logits[i : i + 1], target[i : i + 1], gt_fg=True) for i in range(6)]
    single = [_reference(logits, target), float(np.mean(per_volume)), _multilabel_reference(v, y)]
    for r in results:
        np.testing.assert_allclose(r, single, rtol=0, atol=1e-6)
