"""Binary segmentation scores and AUC-ROC against loops, scikit-learn and torchmetrics."""

from __future__ import annotations

import math

import pytest
import torch
from sklearn.metrics import roc_auc_score
from torchmetrics.functional.classification import binary_jaccard_index, binary_stat_scores

from calibrant.metrics.binary import (
    BinaryAUROC,
    BinarySegmentationScores,
    binary_auroc,
    binary_confusion,
    binary_segmentation_scores,
)
from calibrant.registry import METRICS
from tests._ddp import run_ddp


def ref_scores(logits, target, threshold=0.5):
    tp = fp = tn = fn = 0
    for v, y in zip(logits.reshape(-1).tolist(), target.reshape(-1).tolist(), strict=True):
        pred = 1 / (1 + math.exp(-v)) > threshold
        if pred and y:
            tp += 1
        elif pred:
            fp += 1
        elif y:
            fn += 1
        else:
            tn += 1
    return {
        "recall": tp / (tp + fn),
        "specificity": tn / (tn + fp),
        "precision": tp / (tp + fp),
        "f_measure": 2 * tp / (2 * tp + fp + fn),
        "jaccard": tp / (tp + fp + fn),
    }


def ref_auroc(scores, target):
    pos = [s for s, y in zip(scores, target, strict=True) if y]
    neg = [s for s, y in zip(scores, target, strict=True) if not y]
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


@pytest.mark.parametrize("shape", [(3, 1, 6, 5), (3, 6, 5), (2, 1, 3, 4, 5)])
@pytest.mark.parametrize("threshold", [0.5, 0.3])
def test_scores_match_reference(generator, shape, threshold):
    v = torch.randn(shape, generator=generator) * 2
    y = (torch.rand(shape, generator=generator) < 0.4).long()
    ours = binary_segmentation_scores(v, y, threshold=threshold)
    ref = ref_scores(v, y, threshold)
    for k, val in ref.items():
        assert float(ours[k]) == pytest.approx(val, abs=1e-12), k


def test_scores_match_torchmetrics(generator):
    v = torch.randn(4, 1, 16, 16, generator=generator)
    y = (torch.rand(4, 1, 16, 16, generator=generator) < 0.3).long()
    tp, fp, tn, fn, _ = binary_stat_scores(torch.sigmoid(v), y).tolist()
    assert binary_confusion(v, y).tolist() == [tp, fp, tn, fn]
    tm_j = binary_jaccard_index(torch.sigmoid(v), y)
    assert float(binary_segmentation_scores(v, y)["jaccard"]) == pytest.approx(float(tm_j))


def test_threshold_on_logit_not_rounded_sigmoid():
    # sigmoid(1e-9) rounds to exactly 0.5 in float32; the logit test still calls it positive.
    v = torch.tensor([[1e-9, -1e-9]])
    assert float(torch.sigmoid(v)[0, 0]) == 0.5
    assert binary_confusion(v, torch.tensor([[1, 0]])).tolist() == [1, 0, 1, 0]


def test_streaming_and_edge_cases(generator):
    v = torch.randn(6, 1, 8, 8, generator=generator)
    y = (torch.rand(6, 1, 8, 8, generator=generator) < 0.5).long()
    m = BinarySegmentationScores()
    for a, b in [(0, 1), (1, 4), (4, 6)]:
        m.update(v[a:b], y[a:b])
    one = binary_segmentation_scores(v, y)
    assert all(torch.equal(m.compute()[k], one[k]) for k in one)
    assert m.confusion.dtype == torch.int64
    # No positive predicted and no positive present: recall/precision/F/J NaN, specificity 1.
    s = binary_segmentation_scores(-torch.ones(1, 4), torch.zeros(1, 4))
    assert float(s["specificity"]) == 1.0 and math.isnan(float(s["recall"]))
    # float16/bfloat16 logits work.
    assert binary_confusion(v.half(), y).tolist() == binary_confusion(v.half().float(), y).tolist()
    assert binary_confusion(v.bfloat16(), y).sum() == y.numel()


def test_int64_counts_beyond_float32_range():
    # 2**24 + 3 positives: a float32 counter would stop at 2**24.
    n = 2**24 + 3
    v = torch.ones(1, n)
    y = torch.ones(1, n, dtype=torch.uint8)
    assert binary_confusion(v, y)[0].item() == n


def test_bad_input():
    with pytest.raises(ValueError, match="shape"):
        binary_confusion(torch.zeros(2, 1, 4), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="0 and 1"):
        binary_confusion(torch.zeros(2, 4), torch.full((2, 4), 2))
    with pytest.raises(ValueError, match="NaN"):
        binary_confusion(torch.tensor([float("nan")]), torch.tensor([1]))
    with pytest.raises(ValueError, match="threshold"):
        binary_confusion(torch.zeros(2), torch.zeros(2), threshold=1.0)
    with pytest.raises(ValueError, match="floating"):
        binary_auroc(torch.zeros(2, dtype=torch.long), torch.zeros(2))


@pytest.mark.parametrize("ties", [False, True])
def test_auroc_exact_parity(generator, ties):
    for _ in range(10):
        s = torch.randn(60, generator=generator)
        if ties:
            s = s.round()
        y = (torch.rand(60, generator=generator) < 0.4).long()
        ours = float(binary_auroc(s, y))
        assert ours == pytest.approx(roc_auc_score(y.numpy(), s.numpy()), abs=1e-12)
        assert ours == pytest.approx(ref_auroc(s.tolist(), y.tolist()), abs=1e-12)
    assert math.isnan(float(binary_auroc(torch.randn(5), torch.zeros(5))))


@pytest.mark.parametrize("n_bins", [10, 100, 10_000])
def test_auroc_streaming_error_bound(generator, n_bins):
    v = torch.randn(4, 1, 32, 32, generator=generator) * 2
    y = (torch.rand(4, 1, 32, 32, generator=generator) < torch.sigmoid(v)).long()
    m = BinaryAUROC(n_bins=n_bins)
    for i in range(4):
        m.update(v[i : i + 1], y[i : i + 1])
    exact = float(binary_auroc(v, y))
    err = abs(float(m.compute()) - exact)
    bound = float(m.error_bound())
    assert err <= bound + 1e-12
    if n_bins == 10_000:
        assert bound < 2e-3  # fine histogram: the documented bound is small here
    if n_bins == 10:
        assert err > 1e-4  # a coarse histogram really differs (so the check above can fail)


def test_auroc_histogram_exact_when_bins_separate():
    # Values chosen so each lands in a different bin: the histogram AUC equals the exact one.
    v = torch.tensor([-3.0, -1.0, 0.2, 1.0, 2.5, 4.0])
    y = torch.tensor([0, 1, 0, 1, 0, 1])
    m = BinaryAUROC(n_bins=1000)
    m.update(v, y)
    assert float(m.error_bound()) == 0.0
    assert float(m.compute()) == pytest.approx(float(binary_auroc(v, y)), abs=1e-15)


def test_registered():
    assert "binary_scores" in METRICS and "binary_auroc" in METRICS


def _ddp_worker(rank, world_size, v, y):
    s, a = BinarySegmentationScores(), BinaryAUROC(n_bins=500)
    s.update(v[rank::world_size], y[rank::world_size])
    a.update(v[rank::world_size], y[rank::world_size])
    return s.compute()["jaccard"], a.compute()


@pytest.mark.ddp
def test_ddp_equals_single_process(generator):
    v = torch.randn(5, 1, 8, 8, generator=generator)
    y = (torch.rand(5, 1, 8, 8, generator=generator) < 0.5).long()
    one_s, one_a = BinarySegmentationScores(), BinaryAUROC(n_bins=500)
    one_s.update(v, y)
    one_a.update(v, y)
    for j, a in run_ddp(_ddp_worker, world_size=2, args=(v, y)):
        assert torch.equal(j, one_s.compute()["jaccard"])
        assert float(a) == pytest.approx(float(one_a.compute()), abs=1e-14)


def test_auroc_huge_and_half_logits(generator):
    v = torch.randn(200, generator=generator) * 1e4  # sigmoid saturates; ranks do not
    y = (torch.rand(200, generator=generator) < 0.5).long()
    assert float(binary_auroc(v, y)) == pytest.approx(roc_auc_score(y.numpy(), v.numpy()))
    m = BinaryAUROC()
    m.update(v, y)
    assert abs(float(m.compute()) - float(binary_auroc(v, y))) <= float(m.error_bound()) + 1e-12
    h = torch.randn(300, generator=generator).half()
    yh = (torch.rand(300, generator=generator) < 0.5).long()
    assert float(binary_auroc(h, yh)) == pytest.approx(roc_auc_score(yh.numpy(), h.float().numpy()))
