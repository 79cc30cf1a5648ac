"""Reliability curves of the whole prediction and of its inner vs boundary pixels.

Example:
    >>> import torch
    >>> curves = RegionReliabilityCurves(n_bins=5)
    >>> curves.update(torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8)))
    >>> sorted(curves.compute())
    ['all', 'boundary', 'inner']
    >>> int(curves.compute()["all"].count.sum())
    128
"""

from __future__ import annotations

import torch

from calibrant._tensor import boundary_mask, valid_mask
from calibrant.metrics._curve import ReliabilityCurve
from calibrant.metrics.calibration import CalibrationError
from calibrant.metrics.classwise import ClasswiseCalibrationError

__all__ = ["RegionReliabilityCurves", "region_masks"]


def region_masks(
    target: torch.Tensor, *, kernel_size: int = 3, ignore_index: int | None = -100
) -> dict[str, torch.Tensor]:
    """Split the non-ignored pixels into ``"inner"`` and ``"boundary"`` (k x k label window).

    A pixel is *boundary* when its ``k^d`` window (label-0 padded, ignored neighbours skipped)
    holds two or more labels (:func:`calibrant._tensor.boundary_mask`), otherwise *inner*.
    Ignored pixels are in neither region.

    Args:
        target: integer labels.
        kernel_size: odd window size.
        ignore_index: label to skip.

    Shape:
        target ``(B, *spatial)``; masks are bool ``(B, *spatial)``.

    Returns:
        ``{"inner": mask, "boundary": mask}``.

    Example:
        >>> y = torch.tensor([[[1, 1, 1, 1]] * 4])
        >>> region_masks(y)["inner"].int()
        tensor([[[0, 0, 0, 0],
                 [0, 1, 1, 0],
                 [0, 1, 1, 0],
                 [0, 0, 0, 0]]], dtype=torch.int32)
    """
    _, valid = valid_mask(target, ignore_index)
    boundary = boundary_mask(target, kernel_size=kernel_size, ignore_index=ignore_index)
    return {"inner": valid & ~boundary, "boundary": boundary & valid}


class RegionReliabilityCurves:
    """Streaming reliability curves for the report: top-label, inner vs boundary, per class.

    Holds one :class:`~calibrant.metrics.CalibrationError` per pixel set (state ``O(n_bins)``)
    and returns ``{"all": curve, "inner": curve, "boundary": curve}`` (regions only for
    segmentation targets, from the label window of ``kernel_size``). With ``num_classes`` it
    also keeps a :class:`~calibrant.metrics.ClasswiseCalibrationError` and adds
    ``"class_<k>"``: class k's probability against the frequency of label k, over all
    non-ignored elements.
    """

    def __init__(
        self,
        *,
        n_bins: int = 15,
        ignore_index: int | None = -100,
        regions: bool = True,
        kernel_size: int = 3,
        num_classes: int | None = None,
    ) -> None:
        names = ("all", "inner", "boundary") if regions else ("all",)
        self.parts = {n: CalibrationError(n_bins, ignore_index=ignore_index) for n in names}
        if num_classes is not None:
            self.parts["classwise"] = ClasswiseCalibrationError(
                num_classes, n_bins, ignore_index=ignore_index
            )
        self.ignore_index, self.kernel_size = ignore_index, kernel_size

    def to(self, device):
        """Move the states."""
        for m in self.parts.values():
            m.to(device)
        return self

    def reset(self) -> None:
        """Forget everything seen."""
        for m in self.parts.values():
            m.reset()

    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch; regions need at least one spatial dim."""
        self.parts["all"].update(logits, target)
        if "classwise" in self.parts:
            self.parts["classwise"].update(logits, target)
        if "boundary" in self.parts and target.dim() >= 2:
            masks = region_masks(
                target, kernel_size=self.kernel_size, ignore_index=self.ignore_index
            )
            for region, mask in masks.items():
                self.parts[region].update(logits, target, mask=mask)

    def compute(self) -> dict[str, ReliabilityCurve]:
        """Curves over everything seen on all ranks."""
        curves = {}
        for name, metric in self.parts.items():
            with metric.sync_context():
                if name == "classwise":
                    curves.update({f"class_{k}": c for k, c in enumerate(metric.curves())})
                else:
                    curves[name] = metric.curve()
        return curves
