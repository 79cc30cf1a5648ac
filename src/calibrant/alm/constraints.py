r"""Constraints of the ALM methods: ``(logits, target) -> violations``.

A constraint maps logits ``(B, K, *spatial)`` and labels ``(B, *spatial)`` to one violation per
element and class, ``h`` of shape ``(B, K, *spatial)`` (``h <= 0`` is satisfied), plus the
validity mask (ignored pixels never enter) and, for the neighbourhood constraint, each pixel's
region (inner or boundary). Which multiplier each entry uses is the business of a slot layout
(:mod:`calibrant.alm.layouts`).

Example:
    >>> import torch
    >>> from calibrant.alm.constraints import NeighborConstraint
    >>> y = torch.tensor([[[0, 0, 0, 1], [0, 0, 0, 1], [0, 0, 0, 1]]])
    >>> v = NeighborConstraint(inner_target_scale=5.0)(torch.zeros(1, 2, 3, 4), y)
    >>> v.region.int()  # 1 = boundary
    tensor([[[0, 0, 1, 1],
             [0, 0, 1, 1],
             [0, 0, 1, 1]]], dtype=torch.int32)
    >>> round(v.h[0, 0, 1, 0].item(), 4), round(v.h[0, 0, 1, 2].item(), 4)  # |5·1 - 0|, |6/9 - 0|
    (5.0, 0.6667)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch

from calibrant._checks import check_choice, check_logits_target, check_positive
from calibrant._tensor import (
    PADDINGS,
    boundary_mask,
    neighbor_proportions,
    valid_mask,
    window_counts,
)

__all__ = [
    "Violations",
    "margin_violation",
    "neighbor_violation",
    "MarginConstraint",
    "NeighborConstraint",
]


class Violations(NamedTuple):
    """Output of a constraint.

    Attributes:
        h: float32 violations ``(B, K, *spatial)``, ``h <= 0`` satisfied.
        mask: bool ``(B, *spatial)``, True where the pixel is not ignored.
        region: bool ``(B, *spatial)``, True = boundary (region 1), or ``None`` when the
            constraint defines no regions.
    """

    h: torch.Tensor
    mask: torch.Tensor
    region: torch.Tensor | None


def margin_violation(
    logits: torch.Tensor, *, margin: float = 10.0, normalize: bool = True
) -> torch.Tensor:
    r"""CALS margin constraint: the logit distance to the maximum may not exceed ``m``.

    .. math::
        h_{ik} = \frac{\max_j l_{ij} - l_{ik} - m}{m} \quad (\text{or } d_{ik} - m
        \text{ when } \texttt{normalize=False})

    The arg-max column always has ``h = -1`` (normalised), i.e. it is satisfied.

    Args:
        logits: ``(B, K, *spatial)``.
        margin: ``m > 0``.
        normalize: divide by ``m`` (the CALS code's ``normalize=True``, METHODS.md F2).

    Returns:
        float32 ``(B, K, *spatial)``.

    Example:
        >>> margin_violation(torch.tensor([[0.0, 4.0, 10.0]]), margin=5.0)
        tensor([[ 1.0000,  0.2000, -1.0000]])
    """
    check_positive("margin", margin)
    x = logits.float()
    h = x.amax(dim=1, keepdim=True) - x - margin
    return h / margin if normalize else h


def neighbor_violation(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    kernel_size: int = 3,
    inner_target_scale: float = 1.0,
    padding: str = "label0",
    ignore_index: int | None = -100,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""NACL/CRaC neighbourhood constraint and the region of each pixel.

    .. math::
        h_{ik} = |s_i \tau_{ik} - l_{ik}|, \qquad
        s_i = \begin{cases} \texttt{inner\_target\_scale} & i \text{ inner} \\
        1 & i \text{ boundary} \end{cases}

    ``τ`` is the class proportion in the ``k^d`` window
    (:func:`calibrant._tensor.neighbor_proportions`); a pixel is *boundary* when its window
    (label-0 padded) holds at least two distinct labels
    (:func:`calibrant._tensor.boundary_mask`, the intended test of METHODS.md B1, not the research
    code's float-rounding artefact). ``h >= 0`` always (METHODS.md B3).

    Args:
        logits: ``(B, K, *spatial)``, 1 to 3 spatial dims.
        target: ``(B, *spatial)`` integer labels.
        kernel_size: odd window size (3 in the papers).
        inner_target_scale: ``s`` for inner pixels (the CRaC code's "margin": 5 in the published
            runs, 1 for NACL and the pure-poster variant; METHODS.md B2).
        padding: out-of-image neighbours for ``τ``: ``"label0"`` (research code), ``"zeros"``
            (MONAI), ``"replicate"``.
        ignore_index: ignored label, or ``None``.

    Returns:
        ``h`` float32 ``(B, K, *spatial)`` and ``boundary`` bool ``(B, *spatial)``.

    Example:
        >>> y = torch.tensor([[0, 0, 0, 1, 1]])
        >>> h, b = neighbor_violation(torch.zeros(1, 2, 5), y, inner_target_scale=2.0)
        >>> b.tolist(), [round(x, 3) for x in h[0, 1].tolist()]  # label-0 padding: last is boundary
        ([[False, False, True, True, True]], [0.0, 0.0, 0.333, 0.667, 0.667])
    """
    check_positive("inner_target_scale", inner_target_scale, strict=False)
    check_choice("padding", padding, PADDINGS)
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd integer, got {kernel_size}")
    num_classes = logits.shape[1]
    x = logits.float()
    if padding != "label0":
        tau = neighbor_proportions(
            target, num_classes, kernel_size=kernel_size, padding=padding, ignore_index=ignore_index
        )
        boundary = boundary_mask(target, kernel_size=kernel_size, ignore_index=ignore_index)
        if inner_target_scale != 1.0:
            tau = torch.where(boundary.unsqueeze(1), tau, tau * inner_target_scale)
        return (tau - x).abs(), boundary
    # Fast path (label-0 padding, the research code's convention): one window sum of the one-hot
    # labels gives both the proportions and the region. A valid pixel is boundary exactly when no
    # class holds all its valid neighbours, i.e. when the window has >= 2 distinct labels; this
    # equals calibrant._tensor.boundary_mask (tested exhaustively against it and against loops).
    safe, mask = valid_mask(target, ignore_index)
    classes = torch.arange(num_classes, device=target.device).view(1, -1, *([1] * (x.dim() - 2)))
    onehot = (safe.unsqueeze(1) == classes) & mask.unsqueeze(1)
    counts = _window_sum(onehot.to(x.dtype), kernel_size)  # in-image neighbours only
    outside = _outside_count(target.shape[1:], kernel_size, x)  # padded neighbours: label 0
    counts[:, :1] += outside
    n_valid = _window_sum(mask.unsqueeze(1).to(x.dtype), kernel_size) + outside
    boundary = (counts.amax(1, keepdim=True) < n_valid) & mask.unsqueeze(1)
    scale = torch.where(boundary, 1.0, float(inner_target_scale)) / n_valid.clamp_min(1.0)
    return (torch.addcmul(-x, counts, scale)).abs_(), boundary.squeeze(1)


@torch.no_grad()
def neighbor_parts(
    target: torch.Tensor,
    mask: torch.Tensor | None,
    num_classes: int,
    *,
    kernel_size: int = 3,
    inner_target_scale: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""The label-0 neighbourhood constraint in factored form: ``h = |counts · f − l|``.

    Args:
        target: int64 labels ``(B, *spatial)``, ignored entries already replaced by 0.
        mask: bool ``(B, *spatial)`` of valid pixels, or ``None`` when nothing is ignored.
        num_classes: ``K``.
        kernel_size: odd window size.
        inner_target_scale: ``s``.

    Returns:
        ``counts`` ``(B, K, *spatial)`` (``uint8`` when nothing is ignored, else float32),
        ``f`` float32 ``(B, 1, *spatial)`` = ``s_i / n_valid(i)`` and ``boundary`` float32
        ``(B, *spatial)`` (1 = boundary, 0 = inner; float because the fused kernels multiply
        by it and bool-to-float conversions are slow on CPU), so that
        :func:`neighbor_violation` is ``|counts · f − l|`` and its region is ``boundary == 1``.
    """
    nd = target.dim() - 1
    if mask is None:
        counts = window_counts(target, num_classes, kernel_size=kernel_size, padding="label0")
        size = kernel_size**nd
        # Inner <=> one class fills the whole window (label-0 padding counts as class 0). The
        # class max over the integer counts is one fast pass, and the comparison writes its
        # {0, 1} result straight into float32 (no bool tensor, no conversion pass).
        most = counts.amax(1)
        boundary = torch.lt(most, size, out=most.new_empty(most.shape, dtype=torch.float32))
        inner = float(inner_target_scale) / size
        f = torch.mul(boundary, 1.0 / size - inner).add_(inner).unsqueeze(1)
        return counts, f, boundary
    classes = torch.arange(num_classes, device=target.device).view(1, -1, *([1] * nd))
    onehot = (target.unsqueeze(1) == classes) & mask.unsqueeze(1)
    counts = _window_sum(onehot.float(), kernel_size)
    outside = _outside_count(target.shape[1:], kernel_size, counts)
    counts[:, :1] += outside
    n_valid = _window_sum(mask.unsqueeze(1).float(), kernel_size) + outside
    boundary = (counts.amax(1, keepdim=True) < n_valid) & mask.unsqueeze(1)
    f = torch.where(boundary, 1.0, float(inner_target_scale)) / n_valid.clamp_min(1.0)
    return counts, f, boundary.squeeze(1).float()


def _window_sum(x: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Zero-padded ``k^d`` box sum over the spatial dims of ``(B, C, *spatial)`` (separable)."""
    r = kernel_size // 2
    for dim in range(2, x.dim()):
        n = x.shape[dim]
        pad = [0, 0] * (x.dim() - dim - 1) + [r, r]
        p = torch.nn.functional.pad(x, pad)
        out = p.narrow(dim, 0, n).clone()
        for shift in range(1, kernel_size):
            out += p.narrow(dim, shift, n)
        x = out
    return x


def _outside_count(spatial: torch.Size, kernel_size: int, like: torch.Tensor) -> torch.Tensor:
    """Number of out-of-image positions in each pixel's window, ``(1, 1, *spatial)``."""
    ones = like.new_ones((1, 1, *spatial))
    return kernel_size ** len(spatial) - _window_sum(ones, kernel_size)


def _check(logits: torch.Tensor, target: torch.Tensor, ignore_index: int | None) -> torch.Tensor:
    check_logits_target(logits, target)
    return valid_mask(target, ignore_index)[1]


@dataclass(frozen=True)
class MarginConstraint:
    """Configured :func:`margin_violation` (CALS-ALM, CALS-HR); defines no regions.

    Args:
        margin: ``m`` (10 for CALS, METHODS.md F1).
        normalize: divide by ``m``.
    """

    margin: float = 10.0
    normalize: bool = True
    has_regions = False

    def __post_init__(self) -> None:
        check_positive("margin", self.margin)

    def __call__(
        self, logits: torch.Tensor, target: torch.Tensor, ignore_index: int | None = -100
    ) -> Violations:
        """Violations of ``logits`` against ``target`` (the target only supplies the mask)."""
        mask = _check(logits, target, ignore_index)
        return Violations(
            margin_violation(logits, margin=self.margin, normalize=self.normalize), mask, None
        )


@dataclass(frozen=True)
class NeighborConstraint:
    """Configured :func:`neighbor_violation` (NACL, CRaC).

    Args:
        kernel_size: odd window size.
        inner_target_scale: target scale of inner pixels (CRaC runs: 5).
        padding: padding of the proportion target.
    """

    kernel_size: int = 3
    inner_target_scale: float = 1.0
    padding: str = "label0"
    has_regions = True

    def __post_init__(self) -> None:
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd integer, got {self.kernel_size}")
        check_positive("inner_target_scale", self.inner_target_scale, strict=False)
        check_choice("padding", self.padding, PADDINGS)

    def __call__(
        self, logits: torch.Tensor, target: torch.Tensor, ignore_index: int | None = -100
    ) -> Violations:
        """Violations and regions of ``logits`` against ``target``."""
        mask = _check(logits, target, ignore_index)
        h, boundary = neighbor_violation(
            logits,
            target,
            kernel_size=self.kernel_size,
            inner_target_scale=self.inner_target_scale,
            padding=self.padding,
            ignore_index=ignore_index,
        )
        return Violations(h, mask, boundary)
