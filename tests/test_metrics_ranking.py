"""Ranking metrics against loop references and scikit-learn."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from calibrant.metrics.ranking import (
    Accuracy,
    MultilabelClasswiseMAP,
    MultilabelInstancewiseMAP,
    RetrievalMAP,
    accuracy,
    average_precision,
    make_queries,
    multilabel_classwise_map,
    multilabel_instancewise_map,
    retrieval_map,
    retrieval_relevance,
    retrieval_score,
)
from calibrant.registry import METRICS
from tests._ddp import run_ddp


# ---------------------------------------------------------------- slow references (loops)
def ref_ap(scores, target):
    """AP by definition: for each positive, precision at the END of its tie group."""
    scores = [float(s) for s in scores]
    target = [int(t) for t in target]
    n_pos = sum(target)
    if n_pos == 0:
        return math.nan
    total = 0.0
    for s, t in zip(scores, target, strict=True):
        if t:
            above = [j for j, sj in enumerate(scores) if sj >= s]
            total += sum(target[j] for j in above) / len(above)
    return total / n_pos


def _ml_data(generator, n=40, t=6, ties=False):
    v = torch.randn(n, t, generator=generator)
    if ties:
        v = (v * 2).round() / 2
    y = (torch.rand(n, t, generator=generator) < 0.3).long()
    return v, y


# ---------------------------------------------------------------- accuracy
def test_accuracy_reference_and_ignore(generator):
    logits = torch.randn(4, 5, 3, 3, generator=generator)
    target = torch.randint(0, 5, (4, 3, 3), generator=generator)
    target[0, 0, 0] = -100
    target[1, 2, :] = -100
    pred = logits.argmax(1)
    keep = target != -100
    expected = (pred[keep] == target[keep]).double().mean()
    assert torch.equal(accuracy(logits, target), expected)
    m = Accuracy()
    m.update(logits[:2], target[:2])
    m.update(logits[2:], target[2:])
    assert torch.equal(m.compute(), expected)


def test_accuracy_all_ignored_and_bad_input():
    logits = torch.zeros(2, 3)
    assert torch.isnan(accuracy(logits, torch.full((2,), -100)))
    with pytest.raises(ValueError, match="outside"):
        accuracy(logits, torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="shape"):
        accuracy(logits, torch.tensor([0]))


def test_accuracy_half_precision(generator):
    logits = torch.randn(64, 4, generator=generator)
    target = torch.randint(0, 4, (64,), generator=generator)
    ref = accuracy(logits, target)
    assert torch.equal(
        accuracy(logits.bfloat16().float(), target), accuracy(logits.bfloat16(), target)
    )
    assert 0 <= float(ref) <= 1


# ---------------------------------------------------------------- AP and mAP
@pytest.mark.parametrize("ties", [False, True])
def test_average_precision_matches_reference_and_sklearn(generator, ties):
    for _ in range(20):
        s = torch.randn(30, generator=generator)
        if ties:
            s = s.round()
        y = (torch.rand(30, generator=generator) < 0.4).long()
        if y.sum() == 0:
            continue
        ours = float(average_precision(s, y))
        assert ours == pytest.approx(ref_ap(s, y), abs=1e-12)
        assert ours == pytest.approx(average_precision_score(y.numpy(), s.numpy()), abs=1e-12)


def test_average_precision_edge_cases():
    assert torch.isnan(average_precision(torch.tensor([0.1, 0.2]), torch.tensor([0, 0])))
    assert float(average_precision(torch.tensor([1.0]), torch.tensor([1]))) == 1.0
    # All tied: precision = prevalence.
    assert float(average_precision(torch.zeros(4), torch.tensor([1, 0, 0, 1]))) == 0.5
    with pytest.raises(ValueError, match="NaN"):
        average_precision(torch.tensor([float("nan"), 0.0]), torch.tensor([1, 0]))


@pytest.mark.parametrize("ties", [False, True])
def test_classwise_map_sklearn_parity(generator, ties):
    v, y = _ml_data(generator, ties=ties)
    y[:, 2] = 0  # a label with no positive: excluded by us
    per = multilabel_classwise_map(v, y, average=False)
    assert torch.isnan(per[2])
    keep = [t for t in range(v.shape[1]) if y[:, t].any()]
    sk = average_precision_score(y[:, keep].numpy(), v[:, keep].numpy(), average=None)
    np.testing.assert_allclose(per[keep].numpy(), sk, atol=1e-12)
    assert float(multilabel_classwise_map(v, y)) == pytest.approx(sk.mean(), abs=1e-12)


@pytest.mark.parametrize("ties", [False, True])
def test_instancewise_map_sklearn_parity(generator, ties):
    v, y = _ml_data(generator, ties=ties)
    y[3] = 0
    rows = [i for i in range(v.shape[0]) if y[i].any()]
    sk = average_precision_score(y[rows].numpy().T, v[rows].numpy().T, average="macro")
    # sklearn "samples" averaging is the same quantity.
    sk2 = average_precision_score(y[rows].numpy(), v[rows].numpy(), average="samples")
    assert float(multilabel_instancewise_map(v, y)) == pytest.approx(sk, abs=1e-12)
    assert sk == pytest.approx(sk2, abs=1e-12)
    refs = [ref_ap(v[i], y[i]) for i in rows]
    assert float(multilabel_instancewise_map(v, y)) == pytest.approx(np.mean(refs), abs=1e-12)


def test_map_ranking_on_logits_avoids_sigmoid_ties():
    # sigmoid saturates to 1.0 in float32 for both logits, creating a spurious tie.
    v = torch.tensor([[30.0], [40.0]])
    y = torch.tensor([[0], [1]])
    assert torch.sigmoid(v)[0] == torch.sigmoid(v)[1]
    assert float(multilabel_classwise_map(v, y)) == 1.0


def test_map_streaming_equals_oneshot(generator):
    v, y = _ml_data(generator, n=57, ties=True)
    cw, iw = MultilabelClasswiseMAP(), MultilabelInstancewiseMAP()
    cuts = [0, 5, 6, 30, 57]
    for a, b in zip(cuts[:-1], cuts[1:], strict=True):
        cw.update(v[a:b], y[a:b])
        iw.update(v[a:b], y[a:b])
    assert torch.equal(cw.compute(), multilabel_classwise_map(v, y))
    assert float(iw.compute()) == pytest.approx(float(multilabel_instancewise_map(v, y)), abs=1e-14)


def test_map_bad_input():
    with pytest.raises(ValueError, match="0 and 1"):
        multilabel_classwise_map(torch.zeros(2, 2), torch.tensor([[0, 2], [1, 0]]))
    with pytest.raises(ValueError, match="shape"):
        multilabel_instancewise_map(torch.zeros(2, 2), torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="infinite"):
        multilabel_classwise_map(torch.tensor([[math.inf, 0.0]]), torch.tensor([[1, 0]]))
    assert torch.isnan(multilabel_instancewise_map(torch.zeros(2, 2), torch.zeros(2, 2)))


# ---------------------------------------------------------------- retrieval
def test_retrieval_score_reference_and_stability(generator):
    v = torch.randn(10, 5, generator=generator) * 5
    queries = [([0, 2], [1]), ([4], [0, 1, 3]), ([], [2])]
    s = retrieval_score(v, queries)
    eta = torch.sigmoid(v.double())
    for q, (p, n) in enumerate(queries):
        for i in range(10):
            prod = 1.0
            for j in p:
                prod *= float(eta[i, j])
            for k in n:
                prod *= 1 - float(eta[i, k])
            assert math.exp(float(s[i, q])) == pytest.approx(prod, rel=1e-9)
    # Probabilities through the explicit argument give the same scores.
    assert torch.allclose(retrieval_score(eta, queries, probs=True), s, atol=1e-9)
    # Huge logits: finite log-score (a product of float probabilities would underflow to 0).
    big = torch.tensor([[-200.0, 200.0]])
    out = retrieval_score(big, [([0], [1])])
    assert torch.isfinite(out).all() and float(out) == pytest.approx(-400.0)


def test_retrieval_relevance_and_map_reference(generator):
    v, y = _ml_data(generator, n=50, t=5)
    queries = make_queries(5, 1, 1) + make_queries(5, 2, 0)
    rel = retrieval_relevance(y, queries)
    s = retrieval_score(v, queries)
    aps = []
    for q, (p, n) in enumerate(queries):
        r = [all(y[i, j] for j in p) and not any(y[i, k] for k in n) for i in range(50)]
        assert rel[:, q].tolist() == r
        if any(r):
            ap = average_precision_score(np.array(r), s[:, q].numpy())
            aps.append(ap)
            assert ap == pytest.approx(ref_ap(s[:, q], r), abs=1e-12)
    assert float(retrieval_map(v, y, queries)) == pytest.approx(np.mean(aps), abs=1e-12)
    m = RetrievalMAP(queries)
    m.update(v[:20], y[:20])
    m.update(v[20:], y[20:])
    assert float(m.compute()) == pytest.approx(np.mean(aps), abs=1e-12)


def test_make_queries(generator):
    allq = make_queries(6, 2, 1)
    assert len(allq) == math.comb(6, 2) * 4 and len(set(allq)) == len(allq)
    sampled = make_queries(6, 2, 1, num_queries=10, generator=generator)
    assert len(set(sampled)) == 10 and set(sampled) <= set(allq)
    again = make_queries(6, 2, 1, num_queries=10, generator=torch.Generator().manual_seed(0))
    assert sampled == again
    with pytest.raises(ValueError):
        make_queries(3, 2, 2)
    with pytest.raises(ValueError, match="both in P and N"):
        retrieval_score(torch.zeros(1, 3), [([0], [0])])
    with pytest.raises(ValueError, match="probabilities"):
        retrieval_score(torch.tensor([[1.5, 0.0]]), [([0], [1])], probs=True)


def test_registered():
    for name in ("accuracy", "map_classwise", "map_instancewise", "retrieval_map"):
        assert name in METRICS


# ---------------------------------------------------------------- DDP
def _ddp_worker(rank, world_size, v, y):
    cw, iw, acc = MultilabelClasswiseMAP(), MultilabelInstancewiseMAP(), Accuracy()
    part = slice(rank, None, world_size)
    cw.update(v[part], y[part])
    iw.update(v[part], y[part])
    acc.update(v[part], y[part].argmax(1))
    return cw.compute(), iw.compute(), acc.compute()


@pytest.mark.ddp
def test_ddp_equals_single_process(generator):
    v, y = _ml_data(generator, n=31)
    y[:, 0] = 1 - y[:, 1]
    results = run_ddp(_ddp_worker, world_size=2, args=(v, y))
    one = (
        multilabel_classwise_map(v, y),
        multilabel_instancewise_map(v, y),
        accuracy(v, y.argmax(1)),
    )
    for res in results:
        for a, b in zip(res, one, strict=True):
            assert float(a) == pytest.approx(float(b), abs=1e-12)


def test_map_low_precision_and_huge_logits(generator):
    v, y = _ml_data(generator)
    for dt in (torch.float16, torch.bfloat16):
        low = v.to(dt)
        assert torch.equal(
            multilabel_classwise_map(low, y), multilabel_classwise_map(low.float(), y)
        )
        assert torch.equal(
            multilabel_instancewise_map(low, y), multilabel_instancewise_map(low.float(), y)
        )
    big = v * 1e30
    sk = average_precision_score(y.numpy(), big.numpy(), average=None)
    keep = y.any(0).numpy()
    assert float(multilabel_classwise_map(big, y)) == pytest.approx(sk[keep].mean(), abs=1e-12)
