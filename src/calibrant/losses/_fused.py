r"""Fused "CE + penalty": one autograd Function that shares the class max and log-sum-exp.

A calibration loss ``WeightedSum({"ce": CE, name: penalty})`` evaluated term by term reads the
logits once per term in the forward, builds two full-size gradients and adds them. Here one
sweep over position chunks (all classes of a chunk at once, cache-resident temporaries)
computes the CE sum :math:`\sum_i (\mathrm{lse}(l_i) - l_{i,y_i})` and the penalty, and the
backward writes :math:`g_{ce}(\mathrm{softmax}(l) - e_y) + g_{pen}\,\partial P/\partial l`
directly into one gradient tensor. The Function returns both parts, so
:meth:`calibrant.losses.combine.WeightedSum.terms` still reports them by name.

The fused path is taken only where it is the same maths as the composition: multi-class logits
with at least one spatial dim for the spatial penalties, no ignored element in the batch,
``reduction`` ``"mean"`` or ``"sum"`` for both terms and the penalties' fast configurations
(MbLS margin: every norm; NACL: mean kernel, L1 on logits, ``label0``/``zeros`` padding; CRaC:
PHR on the ``label0`` neighbourhood constraint with λ ≥ 0). Everything else falls back to the
term-by-term sum. Values agree with the composition up to float summation order (tested).

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

import torch

from calibrant._checks import check_finite, check_logits_target
from calibrant._tensor import float32, labels_and_mask, row_chunks, window_counts

__all__ = ["fused_terms"]

#: Elements (positions × classes) per chunk: small enough to stay in cache.
_CHUNK_ELEMENTS = 1 << 18


def _positions_per_chunk(num_classes: int) -> int:
    return max(1024, _CHUNK_ELEMENTS // max(1, num_classes))


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
        for bs, _, ps in row_chunks((b, 1, xv.shape[2]), _positions_per_chunk(c)):
            xs, out, ys = xv[bs, :, ps].contiguous(), gx[bs, :, ps], yv[bs, :, ps]
            p = out if out.is_contiguous() else torch.empty_like(xs)
            torch.ops.aten._softmax.out(xs, 1, False, out=p)
            p.mul_(g_ce).scatter_add_(1, ys, neg.expand(ys.shape))
            m = xs.amax(1, keepdim=True) if pen.needs_max else None
            pen.backward(xs, m, bs, ps, p, g_pen)
            if p is not out:
                out.copy_(p)
        return gx.view(x.shape), None, None


class _Margin:
    """Chunk kernel of ``Σ_i Σ_k φ(max_j l_ij − l_ik − m)`` (see ``_MarginPenalty``)."""

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


class _ScaledL1:
    """Chunk kernel of ``Σ |l − s·τ|`` (NACL's mean-kernel L1 on logits, see ``_ScaledL1Sum``)."""

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


class _NeighborPHR:
    r"""Chunk kernel of the CRaC PHR penalty (see ``calibrant.alm.term._NeighborPHR``).

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

    def begin(self, xv: torch.Tensor) -> None:
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

    def forward(self, xs, m, bs, ps) -> None:
        self.forward_grad(xs, bs, ps, torch.empty_like(xs))

    def forward_grad(self, xs, bs, ps, out) -> None:
        d = self._d(xs, bs, ps)
        e = self._grad(d, bs, ps, self.coef, out)
        dv = d.view(-1)
        self.sums.append(torch.stack([torch.dot(dv, out.view(-1)), torch.dot(dv, e.view(-1))]))

    def value(self) -> torch.Tensor:
        t = torch.stack(self.sums).double().sum(0)
        self.sums = None
        return (t[0] - 0.5 * t[1]).to(self.dtype)

    def backward(self, xs, m, bs, ps, out, g) -> None:
        if self.coef is None:  # once per backward: the coefficients times g
            self.coef = self._coef(xs, g)
        grad = torch.empty_like(xs)
        self._grad(self._d(xs, bs, ps), bs, ps, self.coef, grad)
        out.add_(grad)


def _as_float(x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype == torch.float64 else x.float()


def _ce_value(ce_sum: torch.Tensor, ce_module, n: int) -> torch.Tensor:
    return ce_sum if ce_module.reduction == "sum" else ce_sum / max(n, 1)


def _run(x, safe, pen) -> tuple[torch.Tensor, torch.Tensor]:
    ce_sum, pen_value = _CEPlus.apply(x, safe, pen)
    # NaN/±inf logits make the CE sum or the penalty non-finite (a −inf logit off the label
    # leaves CE finite but not the penalty); only then look for them, same error as before.
    if not bool(torch.isfinite(ce_sum + pen_value)):
        check_finite("logits", x)
    return ce_sum, pen_value


def _margin_fused(part, ce_module, logits, target):
    from calibrant.losses.classification import LogitMarginPenalty

    if type(part) is not LogitMarginPenalty:
        return None
    check_logits_target(logits, target, min_dims=2)
    safe, mask = labels_and_mask(target, logits.shape[1], part.ignore_index)
    if mask is not None:
        return None
    x = _as_float(logits)
    ce_sum, total = _run(x, safe, _Margin(float(part.margin), part.norm))
    if part.class_reduction == "mean":
        total = total / x.shape[1]
    n = safe.numel()
    return _ce_value(ce_sum, ce_module, n), total if part.reduction == "sum" else total / max(n, 1)


def _nacl_fused(part, ce_module, logits, target):
    from calibrant.losses.spatial import NeighborPenalty

    kw = getattr(part, "kwargs", {})
    if not (
        type(part) is NeighborPenalty
        and kw["kernel"] == "mean"
        and kw["distance"] == "l1"
        and kw["on"] == "logits"
        and kw["padding"] in ("label0", "zeros")
        and kw["reduction"] in ("mean", "sum")
    ):
        return None
    check_logits_target(logits, target, min_dims=3)
    k = logits.shape[1]
    safe, mask = labels_and_mask(target, k, kw["ignore_index"])
    if mask is not None:
        return None
    x = _as_float(logits)
    tau = window_counts(safe, k, kernel_size=kw["kernel_size"], padding=kw["padding"])
    scale = 1.0 / kw["kernel_size"] ** (x.dim() - 2)
    ce_sum, total = _run(x, safe, _ScaledL1(tau, scale))
    if kw["class_reduction"] == "mean":
        total = total / k
    n = safe.numel()
    pen = total if kw["reduction"] == "sum" else total / max(n, 1)
    return _ce_value(ce_sum, ce_module, n), pen


def _crac_fused(part, ce_module, logits, target):
    from calibrant.alm.constraints import NeighborConstraint, neighbor_parts
    from calibrant.alm.term import ALMPenalty, _pair_table

    if type(part) is not ALMPenalty:
        return None
    con = part.constraint
    if not (
        part.cfg.penalty == "phr"
        and type(con) is NeighborConstraint
        and con.padding == "label0"
        and logits.dim() >= 3
        and logits.shape[1:2] == (part.num_classes,)
        and bool((part.lam >= 0).all())
    ):
        return None
    check_logits_target(logits, target)
    safe, mask = labels_and_mask(target, part.num_classes, part.ignore_index)
    if mask is not None or logits.dtype == torch.float64:  # ALMPenalty computes in float32
        return None
    x = logits.float()
    counts, f, boundary = neighbor_parts(
        safe,
        None,
        part.num_classes,
        kernel_size=con.kernel_size,
        inner_target_scale=con.inner_target_scale,
    )
    n = safe.numel()
    denom = max(n, 1) * part.layout.num_slots * part.layout.columns_per_slot
    lam, rho = _pair_table(part.lam, part.layout), _pair_table(part.rho, part.layout)
    pen = _NeighborPHR(counts, f, boundary.unsqueeze(1), lam, rho, float(denom))
    ce_sum, value = _run(x, safe, pen)
    return _ce_value(ce_sum, ce_module, n), value


_FUSERS = (_margin_fused, _nacl_fused, _crac_fused)


def fused_terms(ce_module, part, logits: torch.Tensor, target: torch.Tensor):
    """``(CE value, penalty value)`` from one fused pass, or ``None`` where it does not apply.

    Args:
        ce_module: the ``"ce"`` term (a :class:`calibrant.losses.CrossEntropyLoss`).
        part: the penalty term (:class:`~calibrant.losses.LogitMarginPenalty`,
            :class:`~calibrant.losses.NeighborPenalty` or a CRaC-type
            :class:`~calibrant.alm.ALMPenalty`).
        logits: ``(B, C, *spatial)`` class scores.
        target: ``(B, *spatial)`` integer labels.

    Returns:
        The two unweighted values, each equal (up to summation order) to what the module
        returns, or ``None`` (the caller then evaluates the terms one by one).
    """
    from calibrant.losses.classification import CrossEntropyLoss

    if type(ce_module) is not CrossEntropyLoss or ce_module.reduction not in ("mean", "sum"):
        return None
    if not (torch.is_tensor(logits) and logits.dim() >= 2 and logits.is_floating_point()):
        return None
    if getattr(part, "ignore_index", ce_module.ignore_index) != ce_module.ignore_index:
        return None
    if isinstance(getattr(part, "kwargs", None), dict):
        if part.kwargs.get("ignore_index") != ce_module.ignore_index:
            return None
    elif getattr(part, "reduction", "mean") not in ("mean", "sum"):
        return None
    with float32(logits):
        for fuser in _FUSERS:
            out = fuser(part, ce_module, logits, target)
            if out is not None:
                return out
    return None
