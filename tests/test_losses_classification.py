"""CE, LS, focal, ECP and MbLS against loop re-derivations of METHODS §2.1-2.5 and identities."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from calibrant.losses.classification import (
    FLSD53,
    confidence_penalty,
    cross_entropy_loss,
    focal_loss,
    label_smoothing_loss,
    logit_margin_penalty,
)
from calibrant.registry import LOSSES


def _rows(logits, target):
    """(N, K) python lists of logits and labels of every element (the flattening convention)."""
    k = logits.shape[1]
    return logits.movedim(1, -1).reshape(-1, k).tolist(), target.reshape(-1).tolist()


def _softmax(row):
    m = max(row)
    e = [math.exp(v - m) for v in row]
    z = sum(e)
    return [v / z for v in e]


def _ref(logits, target, per_row, ignore_index=-100):
    """Mean over valid rows of ``per_row(logit_row, label)``."""
    rows, labels = _rows(logits, target)
    vals = [per_row(r, y) for r, y in zip(rows, labels, strict=True) if y != ignore_index]
    return sum(vals) / len(vals)


@pytest.fixture
def data(generator):
    logits = 3 * torch.randn(3, 4, 5, 6, generator=generator, dtype=torch.float64)
    target = torch.randint(0, 4, (3, 5, 6), generator=generator)
    target[0, 0, :3] = -100
    return logits, target


def test_ce_and_ls_match_loops_and_torch(data):
    logits, target = data
    for eps in (0.0, 0.1, 0.3):

        def row(r, y, eps=eps):
            s = _softmax(r)
            return (1 - eps) * -math.log(s[y]) + eps / len(r) * sum(-math.log(v) for v in s)

        got = label_smoothing_loss(logits, target, smoothing=eps)
        assert got.item() == pytest.approx(_ref(logits, target, row), rel=1e-9)
        torch.testing.assert_close(got, F.cross_entropy(logits, target, label_smoothing=eps))
    torch.testing.assert_close(
        label_smoothing_loss(logits, target, smoothing=0.0), cross_entropy_loss(logits, target)
    )


def test_focal_matches_loops_and_gamma0_is_ce(data):
    logits, target = data
    for gamma in (0.0, 1.0, 3.0):

        def row(r, y, gamma=gamma):
            p = _softmax(r)[y]
            return -((1 - p) ** gamma) * math.log(p)

        got = focal_loss(logits, target, gamma=gamma)
        assert got.item() == pytest.approx(_ref(logits, target, row), rel=1e-9)
    torch.testing.assert_close(
        focal_loss(logits, target, gamma=0.0), F.cross_entropy(logits, target)
    )


def test_focal_adaptive_flsd53(data):
    logits, target = data

    def row(r, y):
        p = _softmax(r)[y]
        gamma = 5.0 if p < 0.2 else 3.0  # Mukhoti et al. FLSD-53
        return -((1 - p) ** gamma) * math.log(p)

    got = focal_loss(logits, target, gamma_schedule=FLSD53)
    assert got.item() == pytest.approx(_ref(logits, target, row), rel=1e-9)
    torch.testing.assert_close(LOSSES.build("focal_adaptive")(logits, target), got)


def test_ecp_official_form(data):
    logits, target = data
    k = logits.shape[1]

    def row(r, y):
        s = [min(max(v, 1e-10), 1 - 1e-10) for v in _softmax(r)]  # the code's clamp
        return -math.log(_softmax(r)[y]) - 0.1 * sum(-v * math.log(v) for v in s) / k

    got = LOSSES.build("ecp")(logits, target)
    assert got.item() == pytest.approx(_ref(logits, target, row), rel=1e-7)
    # sum over classes = mean * K
    torch.testing.assert_close(
        confidence_penalty(logits, target, class_reduction="sum"),
        k * confidence_penalty(logits, target),
    )


@pytest.mark.parametrize("norm", ["l1", "l2", "legacy_l2"])
def test_margin_penalty_matches_loops(data, norm):
    logits, target = data
    k, m = logits.shape[1], 2.0
    phi = {
        "l1": lambda z: max(0.0, z),
        "l2": lambda z: max(0.0, z) ** 2,
        "legacy_l2": lambda z: z**2,
    }[norm]

    def row(r, y):
        return sum(phi(max(r) - v - m) for v in r) / k

    got = logit_margin_penalty(logits, target, margin=m, norm=norm)
    assert got.item() == pytest.approx(_ref(logits, target, row), rel=1e-9)
    got_sum = logit_margin_penalty(logits, target, margin=m, norm=norm, class_reduction="sum")
    torch.testing.assert_close(got_sum, k * got)
    # gradient against autograd of the plain expression
    x = logits.clone().requires_grad_()
    logit_margin_penalty(x, target, margin=m, norm=norm).backward()
    y = logits.clone().requires_grad_()
    d = y.amax(1, keepdim=True) - y - m
    plain = {"l1": d.clamp_min(0), "l2": d.clamp_min(0) ** 2, "legacy_l2": d**2}[norm]
    valid = (target != -100).unsqueeze(1)
    ((plain * valid).sum() / k / valid.sum()).backward()
    torch.testing.assert_close(x.grad, y.grad)


def _plain_margin(x, m, norm):
    d = x.amax(1, keepdim=True) - m - x
    return {"l1": torch.relu(d), "l2": torch.relu(d) ** 2, "legacy_l2": d**2}[norm].sum(1)


@pytest.mark.parametrize("norm", ["l1", "l2", "legacy_l2"])
@pytest.mark.parametrize(
    "shape",
    [(3, 4, 5, 6), (2, 14, 7, 6, 5), (5, 3), (1, 2, 140_000), (7, 4, 130, 200)],
    ids=["2d", "3d_many_classes", "no_spatial", "chunked_positions", "chunked_batch"],
)
def test_fused_margin_equals_autograd_of_plain_expression(norm, shape, generator):
    from calibrant.losses.classification import _MarginPenalty

    x = (5 * torch.randn(shape, generator=generator, dtype=torch.float64)).requires_grad_()
    g = torch.randn((shape[0], *shape[2:]), generator=generator, dtype=torch.float64)
    got = _MarginPenalty.apply(x, 3.0, norm)
    (got_grad,) = torch.autograd.grad(got, x, g)
    want = _plain_margin(x, 3.0, norm)
    (want_grad,) = torch.autograd.grad(want, x, g)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(got_grad, want_grad)


@pytest.mark.parametrize("norm", ["l1", "l2", "legacy_l2"])
def test_fused_margin_ties_split_like_amax(norm):
    from calibrant.losses.classification import _MarginPenalty

    x = torch.tensor(
        [[5.0, 5.0, 0.0, 1.0], [2.0, 2.0, 2.0, -9.0], [0.0, 0.0, 0.0, 0.0]],
        dtype=torch.float64,
        requires_grad=True,
    )
    (got,) = torch.autograd.grad(_MarginPenalty.apply(x, 3.0, norm).sum(), x)
    (want,) = torch.autograd.grad(_plain_margin(x, 3.0, norm).sum(), x)
    torch.testing.assert_close(got, want)
    if norm == "l1":  # the two hinges active in row 0 push both tied maxima up by 1/2 each
        assert got[0].tolist() == [1.0, 1.0, -1.0, -1.0]


@pytest.mark.parametrize("norm", ["l1", "l2", "legacy_l2"])
def test_fused_margin_gradcheck(norm, generator):
    from calibrant.losses.classification import _MarginPenalty

    x = (3 * torch.randn(2, 4, 3, 3, generator=generator, dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: _MarginPenalty.apply(t, 0.5, norm), (x,))


def test_mbls_is_ce_plus_penalty_and_lambda0_is_ce(data):
    logits, target = data
    mbls = LOSSES.build("mbls")
    want = F.cross_entropy(logits, target) + 0.1 * logit_margin_penalty(logits, target)
    torch.testing.assert_close(mbls(logits, target), want)
    assert mbls.parts["margin"].margin == 10.0
    torch.testing.assert_close(
        LOSSES.build("mbls", weight=0.0)(logits, target), F.cross_entropy(logits, target)
    )


def test_legacy_l2_is_two_sided():
    # METHODS §11: ReLU((d-m)^2) gives 100, 25, 0, 25, 100 at d = 0, 5, 10, 15, 20 (m = 10).
    want = [100.0, 25.0, 0.0, 25.0, 100.0]
    one_sided = [0.0, 0.0, 0.0, 25.0, 100.0]
    for d, w, o in zip([0.0, 5.0, 10.0, 15.0, 20.0], want, one_sided, strict=True):
        logits = torch.tensor([[d, 0.0]])  # class 1 sits at distance d, class 0 at 0
        target = torch.tensor([0])
        legacy = logit_margin_penalty(logits, target, norm="legacy_l2", class_reduction="sum")
        hinge = logit_margin_penalty(logits, target, norm="l2", class_reduction="sum")
        # the arg-max column adds (0 - m)^2 = 100 to the two-sided form only
        assert legacy.item() == pytest.approx(w + 100.0)
        assert hinge.item() == pytest.approx(o)


def test_bad_hyperparameters():
    logits, target = torch.zeros(2, 3), torch.tensor([0, 1])
    with pytest.raises(ValueError, match="norm"):
        logit_margin_penalty(logits, target, norm="l3")
    with pytest.raises(ValueError, match="class_reduction"):
        confidence_penalty(logits, target, class_reduction="avg")
    with pytest.raises(ValueError, match="smoothing"):
        label_smoothing_loss(logits, target, smoothing=1.5)
    with pytest.raises(ValueError, match="gamma"):
        focal_loss(logits, target, gamma=-1.0)
