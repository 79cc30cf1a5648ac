r"""Fusion of cross-entropy with a penalty term: one chunked pass that shares the log-sum-exp.

A calibration loss ``WeightedSum({"ce": CE, name: penalty})`` evaluated term by term reads the
logits once per term in the forward, builds two full-size gradients and adds them. Here one
sweep over position chunks (all classes of a chunk at once, cache-resident temporaries)
computes the CE sum :math:`\sum_i (\mathrm{lse}(l_i) - l_{i,y_i})` and the penalty, and the
backward writes :math:`g_{ce}(\mathrm{softmax}(l) - e_y) + g_{pen}\,\partial P/\partial l`
directly into one gradient tensor. The Function returns both parts, so
:meth:`calibrant.losses.combine.WeightedSum.terms` still reports them by name.

This module knows no concrete loss. The protocol, from the top:

- :class:`~calibrant.losses.combine.WeightedSum` asks each of its two terms for a
  ``fused_with(other, logits, target)`` hook; :class:`~calibrant.losses.CrossEntropyLoss` has one.
- The CE hook asks the other term for ``ce_kernel(logits, target, ignore_index)``, which returns
  a :class:`FusedPlan` (the float logits, the labels, a chunk kernel and how to turn the
  kernel's raw sum into the term's value) or ``None`` where the fused maths is not the term's.
- :func:`ce_plus` runs the plan. The chunk kernels live beside the terms that own them
  (MbLS margin in :mod:`calibrant.losses._margin`, NACL in :mod:`calibrant.losses._neighbor`,
  CRaC's PHR in :mod:`calibrant.alm.term`).

The fused path is taken only where it is the same maths as the composition: no ignored element
in the batch, ``reduction`` ``"mean"`` or ``"sum"`` for both terms and the penalties' fast
configurations. Everything else falls back to the term-by-term sum. Values agree with the
composition up to float summation order (tested).

Example:
    >>> import torch
    >>> from calibrant.registry import LOSSES
    >>> logits, target = torch.randn(2, 4, 8, 8), torch.randint(0, 4, (2, 8, 8))
    >>> mbls = LOSSES.build("mbls")
    >>> fused = mbls.terms(logits, target)  # one fused pass, both parts reported
    >>> ce = torch.nn.functional.cross_entropy(logits, target)
    >>> bool(torch.isclose(fused["ce"], ce))
    True
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import NamedTuple, Protocol

import torch

from calibrant._checks import check_finite
from calibrant._tensor import row_chunks

__all__ = ["ChunkKernel", "FusedPlan", "ce_plus"]

#: Elements (positions × classes) per chunk: small enough to stay in cache.
_CHUNK_ELEMENTS = 1 << 18


def _positions_per_chunk(num_classes: int) -> int:
    return max(1024, _CHUNK_ELEMENTS // max(1, num_classes))


def _softmax_chunks(
    xv: torch.Tensor, gx: torch.Tensor
) -> Iterator[tuple[slice, slice, torch.Tensor, torch.Tensor]]:
    """The position chunks of a backward that starts from ``softmax`` and writes into ``gx``.

    Yields ``(bs, ps, xs, p)`` for the ``(B, C, N)`` logits ``xv``: ``xs`` the contiguous chunk
    (softmax over dim 1 is slow on strided chunks) and ``p`` its softmax, held in the chunk of
    ``gx`` itself where that is contiguous, else in a buffer copied there once the caller has
    changed ``p`` in place and asks for the next chunk (so consume every chunk).
    """
    b, c, n = xv.shape
    for bs, _, ps in row_chunks((b, 1, n), _positions_per_chunk(c)):
        xs, out = xv[bs, :, ps].contiguous(), gx[bs, :, ps]
        p = out if out.is_contiguous() else torch.empty_like(xs)
        torch.ops.aten._softmax.out(xs, 1, False, out=p)
        yield bs, ps, xs, p
        if p is not out:
            out.copy_(p)


class ChunkKernel(Protocol):
    """A penalty evaluated chunk by chunk inside the CE sweep (see :class:`_CEPlus`)."""

    needs_max: bool

    def begin(self, xv: torch.Tensor) -> None:
        """Start a sweep over the ``(B, C, N)`` logits."""

    def forward(self, xs, m, bs, ps) -> None:
        """Add the chunk ``xs`` (rows ``bs``, positions ``ps``; ``m`` its class max or None)."""

    def value(self) -> torch.Tensor:
        """The penalty's raw sum over the sweep."""

    def backward(self, xs, m, bs, ps, out, g) -> None:
        """Add ``g · ∂P/∂l`` of the chunk to the contiguous ``out``."""


class FusedPlan(NamedTuple):
    """What a term offers for the fused pass (returned by its ``ce_kernel`` hook).

    Attributes:
        logits: float32 or float64 logits ``(B, C, *spatial)`` (the dtype of the computation).
        labels: int64 labels ``(B, *spatial)``, nothing ignored.
        kernel: the term's :class:`ChunkKernel`.
        finish: maps the kernel's raw sum to the term's value (its class and batch reduction).
    """

    logits: torch.Tensor
    labels: torch.Tensor
    kernel: ChunkKernel
    finish: Callable[[torch.Tensor], torch.Tensor]


class _CEPlus(torch.autograd.Function):
    r"""``(Σ_i lse(l_i) − l_{i,y_i}, P(l))`` in one chunked sweep; ``pen`` is a chunk kernel.

    ``pen`` has ``needs_max``, ``begin(xv)``, ``forward(xs, m, bs, ps)`` (``xs`` a contiguous
    ``(b, C, n)`` chunk, ``m`` its class max or ``None``), ``value()`` and
    ``backward(xs, m, bs, ps, out, g)`` (adds ``g · ∂P/∂l`` to the contiguous ``out``).
    Nothing but the logits is saved (no copy): the forward takes ``log_softmax`` of each chunk
    (one fused kernel), the backward recomputes ``softmax`` per chunk, scales it by ``g_ce``,
    subtracts ``g_ce`` at the label (``scatter_add_``, no one-hot) and lets the penalty add its
    part in place.

    A kernel that also has ``forward_grad(xs, bs, ps, out)`` (CRaC's PHR) writes ``∂P/∂l`` into
    the gradient buffer during the forward, while its intermediates are at hand, instead of
    recomputing them in the backward; the buffer is what the backward returns (scaled by
    ``g_pen``, plus the CE part), so the peak memory is the same. It is used once: a second
    backward through the same graph (``retain_graph=True``) takes the recomputing path.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, y: torch.Tensor, pen) -> tuple[torch.Tensor, torch.Tensor]:
        b, c = x.shape[:2]
        xv = x.detach().reshape(b, c, -1)
        yv = y.reshape(b, 1, -1)
        ce = xv.new_zeros(())
        pen.begin(xv)
        # A kernel with ``forward_grad`` writes its gradient (for g_pen = 1) into the gradient
        # buffer during the forward, sharing the forward's intermediates; the backward then only
        # scales it and adds the CE part (once; a second backward recomputes, see below).
        early = hasattr(pen, "forward_grad") and ctx.needs_input_grad[0]
        gx = torch.empty(xv.shape, dtype=x.dtype, device=x.device) if early else None
        for bs, _, ps in row_chunks((b, 1, xv.shape[2]), _positions_per_chunk(c)):
            xs = xv[bs, :, ps].contiguous()  # softmax over dim 1 is slow on strided chunks
            ce -= torch.log_softmax(xs, 1).gather(1, yv[bs, :, ps]).sum()
            if early:
                out = gx[bs, :, ps]
                buf = out if out.is_contiguous() else torch.empty_like(xs)
                pen.forward_grad(xs, bs, ps, buf)
                if buf is not out:
                    out.copy_(buf)
            else:
                pen.forward(xs, xs.amax(1, keepdim=True) if pen.needs_max else None, bs, ps)
        ctx.save_for_backward(x, y)
        ctx.pen = pen
        ctx.gx = gx
        return ce, pen.value()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_ce: torch.Tensor, g_pen: torch.Tensor):
        x, y = ctx.saved_tensors
        pen = ctx.pen
        b, c = x.shape[:2]
        xv, yv = x.reshape(b, c, -1), y.reshape(b, 1, -1)
        neg = g_ce.neg()
        gx, ctx.gx = ctx.gx, None
        if gx is not None:  # penalty gradient already in gx: g_pen · gx + g_ce (softmax − e_y)
            scale = not bool(g_pen == 1)
            for bs, _, ps in row_chunks((b, 1, xv.shape[2]), _positions_per_chunk(c)):
                xs, out, ys = xv[bs, :, ps].contiguous(), gx[bs, :, ps], yv[bs, :, ps]
                if scale:
                    out.mul_(g_pen)
                out.addcmul_(torch.softmax(xs, 1), g_ce)
                out.scatter_add_(1, ys, neg.expand(ys.shape))
            return gx.view(x.shape), None, None
        gx = torch.empty(xv.shape, dtype=x.dtype, device=x.device)
        pen.coef = None  # per-backward constants (they depend on g_pen)
        for bs, ps, xs, p in _softmax_chunks(xv, gx):
            ys = yv[bs, :, ps]
            p.mul_(g_ce).scatter_add_(1, ys, neg.expand(ys.shape))
            m = xs.amax(1, keepdim=True) if pen.needs_max else None
            pen.backward(xs, m, bs, ps, p, g_pen)
        return gx.view(x.shape), None, None


def ce_plus(plan: FusedPlan) -> tuple[torch.Tensor, torch.Tensor]:
    """``(Σ_i CE_i, the term's value)`` from one fused pass over ``plan.logits``.

    Non-finite logits make the CE sum or the penalty non-finite (a −inf logit off the label
    leaves CE finite but not the penalty); only then are they looked for, with the usual error.
    """
    ce_sum, pen_value = _CEPlus.apply(plan.logits, plan.labels, plan.kernel)
    if not bool(torch.isfinite(ce_sum + pen_value)):
        check_finite("logits", plan.logits)
    return ce_sum, plan.finish(pen_value)
