"""The chunked kernels of the MbLS logit-margin penalty (:mod:`calibrant.losses.classification`).

:class:`_MarginPenalty` is the autograd Function of :func:`logit_margin_penalty
<calibrant.losses.classification.logit_margin_penalty>`; :class:`_MarginChunks` is its fused-CE
chunk kernel, run by :mod:`calibrant.losses.fusion`. The formula, its checks and the reductions
stay in :mod:`calibrant.losses.classification`.
"""

from __future__ import annotations

import torch

from calibrant._tensor import row_chunks


class _MarginPenalty(torch.autograd.Function):
    """Fused ``Σ_k φ(max_j l_j − l_k − m)`` with φ = ReLU, ReLU², or square (legacy).

    Works on ``(B, C, N)`` chunks of about 2¹⁷ positions (:func:`calibrant._tensor.row_chunks`
    over positions), looping over classes on contiguous slices: no ``max`` with indices, no
    class-sized temporary, and only the per-position max is saved. Gradient (exactly autograd's
    of ``relu(amax(l) − m − l).sum(1)``, ReLU′(0) = 0): with ``s = Σ_k φ′(d_k − m)``,
    ``∂/∂l_j = −φ′(d_j − m) + s · 1[l_j = max] / #maxima`` — tied maxima share the ``s`` term
    evenly, as the gradient of ``amax`` does.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, margin: float, norm: str) -> torch.Tensor:
        b, c = x.shape[:2]
        xv = x.detach().reshape(b, c, -1)
        n = xv.shape[2]
        mx = xv.new_empty((b, n))
        out = xv.new_empty((b, n))
        for bs, _, ps in row_chunks((b, 1, n), _MARGIN_CHUNK):
            xs, m_c, o = xv[bs, :, ps], mx[bs, ps], out[bs, ps]
            torch.amax(xs, 1, out=m_c) if c > 8 else _class_max(xs, m_c)
            tm = m_c - margin
            o.zero_()
            for k in range(c):
                h = torch.sub(tm, xs[:, k])
                if norm == "legacy_l2":
                    h.square_()
                else:
                    h.clamp_min_(0.0)
                    if norm == "l2":
                        h.square_()
                o.add_(h)
        ctx.save_for_backward(x, mx)
        ctx.margin, ctx.norm = margin, norm
        return out.view(b, *x.shape[2:])

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        x, mx = ctx.saved_tensors
        b, c = x.shape[:2]
        xv = x.reshape(b, c, -1)
        gv = grad.reshape(b, -1)
        gx = torch.empty_like(xv)
        for bs, _, ps in row_chunks((b, 1, xv.shape[2]), _MARGIN_CHUNK):
            xs, m_c, g, out = xv[bs, :, ps], mx[bs, ps], gv[bs, ps], gx[bs, :, ps]
            tm = m_c - ctx.margin
            ng = g.neg()
            s = torch.zeros_like(m_c)
            ties = torch.zeros_like(m_c)
            at_max = []
            for k in range(c):
                xk = xs[:, k]
                if ctx.norm == "l1":
                    dh = torch.lt(xk, tm)  # h > 0, exactly
                else:
                    dh = torch.sub(tm, xk)
                    if ctx.norm == "l2":
                        dh.clamp_min_(0.0)
                    dh.mul_(2.0)
                s.add_(dh)
                torch.mul(dh, ng, out=out[:, k])
                e = torch.eq(xk, m_c)
                ties.add_(e)
                at_max.append(e)
            coef = s.mul_(g).div_(ties)
            for k, e in enumerate(at_max):
                out[:, k].addcmul_(e, coef)
        return gx.view(x.shape), None, None


_MARGIN_CHUNK = 1 << 17


class _MarginChunks:
    """Fused-CE chunk kernel of ``Σ_i Σ_k φ(max_j l_ij − l_ik − m)`` (see ``_MarginPenalty``)."""

    needs_max = True

    def __init__(self, margin: float, norm: str) -> None:
        self.margin, self.norm = margin, norm

    def begin(self, xv: torch.Tensor) -> None:
        self.total = xv.new_zeros(())

    def _hinge(self, xs: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        h = torch.sub(m - self.margin, xs)
        if self.norm != "legacy_l2":
            h.clamp_min_(0.0)
        return h

    def forward(self, xs, m, bs, ps) -> None:
        h = self._hinge(xs, m)
        self.total += (h.square_() if self.norm != "l1" else h).sum()

    def value(self) -> torch.Tensor:
        return self.total

    def backward(self, xs, m, bs, ps, out, g) -> None:
        if self.norm == "l1":  # h > 0 exactly; comparisons written as floats (bool ops are slow)
            dh = torch.lt(xs, m - self.margin, out=torch.empty_like(xs))
        else:
            dh = self._hinge(xs, m).mul_(2.0)
        s = dh.sum(1, keepdim=True)
        out.addcmul_(dh, g, value=-1.0)
        # the max column: ∂max/∂l splits evenly over tied maxima, as autograd's amax does
        at_max = torch.eq(xs, m, out=dh)
        ties = at_max.sum(1, keepdim=True)
        out.addcmul_(at_max, s.mul_(g).div_(ties))


def _class_max(xs: torch.Tensor, out: torch.Tensor) -> None:
    """``out = xs.amax(1)`` for few classes, as a loop of element-wise maxima on slices."""
    out.copy_(xs[:, 0])
    for k in range(1, xs.shape[1]):
        torch.maximum(out, xs[:, k], out=out)
