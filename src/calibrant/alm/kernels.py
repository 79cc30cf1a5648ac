r"""The autograd kernels of :class:`~calibrant.alm.term.ALMPenalty`'s training penalty.

- :class:`PenaltyMean`: ``Σ_valid P(h) / denom`` for any penalty and constraint, with the
  penalty's closed-form derivative (one saved tensor).
- :class:`NeighborPHR`: PHR on the label-0 neighbourhood constraint (CRaC), fused and chunked.
- :class:`NeighborPHRChunks`: the same penalty as a chunk kernel of the fused CE pass
  (:mod:`calibrant.losses.fusion`), for ``ALMPenalty.ce_kernel``.

The formulas are the module docstrings' of :mod:`calibrant.alm.penalties` and
:mod:`calibrant.alm.constraints`; these are their fast evaluations, tested against the generic
path in ``tests/test_alm.py`` and ``tests/test_losses_fused.py``.
"""

from __future__ import annotations

import torch

from calibrant._tensor import row_chunks
from calibrant.alm.penalties import PenaltyFn

__all__ = ["NeighborPHR", "NeighborPHRChunks", "PenaltyMean"]


class PenaltyMean(torch.autograd.Function):
    """``Σ_valid P(h) / denom`` with the closed-form derivative (saves one tensor)."""

    @staticmethod
    def forward(ctx, h, lam, rho, mask, denom, fn: PenaltyFn):  # noqa: D102
        value, grad = fn(h, lam, rho)
        if mask is None:  # no ignored pixel: skip the masking passes
            ctx.save_for_backward(grad.div_(denom))
            return value.sum() / denom
        zero = h.new_zeros(())
        ctx.save_for_backward(torch.where(mask, grad, zero).div_(denom))
        return torch.where(mask, value, zero).sum() / denom

    @staticmethod
    def backward(ctx, g):  # noqa: D102
        (grad,) = ctx.saved_tensors
        return g * grad, None, None, None, None, None


class NeighborPHR(torch.autograd.Function):
    r"""PHR penalty of the label-0 neighbourhood constraint, summed, fused and chunked.

    With ``d = l − counts·f``, ``h = |d|`` and λ, ρ ≥ 0 looked up per ``[region, class]`` (region
    from the {0, 1} map ``bnd``), PHR is ``P = λh + ρh²/2`` (``λ + ρh ≥ 0`` always) and
    ``dP/dl = (λ + ρh)·sign(d) = λ·sign(d) + ρ·d``. The forward reduces per class and region with
    matrix-vector products (no per-pixel λ map); the backward recomputes ``d`` chunk by chunk and
    writes the gradient directly. ``mask`` (float {0, 1} ``(B, 1, *)`` or ``None``) zeroes
    ignored pixels.
    """

    @staticmethod
    def forward(ctx, x, counts, f, bnd, mask, lam, rho, denom: float):  # noqa: D102
        k = x.shape[1]
        x3, c3, f3, b3, m3 = _flat(x, counts, f, bnd, mask)
        h1 = x.new_zeros(2, k, dtype=torch.float64)  # Σ h per [region, class]
        h2 = x.new_zeros(2, k, dtype=torch.float64)  # Σ h²
        i3 = 1.0 - b3
        for b, c, n in row_chunks(x3.shape):
            d = torch.addcmul(x3[b, c, n], c3[b, c, n], f3[b, :, n], value=-1.0)
            if m3 is not None:
                d.mul_(m3[b, :, n])
            h = d.abs_()
            for r, w in enumerate((i3[b, :, n], b3[b, :, n])):  # inner, boundary
                hw = h * w
                h1[r, c] += hw.sum((0, 2))
                h2[r, c] += hw.mul_(h).sum((0, 2))
        lam64, rho64 = lam.double(), rho.double()
        total = (lam64 * h1 + 0.5 * rho64 * h2).sum() / denom
        ctx.save_for_backward(x, counts, f, bnd, mask, lam, rho)
        ctx.denom = denom
        return total.to(x.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):  # noqa: D102
        x, counts, f, bnd, mask, lam, rho = ctx.saved_tensors
        x3, c3, f3, b3, m3 = _flat(x, counts, f, bnd, mask)
        scale = grad.to(x.dtype) / ctx.denom
        lam0, dlam = (lam[0] * scale).view(1, -1, 1), ((lam[1] - lam[0]) * scale).view(1, -1, 1)
        rho0, drho = (rho[0] * scale).view(1, -1, 1), ((rho[1] - rho[0]) * scale).view(1, -1, 1)
        gx = torch.empty_like(x, memory_format=torch.contiguous_format)
        g3 = gx.view(x3.shape)
        for b, c, n in row_chunks(x3.shape):
            d = torch.addcmul(x3[b, c, n], c3[b, c, n], f3[b, :, n], value=-1.0)
            if m3 is not None:
                d.mul_(m3[b, :, n])
            w = b3[b, :, n]
            lam_map = torch.addcmul(lam0[:, c], dlam[:, c], w)
            rho_map = torch.addcmul(rho0[:, c], drho[:, c], w)
            out = torch.mul(d, rho_map, out=g3[b, c, n])
            out.addcmul_(d.sign_(), lam_map)
        return gx, None, None, None, None, None, None, None


class NeighborPHRChunks:
    r"""The fused-CE chunk kernel of the CRaC PHR penalty (see :class:`NeighborPHR`).

    With ``d = l − counts·f`` and λ, ρ per [region, class] (scaled by ``1/denom``), the forward
    writes ``G = λ·sign(d) + ρ·d`` (``∂P/∂l`` for g = 1) and takes the value from it:
    ``P = λ|d| + ρd²/2 = d·G − d·(ρd)/2`` (two dot products per chunk, no per-class sums).
    ``backward`` (the recomputing path, used only by a second backward of the same graph)
    rebuilds ``G`` from ``d``.
    """

    needs_max = False

    def __init__(self, counts, f, bnd, lam, rho, denom: float) -> None:
        self.counts, self.f, self.bnd = counts, f, bnd
        self.lam, self.rho, self.denom = lam, rho, denom

    def begin(self, xv: torch.Tensor) -> None:  # noqa: D102  (ChunkKernel protocol)
        b, k, n = xv.shape
        self.c3 = self.counts.reshape(b, k, n)
        self.f3, self.b3 = self.f.reshape(b, 1, n), self.bnd.reshape(b, 1, n)
        self.sums = []  # per chunk: Σ d·G, Σ d·ρd (float32, dot products)
        self.dtype = xv.dtype
        self.coef = self._coef(xv, 1.0)

    def _coef(self, xs: torch.Tensor, g) -> list:
        """λ0, ρ0, Δλ, Δρ as ``(1, K, 1)`` (times ``g / denom``), and whether regions differ."""
        k = xs.shape[1]
        lam = self.lam.to(xs.dtype) * (g / self.denom)
        rho = self.rho.to(xs.dtype) * (g / self.denom)
        split = bool((lam[0] != lam[1]).any() or (rho[0] != rho[1]).any())
        coef = [v.view(1, k, 1) for v in (lam[0], rho[0], lam[1] - lam[0], rho[1] - rho[0])]
        return [*coef, split]

    def _d(self, xs, bs, ps) -> torch.Tensor:
        return torch.addcmul(xs, self.c3[bs, :, ps], self.f3[bs, :, ps], value=-1.0)

    def _grad(self, d, bs, ps, coef, out) -> torch.Tensor:
        """``out = λ·sign(d) + ρ·d`` (λ, ρ looked up by region); returns ``ρ·d``."""
        lam0, rho0, dlam, drho, split = coef
        if split:  # λ = λ0 + Δλ·bnd, ρ = ρ0 + Δρ·bnd (bnd broadcast over classes)
            b = self.b3[bs, :, ps]
            e = torch.mul(d, rho0)
            sd = d.sign()
            t = torch.mul(d, drho)
            e.addcmul_(t, b)
            torch.addcmul(e, sd, lam0, out=out)
            out.addcmul_(torch.mul(sd, dlam, out=t), b)
        else:
            e = torch.mul(d, rho0)
            torch.addcmul(e, d.sign(), lam0, out=out)
        return e

    def forward(self, xs, m, bs, ps) -> None:  # noqa: D102
        self.forward_grad(xs, bs, ps, torch.empty_like(xs))

    def forward_grad(self, xs, bs, ps, out) -> None:  # noqa: D102
        d = self._d(xs, bs, ps)
        e = self._grad(d, bs, ps, self.coef, out)
        dv = d.view(-1)
        self.sums.append(torch.stack([torch.dot(dv, out.view(-1)), torch.dot(dv, e.view(-1))]))

    def value(self) -> torch.Tensor:  # noqa: D102
        t = torch.stack(self.sums).double().sum(0)
        self.sums = None
        return (t[0] - 0.5 * t[1]).to(self.dtype)

    def backward(self, xs, m, bs, ps, out, g) -> None:  # noqa: D102
        if self.coef is None:  # once per backward: the coefficients times g
            self.coef = self._coef(xs, g)
        grad = torch.empty_like(xs)
        self._grad(self._d(xs, bs, ps), bs, ps, self.coef, grad)
        out.add_(grad)


def _flat(x, counts, f, bnd, mask):
    """``(B, C, *spatial)`` / ``(B, 1, *spatial)`` tensors as ``(B, C, N)`` / ``(B, 1, N)``."""
    b, k = x.shape[:2]
    flat = [x.view(b, k, -1), counts.reshape(b, k, -1), f.reshape(b, 1, -1)]
    flat += [bnd.reshape(b, 1, -1), None if mask is None else mask.reshape(b, 1, -1)]
    return flat
