"""Joint image/label augmentations for 2D and 3D samples, seeded through a ``torch.Generator``.

Each transform is a callable ``(image, label) -> (image, label)`` on one sample: ``image`` is
``(C, *spatial)`` float and ``label`` is ``(*spatial)`` integer (segmentation), ``None`` or any
non-spatial target (classification; passed through). Geometric transforms move image and label
together; intensity transforms touch the image only. All randomness comes from the transform's
``generator`` so a run is reproducible. A ``DataLoader`` with workers copies the generator into
each worker; give each worker its own seed (``worker_init_fn``) if the streams must differ.
The random transforms are dataclasses: their parameters are written once, as their fields.

Example:
    >>> g = torch.Generator().manual_seed(0)
    >>> aug = Compose([RandomFlip(p=0.5, generator=g), RandomRot90(generator=g)])
    >>> img, lab = torch.arange(16.0).view(1, 4, 4), torch.arange(16).view(4, 4)
    >>> out_img, out_lab = aug(img, lab)
    >>> bool((out_img[0] == out_lab.float()).all())  # label moved with the image
    True
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from calibrant._checks import check_positive

__all__ = ["Compose", "RandomFlip", "RandomRot90", "RandomIntensity", "RandomAffine2d"]


def _rand(generator: torch.Generator | None) -> float:
    return float(torch.rand((), generator=generator))


def _is_spatial(label: object, image: torch.Tensor) -> bool:
    return isinstance(label, torch.Tensor) and tuple(label.shape) == tuple(image.shape[1:])


class Compose:
    """Apply transforms in order.

    Example:
        >>> Compose([])(torch.ones(1, 2, 2), None)[0].shape
        torch.Size([1, 2, 2])
    """

    def __init__(self, transforms: Sequence[Callable]) -> None:
        self.transforms = list(transforms)

    def __call__(self, image: torch.Tensor, label=None):
        """Return the transformed ``(image, label)``."""
        for t in self.transforms:
            image, label = t(image, label)
        return image, label


@dataclass(eq=False)
class RandomFlip:
    """Flip each spatial axis independently with probability ``p``.

    Args:
        p: flip probability per axis.
        axes: spatial axes to consider (0-based over ``*spatial``); default all.
        generator: source of randomness.

    Example:
        >>> g = torch.Generator().manual_seed(1)
        >>> RandomFlip(p=1.0, generator=g)(torch.arange(3.0).view(1, 3), torch.arange(3))[1]
        tensor([2, 1, 0])
    """

    p: float = 0.5
    axes: Sequence[int] | None = None
    generator: torch.Generator | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.p <= 1.0:
            raise ValueError(f"p must lie in [0, 1], got {self.p}")

    def __call__(self, image: torch.Tensor, label=None):
        """Return the transformed ``(image, label)``."""
        spatial = image.ndim - 1
        axes = range(spatial) if self.axes is None else self.axes
        flip = [a for a in axes if _rand(self.generator) < self.p]
        if flip:
            image = image.flip([a + 1 for a in flip])
            if _is_spatial(label, image):
                label = label.flip(flip)
        return image, label


@dataclass(eq=False)
class RandomRot90:
    """Rotate by a uniformly drawn multiple of 90° in a plane of two spatial axes.

    Rotations by 90° or 270° swap the two axes, so use this on square planes when samples are
    batched. For 3D samples the plane is drawn uniformly from ``planes``.

    Args:
        planes: pairs of spatial axes; default ``[(0, 1)]`` in 2D (use e.g. ``[(1, 2)]`` for the
            in-plane axes of a ``(D, H, W)`` volume).
        generator: source of randomness.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> img = torch.arange(4.0).view(1, 2, 2)
        >>> out, lab = RandomRot90(generator=g)(img, img[0].long())
        >>> bool((out[0].long() == lab).all())
        True
    """

    planes: Sequence[tuple[int, int]] | None = None
    generator: torch.Generator | None = None

    def __call__(self, image: torch.Tensor, label=None):
        """Return the transformed ``(image, label)``."""
        planes = self.planes or [(0, 1)]
        plane = planes[int(torch.randint(len(planes), (), generator=self.generator))]
        k = int(torch.randint(4, (), generator=self.generator))
        if k:
            image = torch.rot90(image, k, [plane[0] + 1, plane[1] + 1])
            if isinstance(label, torch.Tensor) and label.ndim == image.ndim - 1:
                label = torch.rot90(label, k, list(plane))
        return image, label


@dataclass(eq=False)
class RandomIntensity:
    """Image-only intensity jitter ``x * s + t``.

    ``s ~ U[1 - scale, 1 + scale]`` and ``t ~ U[-shift, shift]``, one draw per sample.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> out, lab = RandomIntensity(0.0, 0.0, generator=g)(torch.ones(1, 2), "y")
        >>> out.tolist(), lab
        ([[1.0, 1.0]], 'y')
    """

    scale: float = 0.1
    shift: float = 0.1
    generator: torch.Generator | None = None

    def __post_init__(self) -> None:
        check_positive("scale", self.scale, strict=False)
        check_positive("shift", self.shift, strict=False)

    def __call__(self, image: torch.Tensor, label=None):
        """Return the transformed ``(image, label)``."""
        s = 1.0 + self.scale * (2 * _rand(self.generator) - 1)
        t = self.shift * (2 * _rand(self.generator) - 1)
        return image * s + t, label


@dataclass(eq=False)
class RandomAffine2d:
    """Random 2D rotation, isotropic scale and translation (bilinear image, nearest label).

    Pixels that come from outside the image get ``fill`` in the image and ``label_fill`` in the
    label (background by default).

    Args:
        degrees: rotation angle drawn from ``U[-degrees, degrees]``.
        scale: zoom drawn from ``U[1-scale, 1+scale]``.
        translate: shift as a fraction of the size, drawn from ``U[-translate, translate]``.
        p: probability of applying the transform.
        fill: image value outside the field of view.
        label_fill: label value outside the field of view.
        generator: source of randomness.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> img = torch.rand(1, 8, 8, generator=g); lab = (img[0] > 0.5).long()
        >>> out, olab = RandomAffine2d(0.0, 0.0, 0.0, generator=g)(img, lab)  # identity
        >>> bool(torch.allclose(out, img, atol=1e-5)), bool((olab == lab).all())
        (True, True)
    """

    degrees: float = 15.0
    scale: float = 0.1
    translate: float = 0.05
    p: float = 1.0
    fill: float = 0.0
    label_fill: int = 0
    generator: torch.Generator | None = None

    def __post_init__(self) -> None:
        for name in ("degrees", "scale", "translate"):
            check_positive(name, getattr(self, name), strict=False)

    def __call__(self, image: torch.Tensor, label=None):
        """Return the transformed ``(image, label)``."""
        if image.ndim != 3:
            raise ValueError(f"RandomAffine2d expects an image (C, H, W), got {tuple(image.shape)}")
        if _rand(self.generator) >= self.p:
            return image, label
        u = [2 * _rand(self.generator) - 1 for _ in range(4)]
        angle = math.radians(self.degrees * u[0])
        zoom = 1.0 + self.scale * u[1]
        tx, ty = 2 * self.translate * u[2], 2 * self.translate * u[3]
        c, s = math.cos(angle) / zoom, math.sin(angle) / zoom
        theta = image.new_tensor([[c, -s, tx], [s, c, ty]], dtype=torch.float32)[None]
        grid = F.affine_grid(theta, [1, *image.shape], align_corners=False)
        x = image.float()[None]
        out = F.grid_sample(x - self.fill, grid, mode="bilinear", align_corners=False)[0]
        out = (out + self.fill).to(image.dtype)
        if _is_spatial(label, image):
            lab = (label - self.label_fill).to(torch.float32)[None, None]
            lab = F.grid_sample(lab, grid, mode="nearest", align_corners=False)[0, 0]
            label = (lab.round().to(label.dtype) + self.label_fill).to(label.dtype)
        return out, label
