r"""BWCR: boundary-weighted logit consistency between two views (Karani et al., MICCAI 2023).

The loss compares the logits of two augmented views mapped back to the original frame,
weighted by :func:`boundary_weight_map`, which is high near the class boundaries (METHODS §2.8).
The training engine draws the views (``inputs="two_view"`` in the registry) and forms the total
with the two supervised terms.

Example:
    >>> import torch
    >>> y = torch.tensor([[0, 0, 1, 1, 1, 1, 1, 0]])
    >>> a = torch.zeros(1, 2, 8)
    >>> round(float(bwcr_consistency(a, a + 1.0, y)), 4)  # mean of w over the pixels
    0.8725
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from calibrant._checks import check_choice, check_positive
from calibrant._tensor import float32, reduce
from calibrant.losses._base import CLASS_REDUCTIONS, ThinLoss, as_float, prepare, reduce_classes
from calibrant.registry import LOSSES

__all__ = ["boundary_weight_map", "bwcr_consistency", "BWCRConsistency"]


def _floor_sdt(fg: np.ndarray) -> np.ndarray:
    """Floored signed distance (positive inside), boundary pixels of the region set to 0."""
    inside = np.floor(ndimage.distance_transform_edt(fg))
    outside = np.floor(ndimage.distance_transform_edt(~fg))
    sdt = inside - outside
    # Boundary: region pixels whose nearest outside pixel is a direct neighbour (distance 1).
    sdt[fg & (inside <= 1)] = 0
    return sdt


@torch.no_grad()
def boundary_weight_map(
    target: torch.Tensor,
    num_classes: int,
    *,
    radius: float = 10.0,
    l_max: float = 1.0,
    l_min: float = 0.01,
    alpha: float = 1.0,
    ignore_index: int | None = -100,
) -> torch.Tensor:
    r"""BWCR boundary weight :math:`w = \max_{c \ge 1} \lambda_c`, high near class boundaries.

    .. math::
        \lambda_c(x) = l_{max} \left(\frac{\max(R - |sdt_c(x)|, 0)}{R}\right)^\alpha + l_{min}

    :math:`sdt_c` is the floored signed Euclidean distance to the boundary of foreground class c
    (positive inside, 0 on the boundary), per sample over all its spatial dims (the official code
    works on 2D slices). A class that is absent or has no interior pixel (max sdt < 1) gets
    :math:`\lambda_c \equiv l_{min}`. Ignored pixels count as background here. Computed on CPU
    with SciPy (labels only, no gradient).

    Args:
        target: integer labels ``(B, *spatial)``.
        num_classes: K; classes 1..K−1 are foreground.
        radius: R (10).
        l_max: weight added at the boundary (1).
        l_min: floor weight (0.01).
        alpha: exponent (1).
        ignore_index: label treated as background.

    Returns:
        ``(B, *spatial)`` float32 on ``target``'s device.

    Example:
        >>> y = torch.tensor([[0, 0, 1, 1, 1, 1, 1, 0]])
        >>> [round(v, 3) for v in boundary_weight_map(y, 2)[0].tolist()]
        [0.81, 0.91, 1.01, 0.81, 0.71, 0.81, 1.01, 0.91]
    """
    check_positive("radius", radius)
    y = target.detach().cpu().long().numpy()
    if ignore_index is not None:
        y = np.where(y == ignore_index, 0, y)
    w = np.full(y.shape, l_min, dtype=np.float64)
    for b in range(y.shape[0]):
        for c in range(1, num_classes):
            fg = y[b] == c
            if not fg.any():
                continue
            sdt = _floor_sdt(fg)
            if sdt.max() < 1:
                continue
            lam = l_max * (np.maximum(radius - np.abs(sdt), 0.0) / radius) ** alpha + l_min
            np.maximum(w[b], lam, out=w[b])
    return torch.from_numpy(w).float().to(target.device)


def bwcr_consistency(
    logits: torch.Tensor,
    logits2: torch.Tensor,
    target: torch.Tensor,
    valid: torch.Tensor | None = None,
    valid2: torch.Tensor | None = None,
    *,
    radius: float = 10.0,
    l_max: float = 1.0,
    l_min: float = 0.01,
    alpha: float = 1.0,
    weighted: bool = True,
    class_reduction: str = "mean",
    ignore_index: int | None = -100,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""BWCR boundary-weighted logit consistency between two views mapped back to one frame.

    .. math::
        \ell_i = m^{(1)}_i m^{(2)}_i \, w_i \, \frac{1}{K} \sum_k (z^{(1)}_{ik} - z^{(2)}_{ik})^2

    ``w`` = :func:`boundary_weight_map` (``weighted=False``: w ≡ 1, plain logit consistency). The
    validity masks zero pixels that fell outside a transformed image but, as in the official
    code, do not change the denominator of the mean (all non-ignored pixels). Gradients flow into
    both views. The training engine draws the transforms and forms the total
    ``(l0·sup0 + l1·sup1 + l2·cons)/(l0+l1+l2)``.

    Args:
        logits: first view's logits, inverse-mapped to the original frame.
        logits2: second view's logits, same frame and shape.
        target: labels in the original frame.
        valid: bool/float mask ``(B, *spatial)`` of view-1 pixels inside the image (or ``None``).
        valid2: same for view 2.
        radius: R of the weight map (10).
        l_max: 1.
        l_min: 0.01.
        alpha: 1.
        weighted: use the boundary weight map.
        class_reduction: ``"mean"`` (code) | ``"sum"``.
        ignore_index: label whose elements are ignored, or ``None``.
        reduction: ``"mean"`` | ``"sum"`` | ``"none"``.

    Shape:
        logits, logits2 ``(B, C, *spatial)`` (1 to 3 spatial dims), target/valid
        ``(B, *spatial)``; ``"none"`` gives ``(B, *spatial)``.

    Example:
        >>> a, y = torch.zeros(1, 2, 5), torch.tensor([[0, 1, 1, 1, 0]])
        >>> bwcr_consistency(a, a + 1.0, y, weighted=False)
        tensor(1.)

    Reference:
        Karani et al., "Boundary-weighted logit consistency improves calibration of segmentation
        networks", MICCAI 2023; METHODS §2.8.
    """
    if logits2.shape != logits.shape:
        raise ValueError(
            f"logits2 shape {tuple(logits2.shape)} must equal logits shape {tuple(logits.shape)}"
        )
    check_choice("class_reduction", class_reduction, CLASS_REDUCTIONS)
    with float32(logits):
        x1, _, mask = prepare(logits, target, ignore_index, min_spatial=1)
        x2, _, _ = prepare(logits2, target, ignore_index, min_spatial=1)
        values = reduce_classes((x1 - x2).square(), class_reduction)
        for name, v in (("valid", valid), ("valid2", valid2)):
            if v is None:
                continue
            if tuple(v.shape) != tuple(target.shape):
                raise ValueError(
                    f"{name} shape {tuple(v.shape)} must equal target shape {tuple(target.shape)}"
                )
            values = values * as_float(v.to(values.dtype))
        if weighted:
            w = boundary_weight_map(
                target,
                x1.shape[1],
                radius=radius,
                l_max=l_max,
                l_min=l_min,
                alpha=alpha,
                ignore_index=ignore_index,
            )
            values = values * w.to(values.dtype)
        return reduce(values, mask, reduction)


@LOSSES.register(
    "bwcr",
    function=bwcr_consistency,
    inputs="two_view",
    task="multiclass",
    granularity="element",
    spatial=True,
)
class BWCRConsistency(ThinLoss, fn=bwcr_consistency, positional=True):
    """Module form of :func:`bwcr_consistency`, registered as ``bwcr`` (the official defaults).

    ``forward(logits, logits2, target, valid=None, valid2=None)``.
    """
