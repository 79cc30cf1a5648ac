"""The fused "CE + penalty" path (MbLS, NACL, CRaC) against the term-by-term composition.

The chunk kernels live beside their terms; the runner (:mod:`calibrant.losses.fusion`) knows none.
"""

from __future__ import annotations

import pytest
import torch

import calibrant.losses  # noqa: F401  (registers every loss)
from calibrant.alm.kernels import NeighborPHRChunks
from calibrant.losses.classification import _MarginChunks
from calibrant.losses.fusion import _CEPlus
from calibrant.losses.spatial import _ScaledL1Chunks
from calibrant.registry import LOSSES


def _unfused(loss, x, y):
    """The composition, evaluated term by term (what ``WeightedSum.terms`` did before)."""
    return {n: loss.weights[n] * p(x, y) for n, p in loss.parts.items()}


def _crac(num_classes, generator, name="crac", **kw):
    loss = LOSSES.build(name, num_classes=num_classes, **kw)
    alm = loss.parts["alm"]
    alm.lam.copy_(torch.rand(alm.lam.shape, generator=generator, dtype=alm.lam.dtype))
    alm.rho.copy_(torch.rand(alm.rho.shape, generator=generator, dtype=alm.rho.dtype) + 0.1)
    return loss


def _build(name, num_classes, generator):
    if name.startswith("crac"):
        return _crac(num_classes, generator, name)
    if name == "nacl_zeros":
        return LOSSES.build("nacl", padding="zeros", class_reduction="sum", weight=0.3)
    if name == "mbls_sum":
        return LOSSES.build("mbls", reduction="sum", class_reduction="sum", margin=2.0)
    return LOSSES.build(name)


NAMES = [
    "mbls",
    "mbls_l2",
    "mbls_legacy_l2",
    "mbls_sum",
    "nacl",
    "nacl_zeros",
    "crac",
    "crac_global",
    "crac_class",
    "crac_region",
]
SHAPES = [(2, 4, 9, 7), (2, 5, 4, 5, 6), (1, 3, 140_000), (3, 2, 50_000)]


@pytest.mark.parametrize("shape", SHAPES, ids=["2d", "3d", "1d_position_chunks", "1d_batch"])
@pytest.mark.parametrize("name", NAMES)
def test_fused_equals_composition(name, shape, generator):
    loss = _build(name, shape[1], generator)
    x = (3 * torch.randn(shape, generator=generator)).requires_grad_()
    y = torch.randint(0, shape[1], (shape[0], *shape[2:]), generator=generator)
    assert loss._fused(x, y) is not None, "the fused path must apply here"
    got = loss.terms(x, y)
    want = _unfused(loss, x, y)
    assert list(got) == list(want)  # same names, same order: per-term logging unchanged
    for k in got:
        torch.testing.assert_close(got[k], want[k])
    (g_got,) = torch.autograd.grad(sum(got.values()), x)
    (g_want,) = torch.autograd.grad(sum(want.values()), x)
    torch.testing.assert_close(g_got, g_want)
    torch.testing.assert_close(loss(x, y), sum(want.values()))


@pytest.mark.parametrize("name", ["mbls", "mbls_l2", "nacl"])
def test_fused_float64_equals_composition(name, generator):
    loss = _build(name, 3, generator)
    x = (3 * torch.randn(2, 3, 5, 6, generator=generator, dtype=torch.float64)).requires_grad_()
    y = torch.randint(0, 3, (2, 5, 6), generator=generator)
    got, want = loss.terms(x, y), _unfused(loss, x, y)
    for k in got:
        assert got[k].dtype == torch.float64
        torch.testing.assert_close(got[k], want[k])
    torch.testing.assert_close(
        torch.autograd.grad(sum(got.values()), x)[0], torch.autograd.grad(sum(want.values()), x)[0]
    )


def _kernels(x, y, generator):
    """Every chunk kernel for logits ``x`` and labels ``y`` (float64 tables for gradcheck)."""
    from calibrant._tensor import window_counts
    from calibrant.alm.constraints import neighbor_parts

    k = x.shape[1]
    tau = window_counts(y, k, kernel_size=3, padding="label0")
    counts, f, bnd = neighbor_parts(y, None, k, kernel_size=3, inner_target_scale=5.0)
    lam = torch.rand(2, k, generator=generator, dtype=torch.float64)
    rho = torch.rand(2, k, generator=generator, dtype=torch.float64)
    b = bnd.unsqueeze(1).double()
    f = f.double()
    return {
        "margin_l1": lambda: _MarginChunks(0.5, "l1"),
        "margin_l2": lambda: _MarginChunks(0.5, "l2"),
        "margin_legacy_l2": lambda: _MarginChunks(0.5, "legacy_l2"),
        "nacl": lambda: _ScaledL1Chunks(tau, 1 / 9),
        "phr_split": lambda: NeighborPHRChunks(counts, f, b, lam, rho, 7.0),
        "phr_shared": lambda: NeighborPHRChunks(
            counts, f, b, lam[:1].expand(2, k), rho[:1].expand(2, k), 7.0
        ),
    }


@pytest.mark.parametrize(
    "kernel", ["margin_l1", "margin_l2", "margin_legacy_l2", "nacl", "phr_split", "phr_shared"]
)
def test_fused_function_gradcheck(kernel, generator):
    x = (3 * torch.randn(2, 3, 4, 5, generator=generator, dtype=torch.float64)).requires_grad_()
    y = torch.randint(0, 3, (2, 4, 5), generator=generator)
    make = _kernels(x, y, generator)[kernel]

    def fn(t):
        ce, pen = _CEPlus.apply(t, y, make())
        return ce, pen

    assert torch.autograd.gradcheck(fn, (x,), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("shape", [(2, 4, 9, 7), (1, 3, 140_000)], ids=["2d", "1d_position_chunks"])
@pytest.mark.parametrize("split", [True, False])
def test_fused_crac_gradient_paths(shape, split, generator):
    """The penalty gradient written during the forward, for every way the backward can run."""
    from calibrant.losses.combine import WeightedSum

    loss = _crac(shape[1], generator)
    alm = loss.parts["alm"]
    if not split:  # same λ, ρ in both regions: the kernel's shared-coefficient branch
        alm.lam[1], alm.rho[1] = alm.lam[0], alm.rho[0]
    weighted = WeightedSum(dict(loss.parts), weights={"ce": 0.6, "alm": 2.5})  # g_pen != 1
    x = (3 * torch.randn(shape, generator=generator)).requires_grad_()
    y = torch.randint(0, shape[1], (shape[0], *shape[2:]), generator=generator)
    for lss in (loss, weighted):
        got, want = lss.terms(x, y), _unfused(lss, x, y)
        total = sum(got.values())
        (ref,) = torch.autograd.grad(sum(want.values()), x, retain_graph=True)
        first = torch.autograd.grad(total, x, retain_graph=True)[0]  # the precomputed gradient
        second = torch.autograd.grad(total, x, retain_graph=True)[0]  # recomputed
        torch.testing.assert_close(first, ref)
        torch.testing.assert_close(second, ref)
        for k in got:  # one part at a time: g_ce = 0 or g_pen = 0
            torch.testing.assert_close(
                torch.autograd.grad(got[k], x, retain_graph=True)[0],
                torch.autograd.grad(want[k], x)[0],
            )
        with torch.no_grad():  # no gradient buffer: same values
            for k, v in lss.terms(x, y).items():
                torch.testing.assert_close(v, got[k].detach())


def test_fused_ce_part_is_cross_entropy_sum(generator):
    x = (3 * torch.randn(2, 4, 6, 5, generator=generator, dtype=torch.float64)).requires_grad_()
    y = torch.randint(0, 4, (2, 6, 5), generator=generator)
    ce, _ = _CEPlus.apply(x, y, _MarginChunks(10.0, "l1"))
    want = torch.nn.functional.cross_entropy(x, y, reduction="sum")
    torch.testing.assert_close(ce, want)
    torch.testing.assert_close(torch.autograd.grad(ce, x)[0], torch.autograd.grad(want, x)[0])


def test_fused_margin_ties_split_like_amax():
    x = torch.tensor(
        [[5.0, 5.0, 0.0, 1.0], [2.0, 2.0, 2.0, -9.0], [0.0, 0.0, 0.0, 0.0]], dtype=torch.float64
    )
    x = x.T.reshape(1, 4, 3).contiguous().requires_grad_()  # 3 positions, 4 classes
    y = torch.zeros(1, 3, dtype=torch.long)
    for norm in ("l1", "l2", "legacy_l2"):
        loss = LOSSES.build({"l1": "mbls", "l2": "mbls_l2"}.get(norm, "mbls_legacy_l2"), margin=3.0)
        got = sum(loss.terms(x, y).values())
        want = sum(_unfused(loss, x, y).values())
        torch.testing.assert_close(got, want)
        torch.testing.assert_close(torch.autograd.grad(got, x)[0], torch.autograd.grad(want, x)[0])


def test_fallback_with_ignored_labels_or_other_configs(generator):
    x = torch.randn(2, 3, 6, 6, generator=generator, requires_grad=True)
    y = torch.randint(0, 3, (2, 6, 6), generator=generator)
    ignored = y.clone()
    ignored[0, 0, 0] = -100
    for loss in (
        LOSSES.build("mbls"),
        LOSSES.build("nacl"),
        _crac(3, generator),
    ):
        assert loss._fused(x, ignored) is None  # term by term when something is ignored
    assert LOSSES.build("nacl", padding="replicate")._fused(x, y) is None
    assert LOSSES.build("nacl", kernel="gaussian")._fused(x, y) is None
    assert LOSSES.build("mbls", reduction="none")._fused(x, y) is None
    assert LOSSES.build("mbls", weight=0.0)._fused(x, y) is None
    assert _crac(3, generator)._fused(x.double(), y) is None  # ALMPenalty is float32 only
    assert LOSSES.build("ecp")._fused(x, y) is None  # no fused kernel for ECP


@pytest.mark.parametrize("name", ["mbls", "nacl", "crac"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_fused_path_reports_non_finite_logits(name, bad, generator):
    loss = _build(name, 3, generator)
    x = torch.randn(2, 3, 5, 5, generator=generator)
    y = torch.randint(0, 3, (2, 5, 5), generator=generator)
    assert loss._fused(x, y) is not None
    x[1, 2, 3, 4] = bad
    with pytest.raises(ValueError, match="logits contains"):
        loss(x, y)


def test_fused_autocast_bf16_is_float32(generator):
    x = torch.randn(2, 4, 8, 8, generator=generator).to(torch.bfloat16).requires_grad_()
    y = torch.randint(0, 4, (2, 8, 8), generator=generator)
    for loss in (LOSSES.build("mbls"), LOSSES.build("nacl"), _crac(4, generator)):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            terms = loss.terms(x, y)
        assert all(v.dtype == torch.float32 for v in terms.values())
        want = _unfused(loss, x.detach().float(), y)
        for k in terms:
            torch.testing.assert_close(terms[k].detach(), want[k])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize(
    "shape", [(2, 4, 9, 7), (2, 5, 4, 5, 6), (1, 14, 30, 40, 50)], ids=["2d", "3d", "3d_chunks"]
)
def test_svls_chunked_soft_ce_equals_plain_expression(shape, reduction, dtype, generator):
    from calibrant.losses.spatial import svls_loss, svls_targets

    x = (3 * torch.randn(shape, generator=generator, dtype=dtype)).requires_grad_()
    y = torch.randint(0, shape[1], (shape[0], *shape[2:]), generator=generator)
    got = svls_loss(x, y, reduction=reduction)
    t = svls_targets(y, shape[1]).to(dtype)
    values = torch.logsumexp(x, 1) - (t * x).sum(1)  # autograd of the plain expression
    want = values.sum() if reduction == "sum" else values.mean()
    assert got.dtype == dtype
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(torch.autograd.grad(got, x)[0], torch.autograd.grad(want, x)[0])
