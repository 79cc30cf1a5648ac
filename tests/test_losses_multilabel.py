"""Multi-label losses: identities, loop references, SPA properness, phi, LPR, TWL."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.optimize import minimize_scalar

from calibrant.losses import multilabel as ml
from calibrant.losses import spa as sp
from calibrant.registry import LOSSES

ML_NAMES = [
    "bce",
    "focal_binary",
    "asymmetric_focal",
    "asl",
    "twl",
    "spa",
    "lpr",
    "spa_lpr",
    "bce_lpr",
]
SPA_PARAM_SETS = [
    dict(zeta_pos=1.0, k_pos=1.0, b_pos=0.0, zeta_neg=5.0, k_neg=3.0, b_neg=1.0),
    dict(zeta_pos=1.0, k_pos=1.0, b_pos=0.0, zeta_neg=1.0, k_neg=1.0, b_neg=0.0),
    dict(zeta_pos=2.0, k_pos=0.5, b_pos=-1.0, zeta_neg=0.7, k_neg=2.0, b_neg=0.5),
    dict(zeta_pos=0.5, k_pos=3.0, b_pos=1.5, zeta_neg=4.0, k_neg=0.3, b_neg=-2.0),
]
ETAS = [0.05, 0.2, 0.5, 0.8, 0.95]


def _data(generator, shape=(4, 5), dtype=torch.float64, p_ignore=0.0):
    logits = torch.randn(shape, generator=generator, dtype=dtype) * 2
    target = (torch.rand(shape, generator=generator) < 0.4).long()
    if p_ignore:
        target[torch.rand(shape, generator=generator) < p_ignore] = -100
    return logits, target


def _sig(x):
    return 1.0 / (1.0 + math.exp(-x))


def _logsig(x):
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


# ---------------------------------------------------------------------------- BCE / focal / ASY


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_bce_equals_torch(generator, reduction):
    logits, target = _data(generator, (3, 4, 5))
    ours = ml.bce_loss(logits, target, reduction=reduction)
    ref = F.binary_cross_entropy_with_logits(logits, target.double(), reduction=reduction)
    torch.testing.assert_close(ours, ref)


def test_bce_ignores_entries(generator):
    logits, target = _data(generator, (6, 7), p_ignore=0.3)
    keep = target != -100
    ref = F.binary_cross_entropy_with_logits(logits[keep], target[keep].double())
    torch.testing.assert_close(ml.bce_loss(logits, target), ref)


def test_focal_gamma0_is_bce(generator):
    logits, target = _data(generator)
    bce = ml.bce_loss(logits, target)
    torch.testing.assert_close(ml.binary_focal_loss(logits, target, gamma=0.0), bce)
    torch.testing.assert_close(
        ml.asymmetric_focal_loss(logits, target, gamma_pos=0.0, gamma_neg=0.0), bce
    )


def test_asl_m0_gamma0_is_bce(generator):
    logits, target = _data(generator)
    ours = ml.asl_loss(logits, target, gamma_pos=0.0, gamma_neg=0.0, margin=0.0)
    torch.testing.assert_close(ours, ml.bce_loss(logits, target))


def _focal_ref(v, y, gp, gn, m=0.0, eps=0.0):
    """Loop reference of eqs. 7/8 on probabilities (METHODS §4.2, §4.3)."""
    out = np.zeros(v.shape)
    for idx in np.ndindex(v.shape):
        p = _sig(float(v[idx]))
        if y[idx] == 1:
            out[idx] = -((1 - p) ** gp) * math.log(max(p, eps))
        else:
            pm = max(p - m, 0.0)
            out[idx] = -(pm**gn) * math.log(max(1 - pm, eps))
    return out


def test_asymmetric_focal_reference(generator):
    logits, target = _data(generator)
    ours = ml.asymmetric_focal_loss(logits, target, gamma_pos=1.5, gamma_neg=3.0, reduction="none")
    ref = _focal_ref(logits.numpy(), target.numpy(), 1.5, 3.0)
    np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-10, atol=1e-12)


def test_binary_focal_reference_with_alpha(generator):
    logits, target = _data(generator)
    ours = ml.binary_focal_loss(logits, target, gamma=2.0, alpha=0.25, reduction="none")
    ref = _focal_ref(logits.numpy(), target.numpy(), 2.0, 2.0)
    ref = np.where(target.numpy() == 1, 0.25 * ref, 0.75 * ref)
    np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-10, atol=1e-12)


def test_asl_reference_defaults(generator):
    logits, target = _data(generator, (5, 6))
    ours = ml.asl_loss(logits, target, reduction="none")
    ref = _focal_ref(logits.numpy(), target.numpy(), 0.0, 4.0, m=0.05, eps=1e-8)
    np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-9, atol=1e-12)
    # the ASL code's sum convention is reduction="sum"
    torch.testing.assert_close(ml.asl_loss(logits, target, reduction="sum"), ours.sum())


def test_asl_clamp_keeps_extreme_logits_finite():
    logits = torch.tensor([[-60.0, 60.0]], requires_grad=True)
    loss = ml.asl_loss(logits, torch.tensor([[1, 0]]), margin=0.0, gamma_neg=0.0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()
    assert loss.item() == pytest.approx(-math.log(1e-8), rel=1e-5)


# ------------------------------------------------------------------------------------------ phi


def test_phi_identity_for_gamma0_m0():
    z = torch.linspace(0.001, 0.999, 101, dtype=torch.float64)
    torch.testing.assert_close(ml.phi_correct(z, gamma_neg=0.0, gamma_pos=0.0), z)


def _focal_partials(gp, gn, m):
    def pos(z):
        return -((1 - z) ** gp) * math.log(z)

    def neg(z):
        u = max(z - m, 0.0)
        return -(u**gn) * math.log(1 - u)

    return pos, neg


PHI_SETS = [(2.0, 2.0, 0.0), (4.0, 0.0, 0.05), (4.0, 1.0, 0.05), (1.0, 3.0, 0.0), (2.0, 1.0, 0.1)]


@pytest.mark.parametrize("gn,gp,m", PHI_SETS)
def test_phi_maps_focal_asy_risk_minimiser_to_eta(gn, gp, m):
    pos, neg = _focal_partials(gp, gn, m)
    for eta in ETAS:
        res = minimize_scalar(
            lambda z, eta=eta: eta * pos(z) + (1 - eta) * neg(z),
            bounds=(1e-9, 1 - 1e-9),
            method="bounded",
            options={"xatol": 1e-12},
        )
        z_star = torch.tensor(res.x, dtype=torch.float64)
        phi = ml.phi_correct(z_star, gamma_neg=gn, gamma_pos=gp, margin=m, eps=1e-12)
        assert phi.item() == pytest.approx(eta, abs=1e-4), (eta, res.x)
        if eta == 0.8:  # the raw focal/ASY output is miscalibrated: phi corrects something
            assert abs(res.x - eta) > 1e-2


def test_phi_margin_collapses_below_m():
    z = torch.tensor([0.01, 0.04, 0.2])
    out = ml.phi_correct(z, gamma_neg=4.0, gamma_pos=0.0, margin=0.05)
    assert out[0] == 0 and out[1] == 0 and out[2] > 0


# ------------------------------------------------------------------------------------------ SPA


def _spa_link_ref(v, zp, kp, bp, zn, kn, bn):
    a = (kn / zn) * _sig(kn * (v - bn))
    b = (kp / zp) * _sig(-kp * (v - bp))
    return a / (a + b)


def _poster_eq17_link(v, zp, kp, bp, zn, kn, bn):
    """The SPA poster's printed eq. 17 (sigma signs swapped): a transcription error."""
    a = (kn / zn) * _sig(-kn * (v - bn))
    b = (kp / zp) * _sig(kp * (v - bp))
    return a / (a + b)


def _spa_partials(zp, kp, bp, zn, kn, bn):
    def pos(v):
        return -_logsig(kp * (v - bp)) / zp

    def neg(v):
        return -_logsig(-kn * (v - bn)) / zn

    return pos, neg


def test_spa_link_is_sigmoid_at_unit_parameters():
    v = torch.linspace(-12, 12, 97, dtype=torch.float64)
    unit = dict(zeta_pos=1.0, k_pos=1.0, b_pos=0.0, zeta_neg=1.0, k_neg=1.0, b_neg=0.0)
    torch.testing.assert_close(sp.spa_probs(v, **unit), torch.sigmoid(v))
    torch.testing.assert_close(sp.spa_logit(v, **unit), v)


@pytest.mark.parametrize("params", SPA_PARAM_SETS)
def test_spa_link_matches_a_over_a_plus_b_and_increases(params):
    v = torch.linspace(-8, 8, 401, dtype=torch.float64)
    probs = sp.spa_probs(v, **params)
    ref = torch.tensor([_spa_link_ref(float(x), *params.values()) for x in v], dtype=torch.float64)
    torch.testing.assert_close(probs, ref)
    assert bool((probs.diff() > 0).all()), "SPA link must be strictly increasing"
    # the log-odds form is strictly increasing too, and stays finite far out
    z = sp.spa_logit(torch.linspace(-200, 200, 401, dtype=torch.float64), **params)
    assert torch.isfinite(z).all() and bool((z.diff() > 0).all())


@pytest.mark.parametrize("params", SPA_PARAM_SETS)
def test_spa_is_strictly_proper(params):
    pos, neg = _spa_partials(*params.values())
    for eta in ETAS:
        res = minimize_scalar(
            lambda v, eta=eta: eta * pos(v) + (1 - eta) * neg(v),
            bracket=(-5.0, 5.0),
            method="brent",
            tol=1e-12,
        )
        eta_hat = sp.spa_probs(torch.tensor(res.x, dtype=torch.float64), **params)
        assert eta_hat.item() == pytest.approx(eta, abs=1e-4), (eta, res.x)


def test_poster_eq17_link_is_decreasing_and_improper():
    params = SPA_PARAM_SETS[0]  # (1, 1, 0, 5, 3, 1)
    vs = np.linspace(-6, 6, 121)
    printed = np.array([_poster_eq17_link(v, *params.values()) for v in vs])
    assert (np.diff(printed) < 0).all(), "the printed eq. 17 is decreasing in v"
    pos, neg = _spa_partials(*params.values())
    res = minimize_scalar(lambda v: 0.95 * pos(v) + 0.05 * neg(v), bracket=(-5, 5), tol=1e-12)
    assert _poster_eq17_link(res.x, *params.values()) < 0.01  # METHODS §11: 0.0004, not 0.95
    assert sp.spa_probs(torch.tensor(res.x), **params).item() == pytest.approx(0.95, abs=1e-4)


def test_spa_loss_reference(generator):
    params = SPA_PARAM_SETS[2]
    logits, target = _data(generator)
    ours = sp.spa_loss(logits, target, **params, reduction="none")
    pos, neg = _spa_partials(*params.values())
    ref = np.zeros(logits.shape)
    for idx in np.ndindex(logits.shape):
        v = float(logits[idx])
        ref[idx] = pos(v) if target[idx] == 1 else neg(v)
    np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-10)
    # with (1,1,0) on both sides SPA is BCE
    unit = dict(zeta_pos=1.0, k_pos=1.0, b_pos=0.0, zeta_neg=1.0, k_neg=1.0, b_neg=0.0)
    torch.testing.assert_close(sp.spa_loss(logits, target, **unit), ml.bce_loss(logits, target))


def test_spa_module_probs():
    loss = LOSSES.build("spa")
    v = torch.linspace(-3, 3, 7)
    torch.testing.assert_close(loss.probs(v), sp.spa_probs(v, **sp.SPA_DEFAULTS))


# ------------------------------------------------------------------------------------------ LPR


def _lpr_ref(z, y):
    """Loop reference of eq. 19-20: pairs (t, t') with y_t=1, y_t'=0, normaliser 2/(T(T-1))."""
    out = []
    for b in range(z.shape[0]):
        keep = [t for t in range(z.shape[1]) if y[b, t] != -100]
        n = len(keep)
        if n < 2:
            out.append(0.0)
            continue
        total = 0.0
        for t in keep:
            for u in keep:
                if t != u and y[b, t] == 1 and y[b, u] == 0:
                    eta_t, eta_u = _sig(z[b, t]), _sig(z[b, u])
                    beta = eta_t * (1 - eta_u) / (eta_t * (1 - eta_u) + eta_u * (1 - eta_t))
                    total += -math.log(beta)
        out.append(2.0 * total / (n * (n - 1)))
    return np.array(out)


def test_lpr_sigmoid_equals_pairwise_reference(generator):
    logits, target = _data(generator, (6, 7))
    ours = sp.lpr_loss(logits, target, reduction="none")
    ref = _lpr_ref(logits.numpy(), target.numpy())
    np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-9)
    torch.testing.assert_close(sp.lpr_loss(logits, target), torch.tensor(ref.mean()).double())


def test_lpr_sigmoid_is_pairwise_logistic_ranking(generator):
    logits, target = _data(generator, (5, 6))
    v, y = logits.numpy(), target.numpy()
    t = v.shape[1]
    ref = []
    for b in range(v.shape[0]):
        s = sum(
            math.log1p(math.exp(-(v[b, i] - v[b, j])))
            for i in range(t)
            for j in range(t)
            if y[b, i] == 1 and y[b, j] == 0
        )
        ref.append(2 * s / (t * (t - 1)))
    np.testing.assert_allclose(sp.lpr_loss(logits, target, reduction="none").numpy(), ref)


def test_lpr_spa_link_and_ignore_reference(generator):
    params = SPA_PARAM_SETS[0]
    logits, target = _data(generator, (6, 7), p_ignore=0.25)
    ours = sp.lpr_loss(logits, target, link="spa", link_params=params, reduction="none")
    z = sp.spa_logit(logits, **params).numpy()
    np.testing.assert_allclose(ours.numpy(), _lpr_ref(z, target.numpy()), rtol=1e-9)
    # a callable link is used as given
    same = sp.lpr_loss(logits, target, link=lambda v: sp.spa_logit(v, **params), reduction="none")
    torch.testing.assert_close(same, ours)


def test_lpr_stable_for_large_logits():
    logits = torch.tensor([[-80.0, 80.0, 0.0]], requires_grad=True)
    loss = sp.lpr_loss(logits, torch.tensor([[1, 0, 0]]), link="spa")
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()


def test_spa_lpr_is_eq21(generator):
    logits, target = _data(generator, (5, 6))
    lam = 0.3
    loss = LOSSES.build("spa_lpr", lam=lam)
    per_sample = sp.spa_loss(logits, target, reduction="none").mean(1)
    lpr = sp.lpr_loss(logits, target, link="spa", link_params=sp.SPA_DEFAULTS, reduction="none")
    expected = per_sample + lam * lpr
    torch.testing.assert_close(loss(logits, target), expected.mean())
    torch.testing.assert_close(
        LOSSES.build("spa_lpr", reduction="none")(logits, target), per_sample + lpr
    )
    assert set(loss.terms(logits, target)) == {"task", "lpr"}
    bce_lpr = LOSSES.build("bce_lpr", lam=lam)
    expected = ml.bce_loss(logits, target, reduction="none").mean(1) + lam * sp.lpr_loss(
        logits, target, reduction="none"
    )
    torch.testing.assert_close(bce_lpr(logits, target), expected.mean())


# ------------------------------------------------------------------------------------------ TWL


def _twl_ref(x, y, tp=4.0, tn=1.0):
    """Direct re-derivation of METHODS §4.4: -100 added inside each log-sum-exp for exclusions."""

    def lse(values):
        m = max(values)
        return m + math.log(sum(math.exp(a - m) for a in values))

    def softplus(a):
        return max(a, 0.0) + math.log1p(math.exp(-abs(a)))

    def term(rows):  # rows: list of (logits, labels) pairs along the reduced axis
        vals = []
        for xs, ys in rows:
            if not any(v == 1 for v in ys):
                continue
            pairs = list(zip(xs, ys, strict=True))
            p = tp * lse([-a / tp + (0.0 if v == 1 else -100.0) for a, v in pairs])
            n = tn * lse([a / tn + (0.0 if v == 0 else -100.0) for a, v in pairs])
            vals.append(softplus(n + p))
        return sum(vals) / len(vals) if vals else 0.0

    classes = [(x[:, t], y[:, t]) for t in range(x.shape[1])]
    samples = [(x[i], y[i]) for i in range(x.shape[0])]
    return term(classes) + term(samples)


@pytest.mark.parametrize("tp,tn", [(4.0, 1.0), (2.0, 0.5)])
def test_twl_reference(generator, tp, tn):
    logits, target = _data(generator, (6, 5))
    target[:, 2] = 0  # a class without positives
    target[3] = 0  # a sample without positives
    target[:, 4] = 1  # a class without negatives (-100 mask keeps it finite)
    ours = ml.twl_loss(logits, target, t_pos=tp, t_neg=tn)
    ref = _twl_ref(logits.numpy(), target.numpy(), tp, tn)
    assert ours.item() == pytest.approx(ref, rel=1e-10)


def test_twl_spatial_folds_into_batch(generator):
    logits, target = _data(generator, (2, 3, 4))
    flat_logits = logits.movedim(1, -1).reshape(-1, 3)
    flat_target = target.movedim(1, -1).reshape(-1, 3)
    torch.testing.assert_close(ml.twl_loss(logits, target), ml.twl_loss(flat_logits, flat_target))


# ------------------------------------------------------------------ contract checks (own losses)


@pytest.mark.parametrize("name", ML_NAMES)
def test_registered_meta_and_defaults(name):
    meta = LOSSES.meta(name)
    assert meta["task"] == "multilabel"
    assert meta["granularity"] in {"element", "sample", "batch"}
    loss = LOSSES.build(name)
    assert isinstance(loss, torch.nn.Module)
    LOSSES.build(name, reduction="sum", ignore_index=-1)


@pytest.mark.parametrize("name", ML_NAMES)
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_output_shapes(generator, name, reduction):
    logits, target = _data(generator, (3, 4), dtype=torch.float32)
    out = LOSSES.build(name, reduction=reduction)(logits, target)
    gran = LOSSES.meta(name)["granularity"]
    if reduction != "none" or gran == "batch":
        assert out.shape == ()
    elif gran == "sample":
        assert out.shape == (3,)
    else:
        assert out.shape == target.shape


@pytest.mark.parametrize("name", ML_NAMES)
def test_ignored_entries_do_not_matter(generator, name):
    logits, target = _data(generator, (5, 6), p_ignore=0.3)
    ignored = target == -100
    loss = LOSSES.build(name)
    a = logits.clone().requires_grad_(True)
    value = loss(a, target)
    value.backward()
    assert bool((a.grad[ignored] == 0).all())
    b = torch.where(ignored, torch.randn(a.shape, generator=generator, dtype=a.dtype) * 50, logits)
    torch.testing.assert_close(loss(b, target), value.detach())


@pytest.mark.parametrize("name", ML_NAMES)
def test_gradcheck(generator, name):
    logits, target = _data(generator, (3, 4))
    logits.requires_grad_(True)
    loss = LOSSES.build(name)
    assert torch.autograd.gradcheck(lambda v: loss(v, target), (logits,))


def test_gradcheck_link_and_phi(generator):
    v = torch.randn(6, generator=generator, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: sp.spa_probs(x, **SPA_PARAM_SETS[2]), (v,))
    z = torch.rand(6, generator=generator, dtype=torch.float64).mul(0.8).add(0.1)
    z.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda x: ml.phi_correct(x, gamma_neg=4.0, gamma_pos=1.0, margin=0.05), (z,)
    )


@pytest.mark.parametrize("name", ML_NAMES)
def test_bad_inputs(name):
    loss = LOSSES.build(name)
    logits, target = torch.zeros(2, 3), torch.ones(2, 3, dtype=torch.long)
    with pytest.raises(ValueError, match="shape"):
        loss(logits, torch.ones(2, 4))
    with pytest.raises(ValueError, match="only 0, 1"):
        loss(logits, target * 2)
    with pytest.raises(ValueError, match="NaN"):
        loss(torch.full((2, 3), float("nan")), target)


@pytest.mark.parametrize("name", ML_NAMES)
def test_autocast_bf16_finite_float32(generator, name):
    logits, target = _data(generator, (4, 5), dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = LOSSES.build(name)(logits.bfloat16(), target)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_bad_hyper_parameters():
    with pytest.raises(ValueError, match="margin"):
        ml.ASLLoss(margin=1.5)
    with pytest.raises(ValueError, match="zeta_neg"):
        sp.spa_logit(torch.zeros(2), zeta_neg=0.0)
    with pytest.raises(ValueError, match="link"):
        sp.lpr_loss(torch.zeros(2, 3), torch.ones(2, 3), link="probit")
    with pytest.raises(ValueError, match="reduction"):
        ml.BCELoss(reduction="avg")


@pytest.mark.parametrize("alpha", [None, 0.25])
def test_binary_focal_equals_monai(generator, alpha):
    import monai.losses as monai_losses  # a test dependency: missing means failure

    logits, target = _data(generator, (3, 4, 5))
    peer = monai_losses.FocalLoss(gamma=2.0, alpha=alpha, use_softmax=False, reduction="mean")
    ours = ml.binary_focal_loss(logits, target, gamma=2.0, alpha=alpha)
    # MONAI returns float32 here; compare at float32 precision
    torch.testing.assert_close(ours.float(), peer(logits, target.double()).float())
