"""SVLS, NACL and BWCR against loop re-derivations of METHODS §2.6-2.8, and NACL against MONAI."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from calibrant.losses.bwcr import boundary_weight_map, bwcr_consistency
from calibrant.losses.spatial import (
    nacl_targets,
    neighbor_penalty,
    svls_kernel,
    svls_loss,
    svls_targets,
)
from calibrant.registry import LOSSES


def _code_kernel(nd, k=3, sigma=1.0):
    """The research-code recipe, step by step (METHODS §2.6), as a dict offset -> weight."""
    mu = (k - 1) / 2
    offs = list(itertools.product(range(k), repeat=nd))
    g = {o: math.exp(-sum((i - mu) ** 2 for i in o) / (2 * sigma**2)) for o in offs}
    z = sum(g.values())
    g = {o: v / z for o, v in g.items()}
    c = (k // 2,) * nd
    gc = g[c]
    g[c] = 1 - gc  # centre replaced by the neighbour mass
    g = {o: v / (1 - gc) for o, v in g.items()}
    total = sum(g.values())  # = 2
    return {tuple(i - k // 2 for i in o): v / total for o, v in g.items()}


@pytest.mark.parametrize("nd", [2, 3])
def test_svls_kernel_weights(nd):
    kern = svls_kernel(nd)
    ref = _code_kernel(nd)
    for off, w in ref.items():
        assert kern[tuple(o + 1 for o in off)].item() == pytest.approx(w, abs=1e-12)
    assert kern[(1,) * nd].item() == pytest.approx(0.5)
    if nd == 2:
        assert kern[0, 1].item() == pytest.approx(0.0778, abs=5e-5)
        assert kern[0, 0].item() == pytest.approx(0.0472, abs=5e-5)
    else:
        assert kern[0, 1, 1].item() == pytest.approx(0.0308, abs=5e-5)
        assert kern[0, 0, 1].item() == pytest.approx(0.0187, abs=5e-5)
        assert kern[0, 0, 0].item() == pytest.approx(0.0113, abs=5e-5)


def _clamp(i, n):
    return min(max(i, 0), n - 1)


def _window_target(y, num_classes, weights, padding, ignore_index=None):
    """Loop reference: τ_ik = Σ_offsets w · [y_neighbour = k], padded per policy, renormalised
    over non-ignored neighbours (2D or 3D ``y`` of one sample)."""
    shape = y.shape
    out = torch.zeros(num_classes, *shape, dtype=torch.float64)
    for idx in itertools.product(*(range(n) for n in shape)):
        if ignore_index is not None and int(y[idx]) == ignore_index:
            continue
        acc = [0.0] * num_classes
        ign = 0.0
        for off, w in weights.items():
            nb = tuple(i + o for i, o in zip(idx, off, strict=True))
            inside = all(0 <= a < n for a, n in zip(nb, shape, strict=True))
            if not inside:
                if padding == "zeros":
                    continue
                if padding == "label0":
                    acc[0] += w
                    continue
                nb = tuple(_clamp(a, n) for a, n in zip(nb, shape, strict=True))
            lab = int(y[nb])
            if ignore_index is not None and lab == ignore_index:
                ign += w
                continue
            acc[lab] += w
        for c in range(num_classes):
            out[(c, *idx)] = acc[c] / (1 - ign)
    return out


def _mean_weights(nd, k=3):
    r = k // 2
    return {o: 1 / k**nd for o in itertools.product(range(-r, r + 1), repeat=nd)}


@pytest.mark.parametrize("nd", [2, 3])
def test_svls_loss_matches_loops(nd, generator):
    sp = (5, 6) if nd == 2 else (3, 4, 5)
    logits = 2 * torch.randn(2, 3, *sp, generator=generator, dtype=torch.float64)
    target = torch.randint(0, 3, (2, *sp), generator=generator)
    target[1, 0, 1] = -100
    total, count = 0.0, 0
    for b in range(2):
        t = _window_target(target[b], 3, _code_kernel(nd), "replicate", ignore_index=-100)
        logp = F.log_softmax(logits[b], dim=0)
        for idx in itertools.product(*(range(n) for n in sp)):
            if int(target[(b, *idx)]) == -100:
                continue
            total += -sum(t[(c, *idx)] * logp[(c, *idx)] for c in range(3)).item()
            count += 1
    assert svls_loss(logits, target).item() == pytest.approx(total / count, rel=1e-6)
    tt = svls_targets(target, 3)
    torch.testing.assert_close(tt.sum(1), (target != -100).float())


@pytest.mark.parametrize("ignored", [False, True])
def test_svls_float64_logits_get_float64_targets(ignored, generator):
    """Issue 16 item 18: float64 stays float64, soft targets included (were built in float32)."""
    sp = (5, 6)
    logits = 2 * torch.randn(2, 3, *sp, generator=generator, dtype=torch.float64)
    target = torch.randint(0, 3, (2, *sp), generator=generator)
    if ignored:
        target[1, 0, 1] = -100
    want = torch.stack(
        [_window_target(target[b], 3, _code_kernel(2), "replicate", -100) for b in range(2)]
    )
    per_pixel = torch.logsumexp(logits, 1) - (want * logits).sum(1)
    ref = per_pixel[target != -100].mean()
    got = svls_loss(logits, target)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, ref, rtol=1e-13, atol=0)  # float32 targets: ~1e-7 off
    t64 = svls_targets(target, 3, dtype=torch.float64)
    assert t64.dtype == torch.float64
    torch.testing.assert_close(t64, want, rtol=1e-13, atol=1e-14)
    t32 = svls_targets(target, 3)  # the default stays float32
    assert t32.dtype == torch.float32
    torch.testing.assert_close(t32.double(), want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("padding", ["label0", "zeros", "replicate"])
@pytest.mark.parametrize("kernel", ["mean", "gaussian"])
@pytest.mark.parametrize("nd", [2, 3])
def test_nacl_targets_match_loops(nd, kernel, padding, generator):
    sp = (5, 6) if nd == 2 else (3, 4, 4)
    target = torch.randint(0, 3, (2, *sp), generator=generator)
    target[0, 1, 1] = -100
    weights = _mean_weights(nd) if kernel == "mean" else _code_kernel(nd)
    got = nacl_targets(target, 3, kernel=kernel, padding=padding)
    for b in range(2):
        want = _window_target(target[b], 3, weights, padding, ignore_index=-100)
        torch.testing.assert_close(got[b].double(), want, atol=1e-6, rtol=1e-6)
    if padding == "label0":  # rows sum to 1 everywhere (valid centres), border included
        torch.testing.assert_close(got.sum(1), (target != -100).float())


@pytest.mark.parametrize("distance", ["l1", "l2"])
@pytest.mark.parametrize("on", ["logits", "probs"])
def test_nacl_matches_loops(distance, on, generator):
    logits = 2 * torch.randn(2, 3, 5, 6, generator=generator, dtype=torch.float64)
    target = torch.randint(0, 3, (2, 5, 6), generator=generator)
    target[1, 2, 2] = -100
    z = F.softmax(logits, 1) if on == "probs" else logits
    total, count = 0.0, 0
    for b in range(2):
        tau = _window_target(target[b], 3, _mean_weights(2), "label0", ignore_index=-100)
        for i, j in itertools.product(range(5), range(6)):
            if int(target[b, i, j]) == -100:
                continue
            diffs = [abs(tau[c, i, j].item() - z[b, c, i, j].item()) for c in range(3)]
            total += sum(d if distance == "l1" else d * d for d in diffs) / 3
            count += 1
    got = neighbor_penalty(logits, target, distance=distance, on=on)
    assert got.item() == pytest.approx(total / count, rel=1e-6)
    nacl = LOSSES.build("nacl", distance=distance, on=on)
    want = F.cross_entropy(logits, target) + 0.1 * got
    torch.testing.assert_close(nacl(logits, target), want)


@pytest.mark.parametrize("distance", ["l1", "l2"])
@pytest.mark.parametrize("nd", [2, 3])
def test_nacl_equals_monai_under_zeros_padding(nd, distance, generator):
    import monai.losses as monai_losses  # a test dependency: missing means failure

    sp = (9, 10) if nd == 2 else (5, 6, 7)
    logits = 2 * torch.randn(2, 4, *sp, generator=generator)
    target = torch.randint(0, 4, (2, *sp), generator=generator)
    peer = monai_losses.NACLLoss(
        classes=4, dim=nd, kernel_size=3, distance_type=distance, alpha=0.1
    )
    ours = LOSSES.build("nacl", padding="zeros", distance=distance)
    torch.testing.assert_close(ours(logits, target), peer(logits, target), rtol=1e-5, atol=1e-6)
    # label0 (our default) differs from MONAI only at the border
    assert not torch.isclose(LOSSES.build("nacl")(logits, target), peer(logits, target))


def _brute_sdt(fg):
    """Floored signed distance by brute force over pixel pairs (2D), boundary set to 0."""
    h, w = fg.shape
    pts_in = [(i, j) for i in range(h) for j in range(w) if fg[i, j]]
    pts_out = [(i, j) for i in range(h) for j in range(w) if not fg[i, j]]
    sdt = torch.zeros(h, w, dtype=torch.float64)
    for i, j in itertools.product(range(h), range(w)):
        others = pts_out if fg[i, j] else pts_in
        d = min(math.hypot(i - a, j - b) for a, b in others) if others else 0.0
        sdt[i, j] = math.floor(d) if fg[i, j] else -math.floor(d)
        if fg[i, j] and d <= 1:
            sdt[i, j] = 0.0
    return sdt


def test_bwcr_weight_map_and_loss_match_loops(generator):
    y = torch.zeros(2, 12, 13, dtype=torch.long)
    y[0, 2:9, 3:10] = 1  # a square with interior
    y[0, 5, :] = 2  # a one-pixel-thin line: no interior -> λ = l_min
    y[1, 4:11, 1:6] = 2
    y[1, 0, 12] = -100
    w = boundary_weight_map(y, 3)
    for b in range(2):
        lam = torch.full((12, 13), 0.01, dtype=torch.float64)
        yb = y[b].masked_fill(y[b] == -100, 0)
        for c in (1, 2):
            fg = yb == c
            if not fg.any():
                continue
            sdt = _brute_sdt(fg)
            if sdt.max() < 1:
                continue
            lam = torch.maximum(lam, (10 - sdt.abs()).clamp_min(0) / 10 + 0.01)
        torch.testing.assert_close(w[b].double(), lam, atol=1e-6, rtol=0)
    z1 = torch.randn(2, 3, 12, 13, generator=generator, dtype=torch.float64)
    z2 = torch.randn(2, 3, 12, 13, generator=generator, dtype=torch.float64)
    v1 = torch.rand(2, 12, 13, generator=generator) > 0.3
    v2 = torch.rand(2, 12, 13, generator=generator) > 0.3
    total, count = 0.0, 0
    for b, i, j in itertools.product(range(2), range(12), range(13)):
        if int(y[b, i, j]) == -100:
            continue
        sq = sum((z1[b, c, i, j] - z2[b, c, i, j]).item() ** 2 for c in range(3)) / 3
        total += float(v1[b, i, j]) * float(v2[b, i, j]) * w[b, i, j].item() * sq
        count += 1  # the masks do not change the denominator (official code)
    got = bwcr_consistency(z1, z2, y, v1, v2)
    assert got.item() == pytest.approx(total / count, rel=1e-6)
    plain = bwcr_consistency(z1, z2, y.clamp_min(0), weighted=False, ignore_index=None)
    torch.testing.assert_close(plain, (z1 - z2).square().mean())


def test_spatial_losses_need_a_spatial_dim():
    with pytest.raises(ValueError, match="dims"):
        svls_loss(torch.zeros(2, 3), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="kernel_size"):
        neighbor_penalty(torch.zeros(1, 2, 4), torch.zeros(1, 4, dtype=torch.long), kernel_size=2)
    with pytest.raises(ValueError, match="padding"):
        nacl_targets(torch.zeros(1, 4, dtype=torch.long), 2, padding="reflect")


def test_fused_nacl_l1_gradcheck_and_mask():
    from calibrant._tensor import window_counts
    from calibrant.losses.spatial import _ScaledL1Sum

    g = torch.Generator().manual_seed(5)
    y = torch.randint(0, 3, (2, 5, 6), generator=g)
    counts = window_counts(y, 3)
    x = torch.randn(2, 3, 5, 6, generator=g, dtype=torch.float64, requires_grad=True)
    m = (torch.rand(2, 1, 5, 6, generator=g) > 0.3).double()
    for mask in (None, m):
        assert torch.autograd.gradcheck(
            lambda z, mask=mask: _ScaledL1Sum.apply(z, counts.double(), 1 / 9, mask), (x,)
        )
    ref = ((x - counts.double() / 9).abs() * m).sum()
    torch.testing.assert_close(_ScaledL1Sum.apply(x, counts, 1 / 9, m), ref)


@pytest.mark.parametrize("padding", ["label0", "zeros"])
def test_fused_nacl_equals_unfused(padding):
    g = torch.Generator().manual_seed(7)
    x = torch.randn(2, 4, 6, 5, 4, generator=g, requires_grad=True)
    y = torch.randint(0, 4, (2, 6, 5, 4), generator=g)
    for target in (y, y.masked_fill(torch.rand(y.shape, generator=g) < 0.2, -100)):
        got = neighbor_penalty(x, target, padding=padding)
        (gg,) = torch.autograd.grad(got, x)
        per = neighbor_penalty(x, target, padding=padding, reduction="none")  # unfused path
        ref = per.sum() / (target != -100).sum()
        (rg,) = torch.autograd.grad(ref, x)
        torch.testing.assert_close(got, ref)
        torch.testing.assert_close(gg, rg)


@pytest.mark.parametrize(
    "shape", [(2, 4, 9, 7), (2, 14, 5, 6, 7), (1, 3, 400, 400)], ids=["2d", "3d", "chunked"]
)
def test_fused_svls_equals_unfused_expression(shape, generator):
    from calibrant.losses.spatial import _SoftTargetCE

    x = (3 * torch.randn(shape, generator=generator, dtype=torch.float64)).requires_grad_()
    target = torch.randint(0, shape[1], (shape[0], *shape[2:]), generator=generator)
    target[0, 0] = -100  # ignored pixels: their target row is all-zero
    t = svls_targets(target, shape[1]).double()
    g = torch.randn((shape[0], *shape[2:]), generator=generator, dtype=torch.float64)
    got = _SoftTargetCE.apply(x, t)
    (got_grad,) = torch.autograd.grad(got, x, g)
    want = torch.logsumexp(x, dim=1) - (t * x).sum(1)
    (want_grad,) = torch.autograd.grad(want, x, g)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(got_grad, want_grad)
    # the loss ignores those pixels entirely
    y = x.detach().clone().requires_grad_()
    svls_loss(y, target).backward()
    assert y.grad[0, :, 0].abs().max().item() == 0.0


def test_fused_svls_gradcheck(generator):
    from calibrant.losses.spatial import _SoftTargetCE

    x = torch.randn(2, 3, 4, 5, generator=generator, dtype=torch.float64).requires_grad_()
    t = svls_targets(torch.randint(0, 3, (2, 4, 5), generator=generator), 3).double()
    assert torch.autograd.gradcheck(lambda v: _SoftTargetCE.apply(v, t), (x,))


def test_svls_targets_without_ignored_pixels_skip_renormalisation_exactly(generator):
    target = torch.randint(0, 4, (2, 9, 8), generator=generator)
    assert torch.equal(svls_targets(target, 4), svls_targets(target, 4, ignore_index=None))
    target3 = torch.randint(0, 3, (1, 5, 6, 7), generator=generator)
    assert torch.equal(svls_targets(target3, 3), svls_targets(target3, 3, ignore_index=None))


@pytest.mark.parametrize("padding", ["replicate", "zeros", "label0"])
@pytest.mark.parametrize("shape", [(2, 9, 8), (2, 5, 6, 7), (3, 11)])
@pytest.mark.parametrize(("kernel_size", "sigma"), [(3, 1.0), (5, 2.0)])
def test_class_by_class_filter_is_bitwise_the_one_hot_filter(
    padding, shape, kernel_size, sigma, generator
):
    from calibrant._tensor import one_hot
    from calibrant.losses.spatial import _filtered_one_hot, _gaussian_filter

    labels = torch.randint(-1, 4, shape, generator=generator)  # -1: a zero row (ignored)
    oh = one_hot(labels.clamp_min(0), 4, labels >= 0)
    want = _gaussian_filter(oh, kernel_size, sigma, padding, len(shape) - 1)
    got = _filtered_one_hot(labels, 4, kernel_size, sigma, padding, len(shape) - 1)
    assert torch.equal(got, want)
