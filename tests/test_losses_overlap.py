"""Overlap losses and ALL: loop references (METHODS §5.1), MONAI parity, ALL identities."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from calibrant.losses import logarithmic as lg
from calibrant.losses import multilabel as ml
from calibrant.losses import overlap as ov
from calibrant.registry import LOSSES

BASES = ["dice", "jaccard", "tversky", "focal_tversky", "combo", "all"]
NAMES = BASES + [f"{n}_softmax" for n in BASES]
FUNCS = {
    "dice": ov.dice_loss,
    "jaccard": ov.jaccard_loss,
    "tversky": ov.tversky_loss,
    "focal_tversky": ov.focal_tversky_loss,
}


def _sigmoid_data(generator, shape=(3, 1, 5, 4), dtype=torch.float64, p_ignore=0.0):
    logits = torch.randn(shape, generator=generator, dtype=dtype) * 2
    target = (torch.rand(shape, generator=generator) < 0.4).long()
    if p_ignore:
        target[torch.rand(shape, generator=generator) < p_ignore] = -100
    return logits, target


def _softmax_data(generator, b=3, c=4, spatial=(5, 4), dtype=torch.float64, p_ignore=0.0):
    logits = torch.randn((b, c, *spatial), generator=generator, dtype=dtype) * 2
    target = torch.randint(0, c, (b, *spatial), generator=generator)
    if p_ignore:
        target[torch.rand(target.shape, generator=generator) < p_ignore] = -100
    return logits, target


def _data_for(name, generator, **kw):
    if name.endswith("_softmax"):
        return _softmax_data(generator, **kw)
    return _sigmoid_data(generator, **kw)


# ---------------------------------------------------------------- slow references (loops)


def _prob_arrays(logits, target, activation, include_background=True):
    """(p, g, w) as float64 numpy arrays (B, C, N), computed element by element."""
    x = logits.detach().double().numpy().reshape(logits.shape[0], logits.shape[1], -1)
    b, c, n = x.shape
    p, g, w = np.zeros_like(x), np.zeros_like(x), np.zeros_like(x)
    if activation == "sigmoid":
        y = target.numpy().reshape(b, c, n)
        for i, k, j in np.ndindex(b, c, n):
            p[i, k, j] = 1 / (1 + math.exp(-x[i, k, j]))
            w[i, k, j] = float(y[i, k, j] != -100)
            g[i, k, j] = float(y[i, k, j] == 1)
    else:
        y = target.numpy().reshape(b, n)
        for i, j in np.ndindex(b, n):
            e = [math.exp(x[i, k, j]) for k in range(c)]
            for k in range(c):
                p[i, k, j] = e[k] / sum(e)
                w[i, k, j] = float(y[i, j] != -100)
                g[i, k, j] = float(y[i, j] == k)
        if not include_background:
            p, g, w = p[:, 1:], g[:, 1:], w[:, 1:]
    return p, g, w


def _index_ref(kind, p, g, w, s=1.0, alpha=0.7):
    """One overlap index from soft counts written out as in METHODS §5.1."""
    inter = sum(gi * pi * wi for gi, pi, wi in zip(g, p, w, strict=True))
    size_g = sum(gi * wi for gi, wi in zip(g, w, strict=True))
    size_p = sum(pi * wi for pi, wi in zip(p, w, strict=True))
    fn = sum(gi * (1 - pi) * wi for gi, pi, wi in zip(g, p, w, strict=True))
    fp = sum((1 - gi) * pi * wi for gi, pi, wi in zip(g, p, w, strict=True))
    if kind == "dice":
        return (2 * inter + s) / (size_g + size_p + s)
    if kind == "jaccard":
        return (inter + s) / (size_g + size_p - inter + s)
    return (inter + s) / (inter + alpha * fn + (1 - alpha) * fp + s)  # tversky / focal


def _loss_ref(kind, p, g, w, per_sample, s=1.0, alpha=0.7, exponent=0.75, cls_red="sum"):
    """Σ_c (1 − M_c) over the whole batch, or its mean over samples (per_sample)."""
    b, c, _ = p.shape
    groups = [list(range(b))] if not per_sample else [[i] for i in range(b)]
    values = []
    for samples in groups:
        per_class = []
        for k in range(c):
            pk = [p[i, k, j] for i in samples for j in range(p.shape[2])]
            gk = [g[i, k, j] for i in samples for j in range(p.shape[2])]
            wk = [w[i, k, j] for i in samples for j in range(p.shape[2])]
            loss = 1 - _index_ref(kind, pk, gk, wk, s, alpha)
            per_class.append(loss**exponent if kind == "focal_tversky" else loss)
        values.append(sum(per_class) if cls_red == "sum" else sum(per_class) / c)
    return values


def _combo_ref(p, g, w, alpha=0.5, beta=0.5, s=1.0):
    b, c, n = p.shape
    total, count = 0.0, 0.0
    for i, k, j in np.ndindex(b, c, n):
        if w[i, k, j]:
            total += -(
                beta * g[i, k, j] * math.log(p[i, k, j])
                + (1 - beta) * (1 - g[i, k, j]) * math.log(1 - p[i, k, j])
            )
            count += 1
    dice = sum(
        _index_ref(
            "dice",
            p[:, k].ravel().tolist(),
            g[:, k].ravel().tolist(),
            w[:, k].ravel().tolist(),
            s,
        )
        for k in range(c)
    )
    return alpha * total / count - (1 - alpha) * dice


# ---------------------------------------------------------------------- references


@pytest.mark.parametrize("kind", list(FUNCS))
@pytest.mark.parametrize("per_sample", [False, True])
def test_sigmoid_binary_equals_loop_reference(generator, kind, per_sample):
    logits, target = _sigmoid_data(generator, p_ignore=0.2)
    p, g, w = _prob_arrays(logits, target, "sigmoid")
    ref = _loss_ref(kind, p, g, w, per_sample)
    out = FUNCS[kind](logits, target, per_sample=per_sample, reduction="none")
    np.testing.assert_allclose(np.atleast_1d(out.numpy()), ref, rtol=1e-10)


@pytest.mark.parametrize("kind", list(FUNCS))
def test_sigmoid_multilabel_sums_over_classes(generator, kind):
    logits, target = _sigmoid_data(generator, shape=(2, 3, 4, 4))
    p, g, w = _prob_arrays(logits, target, "sigmoid")
    out = FUNCS[kind](logits, target)
    assert out.item() == pytest.approx(_loss_ref(kind, p, g, w, False)[0], rel=1e-10)
    mean = FUNCS[kind](logits, target, class_reduction="mean")
    assert mean.item() == pytest.approx(out.item() / 3, rel=1e-10)


@pytest.mark.parametrize("kind", list(FUNCS))
@pytest.mark.parametrize("include_background", [True, False])
def test_softmax_equals_loop_reference(generator, kind, include_background):
    logits, target = _softmax_data(generator, p_ignore=0.15)
    p, g, w = _prob_arrays(logits, target, "softmax", include_background)
    ref = _loss_ref(kind, p, g, w, False)
    out = FUNCS[kind](logits, target, activation="softmax", include_background=include_background)
    assert out.item() == pytest.approx(ref[0], rel=1e-10)
    ref_ps = _loss_ref(kind, p, g, w, True, cls_red="mean")
    out_ps = FUNCS[kind](
        logits,
        target,
        activation="softmax",
        include_background=include_background,
        per_sample=True,
        class_reduction="mean",
        reduction="none",
    )
    np.testing.assert_allclose(out_ps.numpy(), ref_ps, rtol=1e-10)


def test_tversky_alpha_half_is_dice(generator):
    logits, target = _sigmoid_data(generator)
    dice = ov.dice_loss(logits, target, smooth=0.0)
    tversky = ov.tversky_loss(logits, target, alpha=0.5, smooth=0.0)
    torch.testing.assert_close(tversky, dice)
    ftl = ov.focal_tversky_loss(logits, target, exponent=1.0)
    torch.testing.assert_close(ftl, ov.tversky_loss(logits, target))


def test_combo_hand_computed():
    # p = 0.5 everywhere, g = (1, 0): TP = FP = FN = 0.5, DI = (1 + 1) / (1 + 1 + 1) = 2/3,
    # wBCE = -(0.5 log 0.5 + 0.5 log 0.5) / 2 = log(2) / 2, CL = 0.5 wBCE - 0.5 DI.
    logits, target = torch.zeros(1, 1, 2), torch.tensor([[[1, 0]]])
    expected = 0.5 * math.log(2) / 2 - 0.5 * 2 / 3
    assert ov.combo_loss(logits, target).item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("activation", ["sigmoid", "softmax"])
def test_combo_loop_reference(generator, activation):
    if activation == "sigmoid":
        logits, target = _sigmoid_data(generator, shape=(2, 2, 4, 3), p_ignore=0.2)
    else:
        logits, target = _softmax_data(generator, p_ignore=0.2)
    p, g, w = _prob_arrays(logits, target, activation)
    ref = _combo_ref(p, g, w, alpha=0.3, beta=0.7)
    out = ov.combo_loss(logits, target, activation=activation, alpha=0.3, beta=0.7)
    assert out.item() == pytest.approx(ref, rel=1e-9)


# ------------------------------------------------------------------------- MONAI parity


def test_monai_parity_sigmoid_and_softmax(generator):
    import monai.losses as monai_losses  # a test dependency: missing means failure

    logits, target = _sigmoid_data(generator, shape=(3, 2, 6, 5))
    tf = target.double()
    for batch in (True, False):
        kw = dict(sigmoid=True, batch=batch, smooth_nr=1.0, smooth_dr=1.0)
        ours = dict(class_reduction="mean", per_sample=not batch)
        torch.testing.assert_close(
            ov.dice_loss(logits, target, **ours), monai_losses.DiceLoss(**kw)(logits, tf)
        )
        torch.testing.assert_close(
            ov.tversky_loss(logits, target, **ours),
            monai_losses.TverskyLoss(alpha=0.3, beta=0.7, **kw)(logits, tf),
        )
        # MONAI's Jaccard writes (2 TP + s)/(2 (TP + FP + FN) + s): ours with s equals MONAI 2s
        kw2 = dict(kw, smooth_nr=2.0, smooth_dr=2.0)
        torch.testing.assert_close(
            ov.jaccard_loss(logits, target, **ours),
            monai_losses.DiceLoss(jaccard=True, **kw2)(logits, tf),
        )
    logits, target = _softmax_data(generator)
    for include_background in (True, False):
        peer = monai_losses.DiceLoss(
            softmax=True,
            to_onehot_y=True,
            include_background=include_background,
            batch=True,
            smooth_nr=1.0,
            smooth_dr=1.0,
        )(logits, target.unsqueeze(1))
        ours = ov.dice_loss(
            logits,
            target,
            activation="softmax",
            include_background=include_background,
            class_reduction="mean",
        )
        torch.testing.assert_close(ours, peer)


# -------------------------------------------------------------------------------- ALL


def test_all_constants_continuity_and_slope_jump():
    gamma, omega, eps = 0.1, 10.0, 0.5
    c = gamma - omega * math.log1p(gamma / eps)
    assert c == pytest.approx(-1.7232, abs=1e-4)
    at = lg.adaptive_log(torch.tensor(gamma, dtype=torch.float64))
    assert at.item() == pytest.approx(1.8232, abs=1e-4)
    d = 1e-9
    left = lg.adaptive_log(torch.tensor(gamma - d, dtype=torch.float64))
    right = lg.adaptive_log(torch.tensor(gamma + d, dtype=torch.float64))
    assert left.item() == pytest.approx(at.item(), abs=1e-7)  # value-continuous ...
    assert right.item() == pytest.approx(at.item(), abs=1e-7)

    def slope(v):
        x = torch.tensor(v, dtype=torch.float64, requires_grad=True)
        lg.adaptive_log(x).backward()
        return x.grad.item()

    # ... but the slope jumps: ω/(ε+γ) = 16.67 on the left, 1 on the right (not C¹ at γ,
    # contrary to the paper's "smooth" claim); ω/ε = 20 at 0.
    assert slope(gamma - d) == pytest.approx(omega / (eps + gamma), rel=1e-6)
    assert slope(gamma + d) == pytest.approx(1.0)
    assert slope(1e-12) == pytest.approx(omega / eps, rel=1e-6)
    # elementwise on any shape, and piecewise formula on both branches
    v = torch.tensor([0.0, 0.05, 0.3, 0.9], dtype=torch.float64)
    expected = [omega * math.log1p(0.0), omega * math.log1p(0.1), 0.3 - c, 0.9 - c]
    np.testing.assert_allclose(lg.adaptive_log(v).numpy(), expected, rtol=1e-12)


def test_all_wraps_any_scalar_loss(generator):
    x = torch.randn(4, 3, generator=generator)
    y = torch.randn(4, 3, generator=generator)
    wrapped = lg.AdaptiveLogLoss(nn.MSELoss(), gamma=0.2, omega=6.0, epsilon=1.0)
    expected = lg.adaptive_log(nn.MSELoss()(x, y), gamma=0.2, omega=6.0, epsilon=1.0)
    torch.testing.assert_close(wrapped(x, y), expected)
    logits, target = _sigmoid_data(generator, shape=(4, 3))
    per_sample = lg.AdaptiveLogLoss(ml.BCELoss(reduction="none"), reduction="mean")
    expected = lg.adaptive_log(ml.bce_loss(logits, target, reduction="none")).mean()
    torch.testing.assert_close(per_sample(logits, target), expected)


def test_registered_all_is_all_of_batch_dice(generator):
    logits, target = _sigmoid_data(generator)
    dl = ov.dice_loss(logits, target)
    torch.testing.assert_close(LOSSES.build("all")(logits, target), lg.adaptive_log(dl))
    torch.testing.assert_close(lg.adaptive_log_dice_loss(logits, target), lg.adaptive_log(dl))
    logits, target = _softmax_data(generator)
    dl = ov.dice_loss(logits, target, activation="softmax")
    torch.testing.assert_close(LOSSES.build("all_softmax")(logits, target), lg.adaptive_log(dl))


# ------------------------------------------------------------------ contract checks


@pytest.mark.parametrize("name", NAMES)
def test_registry_meta_and_defaults(name):
    meta = LOSSES.meta(name)
    assert meta["task"] == ("multiclass" if name.endswith("_softmax") else "multilabel")
    assert meta["granularity"] == "batch" and meta["spatial"] is False
    assert isinstance(LOSSES.build(name), nn.Module)
    LOSSES.build(name, reduction="sum", ignore_index=255)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_shapes(generator, name, reduction):
    logits, target = _data_for(name, generator, dtype=torch.float32)
    assert LOSSES.build(name, reduction=reduction)(logits, target).shape == ()
    if name.startswith("all"):
        return
    per = LOSSES.build(name, reduction=reduction, per_sample=True)(logits, target)
    assert per.shape == ((3,) if reduction == "none" else ())
    # classification shapes (no spatial dims) work too
    logits2 = logits[..., 0, 0]
    target2 = target[..., 0, 0] if not name.endswith("_softmax") else target[:, 0, 0]
    assert LOSSES.build(name, reduction=reduction)(logits2, target2).shape == ()


def test_per_sample_mean_is_mean_of_samples(generator):
    logits, target = _sigmoid_data(generator)
    none = ov.dice_loss(logits, target, per_sample=True, reduction="none")
    torch.testing.assert_close(ov.dice_loss(logits, target, per_sample=True), none.mean())
    torch.testing.assert_close(
        ov.dice_loss(logits, target, per_sample=True, reduction="sum"), none.sum()
    )


@pytest.mark.parametrize("name", NAMES)
def test_ignored_entries_do_not_matter(generator, name):
    logits, target = _data_for(name, generator, p_ignore=0.3)
    ignored = target == -100
    if name.endswith("_softmax"):
        ignored = ignored.unsqueeze(1).expand_as(logits)
    loss = LOSSES.build(name)
    a = logits.clone().requires_grad_(True)
    value = loss(a, target)
    value.backward()
    assert bool((a.grad[ignored] == 0).all())
    noise = torch.randn(a.shape, generator=generator, dtype=a.dtype) * 50
    torch.testing.assert_close(loss(torch.where(ignored, noise, logits), target), value.detach())


@pytest.mark.parametrize("name", NAMES)
def test_gradcheck(generator, name):
    logits, target = (
        _softmax_data(generator, b=2, c=3, spatial=(2, 2))
        if name.endswith("_softmax")
        else _sigmoid_data(generator, shape=(2, 2, 2, 2))
    )
    logits.requires_grad_(True)
    loss = LOSSES.build(name)
    assert torch.autograd.gradcheck(lambda v: loss(v, target), (logits,))
    if not name.startswith("all"):
        per = LOSSES.build(name, per_sample=True, reduction="none")
        assert torch.autograd.gradcheck(lambda v: per(v, target), (logits,), fast_mode=True)


@pytest.mark.parametrize("name", NAMES)
def test_bad_inputs(name):
    loss = LOSSES.build(name)
    if name.endswith("_softmax"):
        logits, target = torch.zeros(2, 3, 4), torch.ones(2, 4, dtype=torch.long)
        with pytest.raises(ValueError, match="shape"):
            loss(logits, torch.ones(2, 5, dtype=torch.long))
        with pytest.raises(ValueError, match="outside"):
            loss(logits, target * 3)
    else:
        logits, target = torch.zeros(2, 1, 4), torch.ones(2, 1, 4, dtype=torch.long)
        with pytest.raises(ValueError, match="shape"):
            loss(logits, torch.ones(2, 1, 5))
        with pytest.raises(ValueError, match="only 0, 1"):
            loss(logits, target * 2)
    with pytest.raises(ValueError, match="NaN"):
        loss(torch.full_like(logits, float("nan")), target)


@pytest.mark.parametrize("name", NAMES)
def test_autocast_bf16_finite_float32(generator, name):
    logits, target = _data_for(name, generator, dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = LOSSES.build(name)(logits.bfloat16(), target)
    assert out.dtype == torch.float32 and torch.isfinite(out)


def test_bad_hyper_parameters():
    with pytest.raises(ValueError, match="activation"):
        ov.DiceLoss(activation="relu")
    with pytest.raises(ValueError, match="alpha"):
        ov.TverskyLoss(alpha=1.5)
    with pytest.raises(ValueError, match="include_background"):
        ov.dice_loss(torch.zeros(1, 1, 2), torch.ones(1, 1, 2), include_background=False)
    with pytest.raises(ValueError, match="class_reduction"):
        ov.dice_loss(torch.zeros(1, 1, 2), torch.ones(1, 1, 2), class_reduction="max")
    with pytest.raises(ValueError, match="omega"):
        lg.adaptive_log(torch.zeros(()), omega=0.0)
