r"""The kernels of the neighbourhood losses (:mod:`calibrant.losses.spatial`).

- Gaussian filtering of one-hot labels by the effective SVLS kernel (:func:`_gaussian_filter`,
  and :func:`_filtered_one_hot`, the same class by class from the labels without a float
  one-hot), for the SVLS targets and NACL's ``gaussian`` kernel;
- the chunked autograd Functions: SVLS's soft-target cross-entropy (:class:`_SoftTargetCE`) and
  NACL's L1 distances (:class:`_L1ToTarget`, :class:`_ScaledL1Sum`), and NACL's fused-CE chunk
  kernel (:class:`_ScaledL1Chunks`, run by :mod:`calibrant.losses.fusion`).

The formulas, their checks and the reductions stay in :mod:`calibrant.losses.spatial`.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from calibrant._checks import check_positive
from calibrant._tensor import row_chunks
from calibrant.losses.fusion import _positions_per_chunk, _softmax_chunks


def _gaussian_1d(kernel_size: int, sigma: float) -> list[float]:
    """Normalised 1D Gaussian on the grid 0..k−1 centred at (k−1)/2."""
    mu = (kernel_size - 1) / 2
    g = [math.exp(-((i - mu) ** 2) / (2 * sigma**2)) for i in range(kernel_size)]
    total = sum(g)
    return [v / total for v in g]


def _check_kernel(kernel_size: int, sigma: float, **_: Any) -> None:
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd integer, got {kernel_size}")
    check_positive("sigma", sigma)


def _separable_smooth(padded: torch.Tensor, g1: list[float], spatial_dims: int) -> torch.Tensor:
    """Valid correlation of ``padded`` with ``g1`` along each of the last ``spatial_dims`` axes."""
    k = len(g1)
    out = padded
    for axis in range(padded.dim() - spatial_dims, padded.dim()):
        n = out.shape[axis] - k + 1
        acc = out.narrow(axis, 0, n) * g1[0]
        for j in range(1, k):
            acc.add_(out.narrow(axis, j, n), alpha=g1[j])
        out = acc
    return out


def _pad(x: torch.Tensor, r: int, padding: str) -> torch.Tensor:
    """Pad the spatial dims of ``(B, C, *spatial)`` by ``r``; ``label0`` pads channel 0 with 1."""
    pads = (r,) * (2 * (x.dim() - 2))
    if padding == "replicate":
        return F.pad(x, pads, mode="replicate")
    out = F.pad(x, pads, value=0.0)
    if padding == "label0":
        out[:, :1] += F.pad(torch.zeros_like(x[:, :1]), pads, value=1.0)
    return out


def _gaussian_filter(
    oh: torch.Tensor, kernel_size: int, sigma: float, padding: str, spatial_dims: int
) -> torch.Tensor:
    """Apply the effective SVLS kernel to ``(B, C, *spatial)``, padded per ``padding``."""
    g1 = _gaussian_1d(kernel_size, sigma)
    gc = g1[kernel_size // 2] ** spatial_dims
    smooth = _separable_smooth(_pad(oh, kernel_size // 2, padding), g1, spatial_dims)
    return smooth.add_(oh, alpha=1 - 2 * gc).div_(2 * (1 - gc))


def _filtered_one_hot(
    labels: torch.Tensor,
    num_classes: int,
    kernel_size: int,
    sigma: float,
    padding: str,
    nd: int,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """``_gaussian_filter(one_hot(labels))``, class by class from the padded *labels*.

    Padding the one-hot equals one-hot of the padded labels (replicate: edge labels; zeros: no
    class, -1; label0: class 0), so no ``(B, K, *padded)`` float tensor is built; the per-class
    arithmetic is the same element-wise sequence, hence bitwise the same result. ``labels`` is
    int64 with -1 for rows that must be zero; the result and its arithmetic are in ``dtype``.
    """
    r = kernel_size // 2
    g1 = _gaussian_1d(kernel_size, sigma)
    gc = g1[r] ** nd
    padded = labels
    if padding == "replicate":
        for axis in range(1, nd + 1):
            n = padded.shape[axis]
            idx = torch.arange(-r, n + r, device=labels.device).clamp_(0, n - 1)
            padded = padded.index_select(axis, idx)
    else:
        fill = 0 if padding == "label0" else -1
        padded = F.pad(padded, (r,) * (2 * nd), value=fill)
    out = torch.empty(
        (labels.shape[0], num_classes, *labels.shape[1:]), dtype=dtype, device=labels.device
    )
    for k in range(num_classes):
        ohp = (padded == k).unsqueeze(1).to(dtype)
        centre = ohp
        for axis in range(2, nd + 2):
            centre = centre.narrow(axis, r, centre.shape[axis] - 2 * r)
        smooth = _separable_smooth(ohp, g1, nd)
        out[:, k : k + 1] = smooth.add_(centre, alpha=1 - 2 * gc).div_(2 * (1 - gc))
    return out


class _SoftTargetCE(torch.autograd.Function):
    r"""Fused :math:`\mathrm{lse}(l) - \sum_k t_k l_k` for fixed soft targets ``t``.

    Chunked over positions as the fused CE (about 2¹⁸ elements, all classes of a chunk at once,
    so the temporaries stay cache-sized): the forward takes ``log_softmax`` of the chunk (one
    fused kernel; ``lse = l_0 − log s_0``) and ``Σ t·l``; nothing but ``x`` and ``t`` is saved.
    Backward: ``g · (softmax(l) − t)``, the gradient of the expression (valid rows of ``t`` sum
    to 1; ignored centres get ``g = 0`` from the reduction), with ``softmax`` recomputed per
    chunk.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        xv, tv = x.detach().reshape(b, c, -1), t.reshape(b, c, -1)
        n = xv.shape[2]
        out = xv.new_empty((b, 1, n))
        for bs, _, ps in row_chunks((b, 1, n), _positions_per_chunk(c)):
            xs = xv[bs, :, ps].contiguous()  # softmax over dim 1 is slow on strided chunks
            lse = torch.sub(xs[:, :1], torch.log_softmax(xs, 1)[:, :1])
            torch.sub(lse, (tv[bs, :, ps] * xs).sum(1, keepdim=True), out=out[bs, :, ps])
        ctx.save_for_backward(x, t)
        return out.view(b, *x.shape[2:])

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        x, t = ctx.saved_tensors
        b, c = x.shape[:2]
        xv, tv = x.reshape(b, c, -1), t.reshape(b, c, -1)
        gv = grad.reshape(b, 1, -1)
        gx = torch.empty(xv.shape, dtype=x.dtype, device=x.device)
        for bs, ps, _, p in _softmax_chunks(xv, gx):
            p.sub_(tv[bs, :, ps]).mul_(gv[bs, :, ps])
        return gx.view(x.shape), None


class _L1ToTarget(torch.autograd.Function):
    """``Σ_k |τ_k − z_k|`` that saves only the int8 sign pattern for backward.

    ``tau`` is a no-grad temporary and is overwritten in place.
    """

    @staticmethod
    def forward(ctx, z: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
        diff = tau.sub_(z).neg_()  # z - τ, in τ's storage
        ctx.save_for_backward(torch.sign(diff).to(torch.int8))
        return diff.abs_().sum(1)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        (sign,) = ctx.saved_tensors
        return sign.to(grad.dtype).mul_(grad.unsqueeze(1)), None


class _ScaledL1Sum(torch.autograd.Function):
    r"""``Σ |x − s·τ| · m`` over everything, with ``d/dx = sign(x − s·τ) · m``, fused and chunked.

    ``tau`` is the integer window counts (``s = 1/k^d``) or a float target (``s = 1``); ``mask``
    is ``None`` or a float ``(B, 1, *spatial)`` {0, 1} map. Nothing full-size is saved or
    allocated besides the gradient: the backward recomputes ``x − s·τ`` chunk by chunk.
    """

    @staticmethod
    def forward(ctx, x, tau, scale: float, mask):  # noqa: D102
        x3, t3 = x.view(*x.shape[:2], -1), tau.reshape(*x.shape[:2], -1)
        m3 = None if mask is None else mask.reshape(x.shape[0], 1, -1)
        total = x.new_zeros(())
        for b, c, n in row_chunks(x3.shape):
            d = torch.sub(x3[b, c, n], t3[b, c, n], alpha=scale)
            if m3 is not None:
                d.mul_(m3[b, :, n])
            total += d.abs_().sum()
        ctx.save_for_backward(x, tau, mask)
        ctx.scale = scale
        return total

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):  # noqa: D102
        x, tau, mask = ctx.saved_tensors
        x3, t3 = x.view(*x.shape[:2], -1), tau.reshape(*x.shape[:2], -1)
        m3 = None if mask is None else mask.reshape(x.shape[0], 1, -1)
        gx = torch.empty_like(x, memory_format=torch.contiguous_format)
        g3 = gx.view(x3.shape)
        for b, c, n in row_chunks(x3.shape):
            d = torch.sub(x3[b, c, n], t3[b, c, n], alpha=ctx.scale)
            if m3 is not None:
                d.mul_(m3[b, :, n])
            torch.mul(d.sign_(), grad, out=g3[b, c, n])
        return gx, None, None, None


class _ScaledL1Chunks:
    """Fused-CE chunk kernel of ``Σ |l − s·τ|`` (NACL's mean-kernel L1; see ``_ScaledL1Sum``)."""

    needs_max = False

    def __init__(self, tau: torch.Tensor, scale: float) -> None:
        self.tau, self.scale = tau, scale

    def begin(self, xv: torch.Tensor) -> None:
        self.t3 = self.tau.reshape(xv.shape)
        self.total = xv.new_zeros(())

    def forward(self, xs, m, bs, ps) -> None:
        self.total += torch.sub(xs, self.t3[bs, :, ps], alpha=self.scale).abs_().sum()

    def value(self) -> torch.Tensor:
        return self.total

    def backward(self, xs, m, bs, ps, out, g) -> None:
        d = torch.sub(xs, self.t3[bs, :, ps], alpha=self.scale)
        out.addcmul_(d.sign_(), g)
