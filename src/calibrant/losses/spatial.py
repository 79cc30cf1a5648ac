r"""Segmentation losses that look at the neighbourhood: SVLS and the NACL penalty.

BWCR's boundary-weighted consistency is in :mod:`calibrant.losses.bwcr`.

All take logits ``(B, C, *spatial)`` with 1 to 3 spatial dims and integer targets
``(B, *spatial)``; ignored elements get zero loss and zero gradient, and ignored *neighbours* are
treated as absent: each window is renormalised over its valid neighbours (METHODS §10 A2; a no-op
on data without ignore labels). Targets built from the labels carry no gradient and are computed
once per call. The Gaussian label filtering and the chunked autograd kernels behind these
formulas are in :mod:`calibrant.losses._neighbor`.

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

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from calibrant._checks import check_choice
from calibrant._tensor import (
    PADDINGS,
    float32,
    neighbor_proportions,
    reduce,
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
from calibrant.losses._neighbor import (
    _check_kernel,
    _filtered_one_hot,
    _gaussian_1d,
    _gaussian_filter,
    _L1ToTarget,
    _ScaledL1Chunks,
    _ScaledL1Sum,
    _SoftTargetCE,
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


def _smoothed_targets(
    target: torch.Tensor,
    num_classes: int,
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
        target, num_classes, kernel_size, sigma, "replicate", ignore_index, dtype
    )


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
        # svls_targets, checked above; float64 logits get targets built in float64, not rounded
        t = _smoothed_targets(target, x.shape[1], kernel_size, sigma, "replicate", ignore, x.dtype)
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
    return _nacl_targets(target, num_classes, kernel, kernel_size, sigma, padding, ignore_index)


def _nacl_targets(
    target: torch.Tensor,
    num_classes: int,
    kernel: str,
    kernel_size: int,
    sigma: float,
    padding: str,
    ignore_index: int | None,
) -> torch.Tensor:
    """:func:`nacl_targets` of checked arguments."""
    if kernel == "mean":
        return neighbor_proportions(
            target, num_classes, kernel_size=kernel_size, padding=padding, ignore_index=ignore_index
        )
    return _smoothed_targets(target, num_classes, kernel_size, sigma, padding, ignore_index)


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
        k = x.shape[1]
        tau = _nacl_targets(target, k, kernel, kernel_size, sigma, padding, ignore_index)
        tau = tau.to(x.dtype)  # nacl_targets of the arguments checked above
        z = F.softmax(x, dim=1) if on == "probs" else x
        if distance == "l1":
            values = _L1ToTarget.apply(z, tau)
        else:
            values = (z - tau).square().sum(1)
        if class_reduction == "mean":
            values = values / k
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
