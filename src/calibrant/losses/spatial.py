r"""Segmentation losses that look at the neighbourhood: SVLS and the NACL penalty.

BWCR's boundary-weighted consistency is in :mod:`calibrant.losses.bwcr`.

All take logits ``(B, C, *spatial)`` with 1 to 3 spatial dims and integer targets
``(B, *spatial)``; ignored elements get zero loss and zero gradient, and ignored *neighbours* are
treated as absent: each window is renormalised over its valid neighbours (METHODS §10 A2; a no-op
on data without ignore labels). Targets built from the labels carry no gradient and are computed
once per call.

Example:
    >>> import torch
    >>> from calibrant.registry import LOSSES
    >>> logits, target = torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))
    >>> sorted(LOSSES.build("nacl").terms(logits, target))
    ['ce', 'nacl']
    >>> bool(LOSSES.build("svls")(logits, target) > 0)
    True
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from calibrant._checks import check_choice, check_positive
from calibrant._tensor import (
    PADDINGS,
    float32,
    neighbor_proportions,
    reduce,
    row_chunks,
    valid_mask,
    window_counts,
)
from calibrant.losses._base import (
    CLASS_REDUCTIONS,
    ThinLoss,
    fused_finish,
    fused_inputs,
    prepare,
    reduce_total,
)
from calibrant.losses.classification import CrossEntropyLoss
from calibrant.losses.combine import WeightedSum
from calibrant.losses.fusion import FusedPlan
from calibrant.registry import LOSSES

__all__ = [
    "svls_kernel",
    "svls_targets",
    "svls_loss",
    "nacl_targets",
    "neighbor_penalty",
    "SVLSLoss",
    "NeighborPenalty",
]

KERNELS = ("mean", "gaussian")
DISTANCES = ("l1", "l2")
ON = ("logits", "probs")
_SEG = {"task": "multiclass", "granularity": "element", "spatial": True}  # registry metadata


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


def _check_choices(kernel: str, padding: str, distance: str, on: str, **_: Any) -> None:
    """The string options of :class:`NeighborPenalty`."""
    check_choice("kernel", kernel, KERNELS)
    check_choice("padding", padding, PADDINGS)
    check_choice("distance", distance, DISTANCES)
    check_choice("on", on, ON)


def svls_kernel(
    spatial_dims: int, kernel_size: int = 3, sigma: float = 1.0, *, dtype=torch.float64
) -> torch.Tensor:
    r"""The effective SVLS kernel: centre 1/2, neighbours share 1/2 in Gaussian proportion.

    With :math:`G` the normalised Gaussian (variance σ²) and :math:`g_c` its centre weight, the
    research code replaces the centre by :math:`1-g_c`, divides by :math:`1-g_c`, and divides the
    filtered one-hot by the kernel sum (2), i.e. the effective kernel is
    :math:`(G + (1 - 2 g_c)\,\delta) / (2 (1 - g_c))`. For k = 3, σ = 1: 2D 4-neighbours 0.0778,
    diagonals 0.0472; 3D faces 0.0308, edges 0.0187, corners 0.0113.

    Args:
        spatial_dims: 1, 2 or 3.
        kernel_size: odd k (the code is k = 3 only; here the true centre is used for any k).
        sigma: Gaussian standard deviation.
        dtype: output dtype.

    Returns:
        ``(k,) * spatial_dims`` tensor summing to 1.

    Example:
        >>> k = svls_kernel(2)
        >>> round(k[1, 1].item(), 4), round(k[0, 1].item(), 4), round(k[0, 0].item(), 4)
        (0.5, 0.0778, 0.0472)
    """
    _check_kernel(kernel_size, sigma)
    g1 = torch.tensor(_gaussian_1d(kernel_size, sigma), dtype=dtype)
    g = g1
    for _ in range(spatial_dims - 1):
        g = g.unsqueeze(-1) * g1
    c = (kernel_size // 2,) * spatial_dims
    gc = g[c].item()
    out = g.clone()
    out[c] += 1 - 2 * gc
    return out / (2 * (1 - gc))


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


def _smoothed_targets(
    target: torch.Tensor,
    num_classes: int,
    *,
    kernel_size: int,
    sigma: float,
    padding: str,
    ignore_index: int | None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """SVLS-kernel smoothing of the one-hot labels, renormalised over valid neighbours."""
    safe, mask = valid_mask(target, ignore_index)
    nd = target.dim() - 1
    if nd < 1:
        raise ValueError("spatial smoothing needs at least one spatial dim")
    labels = safe.masked_fill(~mask, -1) if ignore_index is not None else safe
    t = _filtered_one_hot(labels, num_classes, kernel_size, sigma, padding, nd, dtype)
    if ignore_index is None:
        return t
    m = mask.unsqueeze(1).to(dtype)
    # Ignored neighbours are absent: renormalise by the non-ignored share of the window
    # (out-of-image neighbours keep the meaning the padding gives them).
    mode = "replicate" if padding == "replicate" else "zeros"
    ignored_share = _gaussian_filter(1.0 - m, kernel_size, sigma, mode, nd)
    share = (1.0 - ignored_share).clamp_min_(1e-12)
    return t.div_(share).mul_(m)


@torch.no_grad()
def svls_targets(
    target: torch.Tensor,
    num_classes: int,
    *,
    kernel_size: int = 3,
    sigma: float = 1.0,
    ignore_index: int | None = -100,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """SVLS soft targets: the one-hot labels filtered by :func:`svls_kernel`, replicate padding.

    Args:
        target: integer labels ``(B, *spatial)``, 1 to 3 spatial dims.
        num_classes: K.
        kernel_size: odd window size (3).
        sigma: Gaussian σ (1).
        ignore_index: ignored neighbours are absent (window renormalised); ignored centres get 0.
        dtype: floating dtype of the targets and of the filtering arithmetic (float32;
            :func:`svls_loss` passes float64 for float64 logits).

    Returns:
        ``(B, K, *spatial)`` in ``dtype``; rows of valid elements sum to 1.

    Example:
        >>> t = svls_targets(torch.tensor([[0, 0, 1, 1]]), 2)
        >>> [round(v, 4) for v in t[0, 1].tolist()]
        [0.0, 0.25, 0.75, 1.0]
    """
    _check_kernel(kernel_size, sigma)
    return _smoothed_targets(
        target,
        num_classes,
        kernel_size=kernel_size,
        sigma=sigma,
        padding="replicate",
        ignore_index=ignore_index,
        dtype=dtype,
    )


class _SoftTargetCE(torch.autograd.Function):
    r"""Fused :math:`\mathrm{lse}(l) - \sum_k t_k l_k` for fixed soft targets ``t``.

    Chunked over positions (about 2¹⁸ elements, all classes of a chunk at once, so the
    temporaries stay cache-sized): the forward takes ``log_softmax`` of the chunk (one fused
    kernel; ``lse = l_0 − log s_0``) and ``Σ t·l``; nothing but ``x`` and ``t`` is saved.
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
        for bs, _, ps in row_chunks((b, 1, n), max(1024, _CHUNK // max(1, c))):
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
        for bs, _, ps in row_chunks((b, 1, xv.shape[2]), max(1024, _CHUNK // max(1, c))):
            xs, out = xv[bs, :, ps].contiguous(), gx[bs, :, ps]
            p = out if out.is_contiguous() else torch.empty_like(xs)
            torch.ops.aten._softmax.out(xs, 1, False, out=p)
            p.sub_(tv[bs, :, ps]).mul_(gv[bs, :, ps])
            if p is not out:
                out.copy_(p)
        return gx.view(x.shape), None


_CHUNK = 1 << 18


def svls_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    kernel_size: int = 3,
    sigma: float = 1.0,
    ignore_index: int | None = -100,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""Spatially varying label smoothing: :math:`\ell_i = -\sum_k t_{ik} \log s_{ik}`.

    :math:`t` = :func:`svls_targets` (centre weight 1/2, Gaussian neighbours, replicate padding).
    Since :math:`\sum_k t_{ik} = 1`, it is computed as :math:`\mathrm{lse}(l_i) - \sum_k t_{ik}
    l_{ik}`, without materialising the log-probabilities.

    Args:
        logits: class scores, class dim 1.
        target: integer labels.
        kernel_size: odd window size (3; the MarginLoss 2D class always uses 3).
        sigma: Gaussian σ (1).
        ignore_index: label whose elements are ignored, or ``None``.
        reduction: ``"mean"`` (over valid pixels) | ``"sum"`` | ``"none"``.

    Shape:
        logits ``(B, C, *spatial)`` with 1 to 3 spatial dims, target ``(B, *spatial)``;
        ``"none"`` gives ``(B, *spatial)``.

    Example:
        >>> logits, target = torch.zeros(1, 2, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long)
        >>> round(svls_loss(logits, target).item(), 4)  # log 2
        0.6931

    Reference:
        Islam & Glocker, "Spatially varying label smoothing", IPMI 2021; METHODS §2.6.
    """
    _check_kernel(kernel_size, sigma)
    with float32(logits):
        x, _, mask = prepare(logits, target, ignore_index, min_spatial=1)
        # nothing ignored (mask None): the renormalisation by the non-ignored share is exactly 1
        ignore = ignore_index if mask is not None else None
        t = svls_targets(
            target,
            x.shape[1],
            kernel_size=kernel_size,
            sigma=sigma,
            ignore_index=ignore,
            dtype=x.dtype,  # float64 logits get targets built in float64, not rounded ones
        )
        values = _SoftTargetCE.apply(x, t)
        return reduce(values, mask, reduction)


@torch.no_grad()
def nacl_targets(
    target: torch.Tensor,
    num_classes: int,
    *,
    kernel: str = "mean",
    kernel_size: int = 3,
    sigma: float = 1.0,
    padding: str = "label0",
    ignore_index: int | None = -100,
) -> torch.Tensor:
    r"""NACL constraint target :math:`\tau`: the class proportions around each element.

    ``kernel="mean"`` is :func:`calibrant._tensor.neighbor_proportions` (the published NACL);
    ``"gaussian"`` uses the SVLS kernel (the MarginLoss ``gaussian`` ablation; *not* MONAI's
    ``GaussianFilter``). ``padding="label0"`` (research code, default) reads out-of-image
    neighbours as class 0 so rows sum to 1; ``"zeros"`` (MONAI) drops them (rows sum to < 1 at
    the border); ``"replicate"`` repeats the border label.

    Returns:
        ``(B, K, *spatial)`` float32 (no gradient).

    Example:
        >>> tau = nacl_targets(torch.tensor([[1, 1, 1]]), 2)
        >>> [round(v, 4) for v in tau[0, 1].tolist()]
        [0.6667, 1.0, 0.6667]
    """
    check_choice("kernel", kernel, KERNELS)
    check_choice("padding", padding, PADDINGS)
    _check_kernel(kernel_size, sigma)
    if kernel == "mean":
        return neighbor_proportions(
            target, num_classes, kernel_size=kernel_size, padding=padding, ignore_index=ignore_index
        )
    return _smoothed_targets(
        target,
        num_classes,
        kernel_size=kernel_size,
        sigma=sigma,
        padding=padding,
        ignore_index=ignore_index,
    )


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


def _nacl_fast(x, target, mask, *, kernel_size, padding, ignore_index, class_reduction, reduction):
    """Mean-kernel L1 NACL on logits through :class:`_ScaledL1Sum` (``mean``/``sum`` only)."""
    k = x.shape[1]
    if mask is None and padding in ("label0", "zeros"):
        tau = window_counts(target.long(), k, kernel_size=kernel_size, padding=padding)
        scale, m = 1.0 / kernel_size ** (x.dim() - 2), None
    else:
        tau = neighbor_proportions(
            target, k, kernel_size=kernel_size, padding=padding, ignore_index=ignore_index
        ).to(x.dtype)
        scale = 1.0
        m = None if mask is None else mask.unsqueeze(1).to(x.dtype)
    total = _ScaledL1Sum.apply(x.contiguous(), tau, scale, m)
    if class_reduction == "mean":
        total = total / k
    return reduce_total(total, reduction, mask=mask, numel=target.numel())


def neighbor_penalty(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    kernel: str = "mean",
    kernel_size: int = 3,
    sigma: float = 1.0,
    padding: str = "label0",
    distance: str = "l1",
    on: str = "logits",
    class_reduction: str = "mean",
    ignore_index: int | None = -100,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""NACL penalty: distance between the neighbourhood target τ and the logits (or probs).

    .. math::
        \ell_i = \frac{1}{K} \sum_k |\tau_{ik} - z_{ik}|^p, \quad
        z = l \text{ or } \mathrm{softmax}(l)

    NACL is ``CE + λ · neighbor_penalty`` with λ = 0.1, the 3×3 mean kernel, L1, on logits
    (MarginLoss ``adaptive_margin_svls`` config). With ``padding="zeros"`` it equals MONAI's
    ``NACLLoss`` (tested).

    Args:
        logits: class scores, class dim 1.
        target: integer labels.
        kernel: ``"mean"`` | ``"gaussian"`` (see :func:`nacl_targets`).
        kernel_size: odd window size k (3).
        sigma: σ of the gaussian kernel.
        padding: ``"label0"`` (default) | ``"zeros"`` (MONAI) | ``"replicate"``.
        distance: ``"l1"`` | ``"l2"`` (squared difference).
        on: ``"logits"`` (published) | ``"probs"`` (softmax first).
        class_reduction: ``"mean"`` (code; λ = 0.1) | ``"sum"`` (paper; λ_sum = λ_mean / K).
        ignore_index: label whose elements are ignored, or ``None``.
        reduction: ``"mean"`` | ``"sum"`` | ``"none"``.

    Shape:
        logits ``(B, C, *spatial)`` with 1 to 3 spatial dims, target ``(B, *spatial)``;
        ``"none"`` gives ``(B, *spatial)``.

    Example:
        >>> logits = torch.zeros(1, 2, 3)
        >>> neighbor_penalty(logits, torch.tensor([[1, 1, 1]]), reduction="none")
        tensor([[0.5000, 0.5000, 0.5000]])

    Reference:
        Murugesan et al., "Trust your neighbours: penalty-based constraints for model
        calibration", MICCAI 2023; METHODS §2.7.
    """
    check_choice("distance", distance, DISTANCES)
    check_choice("on", on, ON)
    check_choice("class_reduction", class_reduction, CLASS_REDUCTIONS)
    check_choice("kernel", kernel, KERNELS)
    check_choice("padding", padding, PADDINGS)
    _check_kernel(kernel_size, sigma)
    with float32(logits):
        x, _, mask = prepare(logits, target, ignore_index, min_spatial=1)
        fast = kernel == "mean" and distance == "l1" and on == "logits" and reduction != "none"
        if fast:
            return _nacl_fast(
                x,
                target,
                mask,
                kernel_size=kernel_size,
                padding=padding,
                ignore_index=ignore_index,
                class_reduction=class_reduction,
                reduction=reduction,
            )
        tau = nacl_targets(
            target,
            x.shape[1],
            kernel=kernel,
            kernel_size=kernel_size,
            sigma=sigma,
            padding=padding,
            ignore_index=ignore_index,
        ).to(x.dtype)
        z = F.softmax(x, dim=1) if on == "probs" else x
        if distance == "l1":
            values = _L1ToTarget.apply(z, tau)
        else:
            values = (z - tau).square().sum(1)
        if class_reduction == "mean":
            values = values / x.shape[1]
        return reduce(values, mask, reduction)


@LOSSES.register("svls", function=svls_loss, **_SEG)
class SVLSLoss(ThinLoss, fn=svls_loss, check=_check_kernel, positional=True):
    """Module form of :func:`svls_loss`."""


class NeighborPenalty(ThinLoss, fn=neighbor_penalty, check=_check_choices, positional=True):
    """Module form of :func:`neighbor_penalty`."""

    def ce_kernel(
        self, logits: torch.Tensor, target: torch.Tensor, ignore_index: int | None
    ) -> FusedPlan | None:
        """The fused-CE plan (:mod:`calibrant.losses.fusion`).

        Only for the mean kernel, L1 on logits, ``label0``/``zeros`` padding and nothing
        ignored.
        """
        if not (
            self.ignore_index == ignore_index
            and self.kernel == "mean"
            and self.distance == "l1"
            and self.on == "logits"
            and self.padding in ("label0", "zeros")
            and self.reduction in ("mean", "sum")
        ):
            return None
        inputs = fused_inputs(logits, target, self.ignore_index, min_dims=3)
        if inputs is None:
            return None
        x, safe = inputs
        k = x.shape[1]
        tau = window_counts(safe, k, kernel_size=self.kernel_size, padding=self.padding)
        scale = 1.0 / self.kernel_size ** (x.dim() - 2)
        finish = fused_finish(k, safe.numel(), self.class_reduction, self.reduction)
        return FusedPlan(x, safe, _ScaledL1Chunks(tau, scale), finish)


# --- registered presets (published defaults, METHODS §8) -------------------------------------


@LOSSES.register("nacl", **_SEG)
def _nacl(
    weight: float = 0.1,
    kernel: str = "mean",
    kernel_size: int = 3,
    padding: str = "label0",
    distance: str = "l1",
    on: str = "logits",
    class_reduction: str = "mean",
    **kw,
) -> nn.Module:
    """NACL = CE + λ·neighbour penalty; λ = 0.1, mean 3×3, L1 on logits (MarginLoss config)."""
    penalty = NeighborPenalty(
        kernel, kernel_size, 1.0, padding, distance, on, class_reduction, **kw
    )
    return WeightedSum({"ce": CrossEntropyLoss(**kw), "nacl": penalty}, weights={"nacl": weight})
