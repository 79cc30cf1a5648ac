r"""BWCR's augmented views: random affine views of an image batch and the two-view objective.

This module is the augmentation half of BWCR (boundary-weighted logit consistency, Karani et
al., MICCAI 2023): each training image is seen in two randomly transformed views, and the loss
compares the views' logits once they are mapped back to the original frame. The consistency
term itself is :func:`calibrant.losses.bwcr.bwcr_consistency`. A loss registered with
``inputs="two_view"`` is wrapped in :func:`two_view_objective`; BWCR is the only one today.

A :class:`View` holds one random 2D affine transform per sample (rotation, isotropic zoom,
translation) and an intensity change ``x·gain + bias``. :func:`apply_view` warps a batch
``(B, C, H, W)`` into the view (bilinear, zeros outside); :func:`invert_view` maps the view's
logits back to the original frame with the inverse transform (bilinear) and returns the validity
mask of the pixels that came from inside the transformed image. Samples whose geometric part is
the identity are copied, not resampled, so the identity view is exact.

In pixel coordinates centred on the image (x = column, y = row), view pixel ``p`` shows source
pixel

.. math::
    q = M p + t, \qquad M = \frac{1}{s}\begin{pmatrix}\cos a & -\sin a\\ \sin a & \cos a
    \end{pmatrix}, \qquad t = (t_x W, t_y H),

and the inverse map is ``p = M^{-1}(q - t)``. Both are converted to the normalised coordinates of
:func:`torch.nn.functional.affine_grid` (``align_corners=False``), so non-square images rotate
without shear.

:class:`TwoViewObjective` is the BWCR objective (METHODS §2.8)

.. math::
    \mathcal{L} = \frac{l_0\,\mathrm{sup}_0 + l_1\,\mathrm{sup}_1 + l_2\,\mathrm{cons}}
    {l_0 + l_1 + l_2}

with ``sup0`` the CE of the original view, ``sup1`` the CE of view 1 mapped back and masked by
``m1``, ``cons`` a two-view consistency term such as
:func:`calibrant.losses.bwcr.bwcr_consistency` ``(z1, z2, y, m1, m2)``. It implements the
engine's ``train_step`` hook (see ``docs/engine.md``), so the training loop never names BWCR.

Example:
    >>> g = torch.Generator().manual_seed(0)
    >>> x = torch.rand(4, 1, 16, 16, generator=g)
    >>> view = sample_views(4, (16, 16), generator=g)
    >>> back, valid = invert_view(apply_view(x, view, intensity=False), view)
    >>> back.shape, valid.shape, valid.dtype
    (torch.Size([4, 1, 16, 16]), torch.Size([4, 16, 16]), torch.bool)
    >>> ident = make_view(torch.zeros(1), torch.ones(1), torch.zeros(1, 2), (16, 16))
    >>> bool(torch.equal(invert_view(apply_view(x[:1], ident), ident)[0], x[:1]))
    True

Reference:
    Karani et al., "Boundary-weighted logit consistency improves calibration of segmentation
    networks", MICCAI 2023; METHODS §2.8.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from calibrant._checks import check_choice, check_positive
from calibrant._tensor import Forward, float32, reduce
from calibrant.losses._base import CLASS_REDUCTIONS, prepare

__all__ = [
    "View",
    "make_view",
    "sample_views",
    "apply_view",
    "invert_view",
    "masked_cross_entropy",
    "TwoViewObjective",
    "two_view_objective",
]

#: Tolerance of the validity mask: a pixel is valid when the warped ones image is >= 1 - _TOL.
_TOL = 1e-3


@dataclass
class View:
    """Per-sample view parameters of a batch (all float64 on CPU, shape ``(B,)`` or ``(B, 2)``).

    Attributes:
        angle: rotation in radians.
        zoom: isotropic zoom ``s`` (> 1 magnifies).
        shift: translation ``(t_x, t_y)`` as fractions of the width and height.
        gain: intensity gain.
        bias: intensity offset.
        size: ``(H, W)``.
        theta: ``(B, 2, 3)`` forward map for :func:`~torch.nn.functional.affine_grid`.
        theta_inv: ``(B, 2, 3)`` inverse map.
        geometric: ``(B,)`` bool, False where the geometric part is the identity.
    """

    angle: torch.Tensor
    zoom: torch.Tensor
    shift: torch.Tensor
    gain: torch.Tensor
    bias: torch.Tensor
    size: tuple[int, int]
    theta: torch.Tensor
    theta_inv: torch.Tensor
    geometric: torch.Tensor


def make_view(
    angle: torch.Tensor,
    zoom: torch.Tensor,
    shift: torch.Tensor,
    size: tuple[int, int],
    gain: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
) -> View:
    """Build a :class:`View` from explicit parameters (see the module docstring for the maths).

    Args:
        angle: ``(B,)`` radians.
        zoom: ``(B,)`` positive zoom factors.
        shift: ``(B, 2)`` translation as fractions of ``(W, H)``.
        size: ``(H, W)`` of the images.
        gain: ``(B,)`` intensity gain (default 1).
        bias: ``(B,)`` intensity offset (default 0).
    """
    angle, zoom, shift = angle.double().cpu(), zoom.double().cpu(), shift.double().cpu()
    if bool((zoom <= 0).any()):
        raise ValueError(f"zoom must be positive, got {zoom.tolist()}")
    h, w = size
    b = angle.shape[0]
    gain = torch.ones(b, dtype=torch.float64) if gain is None else gain.double().cpu()
    bias = torch.zeros(b, dtype=torch.float64) if bias is None else bias.double().cpu()
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    m = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)  # (B, 2, 2)
    t = shift * torch.tensor([w, h], dtype=torch.float64)  # pixels
    half = torch.tensor([w / 2, h / 2], dtype=torch.float64)  # pixels per normalised unit
    a = m * half[None, None, :] / half[None, :, None]  # S^-1 M S
    a_inv = torch.linalg.inv(a)
    tn = t / half
    theta = torch.cat([a, tn[..., None]], -1)
    theta_inv = torch.cat([a_inv, -(a_inv @ tn[..., None])], -1)
    geometric = (angle != 0) | (zoom != 1) | (shift != 0).any(-1)
    return View(angle, zoom, shift, gain, bias, (h, w), theta, theta_inv, geometric)


def sample_views(
    batch: int,
    size: tuple[int, int],
    *,
    degrees: float = 15.0,
    scale: float = 0.1,
    translate: float = 0.1,
    gain: float = 0.1,
    bias: float = 0.1,
    p: float = 0.5,
    generator: torch.Generator | None = None,
) -> View:
    """Draw one random view per sample; each of the four parts is applied with probability ``p``.

    rotation ``a ~ U[-degrees, degrees]``, zoom ``s ~ U[1-scale, 1+scale]``, translation
    ``t ~ U[-translate, translate]²`` (fraction of the size), intensity ``gain ~ U[1±gain]``,
    ``bias ~ U[±bias]``. Exactly ``10·batch`` numbers are drawn from ``generator`` whatever the
    outcome, so the stream position depends on the batch size only.

    Args:
        batch: number of samples.
        size: ``(H, W)``.
        degrees: maximum rotation.
        scale: maximum relative zoom change (< 1).
        translate: maximum shift as a fraction of the size.
        gain: maximum relative intensity gain change.
        bias: maximum intensity offset.
        p: probability of each part.
        generator: CPU source of randomness.
    """
    for name, v in (("degrees", degrees), ("translate", translate), ("gain", gain)):
        check_positive(name, v, strict=False)
    check_positive("bias", bias, strict=False)
    if not 0 <= scale < 1:
        raise ValueError(f"scale must be in [0, 1), got {scale}")
    if not 0 <= p <= 1:
        raise ValueError(f"p must be in [0, 1], got {p}")
    u = torch.rand(batch, 10, generator=generator, dtype=torch.float64)
    on = u[:, :4] < p  # rotation, zoom, translation, intensity
    sym = 2 * u[:, 4:] - 1  # U[-1, 1]
    angle = torch.where(on[:, 0], torch.deg2rad(degrees * sym[:, 0]), 0.0)
    zoom = torch.where(on[:, 1], 1 + scale * sym[:, 1], 1.0)
    shift = torch.where(on[:, 2, None], translate * sym[:, 2:4], 0.0)
    g = torch.where(on[:, 3], 1 + gain * sym[:, 4], 1.0)
    b = torch.where(on[:, 3], bias * sym[:, 5], 0.0)
    return make_view(angle, zoom, shift, size, g, b)


def _warp(x: torch.Tensor, theta: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Resample the ``rows`` of ``x`` (bilinear, zeros outside); other rows are copied."""
    out = x.clone()
    if rows.numel():
        sub = x[rows]
        grid = F.affine_grid(theta[rows].to(sub), list(sub.shape), align_corners=False)
        out[rows] = F.grid_sample(
            sub, grid, mode="bilinear", padding_mode="zeros", align_corners=False
        )
    return out


def _rows(view: View, x: torch.Tensor) -> torch.Tensor:
    if x.dim() != 4 or tuple(x.shape[2:]) != tuple(view.size) or x.shape[0] != len(view.angle):
        raise ValueError(
            f"expected a batch (B={len(view.angle)}, C, {view.size[0]}, {view.size[1]}), "
            f"got {tuple(x.shape)}"
        )
    return torch.nonzero(view.geometric).flatten().to(x.device)


def apply_view(x: torch.Tensor, view: View, *, intensity: bool = True) -> torch.Tensor:
    """The images seen in ``view``: intensity change, then the geometric warp (float32).

    Shape:
        ``(B, C, H, W)`` in and out.
    """
    rows = _rows(view, x)
    x = x.float()
    if intensity:
        shape = (-1,) + (1,) * (x.dim() - 1)
        x = x * view.gain.to(x).view(shape) + view.bias.to(x).view(shape)
    return _warp(x, view.theta, rows)


def invert_view(logits: torch.Tensor, view: View) -> tuple[torch.Tensor, torch.Tensor]:
    """Map a view's logits back to the original frame; return ``(logits, valid)``.

    ``valid`` (bool ``(B, H, W)``) marks original pixels whose value is made only of view pixels
    that themselves came from inside the image: a ones image warped forward and back stays
    ``>= 1 - 1e-3`` there. It is all True for identity samples.

    Shape:
        logits ``(B, C, H, W)`` (float32 out).
    """
    rows = _rows(view, logits)
    back = _warp(logits.float(), view.theta_inv, rows)
    valid = torch.ones(logits.shape[0], *view.size, dtype=torch.bool, device=logits.device)
    if rows.numel():
        ones = logits.new_ones((rows.numel(), 1, *view.size), dtype=torch.float32)
        theta, theta_inv = view.theta[rows.cpu()], view.theta_inv[rows.cpu()]
        size = list(ones.shape)
        grid = F.affine_grid(theta.to(ones), size, align_corners=False)
        fwd = F.grid_sample(ones, grid, mode="bilinear", align_corners=False)
        grid = F.affine_grid(theta_inv.to(ones), size, align_corners=False)
        round_trip = F.grid_sample(fwd, grid, mode="bilinear", align_corners=False)
        valid[rows] = round_trip[:, 0] >= 1 - _TOL
    return back, valid


def masked_cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    valid: torch.Tensor | None = None,
    *,
    class_reduction: str = "mean",
    ignore_index: int | None = -100,
) -> torch.Tensor:
    r"""Per-pixel CE summed (or averaged) over classes, zeroed outside ``valid``, mean over pixels.

    .. math::
        \ell = \frac{1}{|\Omega|} \sum_{i \in \Omega} m_i \,\frac{1}{K} \sum_k -y_{ik}\log s_{ik}

    ``class_reduction="mean"`` is BWCR's per-class average (CE / K); ``"sum"`` is the usual CE.
    The mask zeroes pixels but does not change the denominator :math:`|\Omega|` (all non-ignored
    pixels), the same convention as :func:`~calibrant.losses.bwcr.bwcr_consistency`; both go
    through :func:`calibrant._tensor.reduce`.

    Args:
        logits: ``(B, K, *spatial)``.
        target: ``(B, *spatial)`` integer labels.
        valid: bool/float mask ``(B, *spatial)`` or ``None``.
        class_reduction: ``"mean"`` (BWCR code) | ``"sum"``.
        ignore_index: label whose elements are ignored, or ``None``.

    Example:
        >>> z, y = torch.zeros(1, 4, 2), torch.tensor([[1, 2]])
        >>> round(masked_cross_entropy(z, y, class_reduction="sum").item(), 4)  # log 4
        1.3863
        >>> round(masked_cross_entropy(z, y, torch.tensor([[1, 0]])).item(), 4)  # log 4 / 4 / 2
        0.1733
    """
    check_choice("class_reduction", class_reduction, CLASS_REDUCTIONS)
    with float32(logits):
        x, safe, mask = prepare(logits, target, ignore_index)
        values = F.cross_entropy(x, safe, reduction="none")
        if class_reduction == "mean":
            values = values / x.shape[1]
        if valid is not None:
            if tuple(valid.shape) != tuple(target.shape):
                raise ValueError(
                    f"valid shape {tuple(valid.shape)} must equal target shape "
                    f"{tuple(target.shape)}"
                )
            values = values * valid.to(values.dtype)
        return reduce(values, mask, "mean")


class TwoViewObjective(nn.Module):
    r"""BWCR's objective: supervised CE on the original view and view 1, plus a consistency term.

    ``train_step(forward, inputs, target)`` draws two views per sample from its own generator,
    runs the network once on the concatenated batch ``[x, T1 x, T2 x]`` (one forward, so
    BatchNorm sees the three views together and DDP sees one forward per step), maps both views'
    logits back with :func:`invert_view` and returns the three weighted terms

    .. math::
        \frac{l_0\,\mathrm{sup}_0}{L},\ \frac{l_1\,\mathrm{sup}_1}{L},\
        \frac{l_2\,\mathrm{cons}}{L}, \qquad L = l_0 + l_1 + l_2,

    whose sum is the loss. Labels stay in the original frame (the official code inverse-maps
    forward-warped labels with nearest neighbour; here the exact original labels are used and the
    masks remove what fell outside). ``forward(logits, target)`` is the single-view supervised
    term ``sup0`` (validation-time use).

    The generator state is part of ``state_dict()`` (``_extra_state``), so a resumed run draws
    the same views.

    Args:
        consistency: module called as ``consistency(z1, z2, target, m1, m2)``.
        l0: weight of the original-view CE (1).
        l1: weight of the view-1 CE (1).
        l2: weight of the consistency term. **Unverified**: the paper's value is not in the
            official defaults (METHODS §2.8; argparse default 0); calibrant uses 1.0 (METHODS
            suggests sweeping {0.1, 1, 10} when it matters).
        class_reduction: CE per class averaged (``"mean"``, official code) or summed.
        ignore_index: label ignored by the CE.
        degrees: maximum rotation of a view.
        scale: maximum relative zoom change.
        translate: maximum shift (fraction of the size).
        gain: maximum relative intensity gain change.
        bias: maximum intensity offset.
        p: probability of each part of a view (0.5).
        seed: seed of the view generator.
    """

    def __init__(
        self,
        consistency: nn.Module,
        *,
        l0: float = 1.0,
        l1: float = 1.0,
        l2: float = 1.0,
        class_reduction: str = "mean",
        ignore_index: int | None = -100,
        degrees: float = 15.0,
        scale: float = 0.1,
        translate: float = 0.1,
        gain: float = 0.1,
        bias: float = 0.1,
        p: float = 0.5,
        seed: int = 0,
    ) -> None:
        super().__init__()
        for name, v in (("l0", l0), ("l1", l1), ("l2", l2)):
            check_positive(name, v, strict=False)
        if l0 + l1 + l2 <= 0:
            raise ValueError("at least one of l0, l1, l2 must be positive")
        check_choice("class_reduction", class_reduction, CLASS_REDUCTIONS)
        self.consistency = consistency
        self.weights = {"sup0": float(l0), "sup1": float(l1), "cons": float(l2)}
        self.class_reduction, self.ignore_index = class_reduction, ignore_index
        self.view_kwargs = {
            "degrees": degrees,
            "scale": scale,
            "translate": translate,
            "gain": gain,
            "bias": bias,
            "p": p,
        }
        sample_views(1, (2, 2), **self.view_kwargs)  # validate the view options now
        self.generator = torch.Generator().manual_seed(int(seed))

    def _ce(self, logits, target, valid=None):
        return masked_cross_entropy(
            logits,
            target,
            valid,
            class_reduction=self.class_reduction,
            ignore_index=self.ignore_index,
        )

    def train_step(
        self, forward: Forward, inputs: torch.Tensor, target: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """One two-view step: the weighted terms ``sup0``, ``sup1``, ``cons`` (sum = loss).

        Args:
            forward: ``forward(images) -> logits`` (the engine's autocast model call).
            inputs: ``(B, C, H, W)`` images.
            target: ``(B, H, W)`` labels.
        """
        if inputs.dim() != 4:
            raise ValueError(
                f"two-view training needs 2D images (B, C, H, W), got {tuple(inputs.shape)}"
            )
        b, size = inputs.shape[0], tuple(inputs.shape[2:])
        v1 = sample_views(b, size, generator=self.generator, **self.view_kwargs)
        v2 = sample_views(b, size, generator=self.generator, **self.view_kwargs)
        x = torch.cat([inputs.float(), apply_view(inputs, v1), apply_view(inputs, v2)])
        z0, z1, z2 = forward(x).float().split(b)
        z1, m1 = invert_view(z1, v1)
        z2, m2 = invert_view(z2, v2)
        values = {
            "sup0": lambda: self._ce(z0, target),
            "sup1": lambda: self._ce(z1, target, m1),
            "cons": lambda: self.consistency(z1, z2, target, m1, m2),
        }
        total = sum(self.weights.values())
        return {k: w / total * values[k]() for k, w in self.weights.items() if w != 0.0}

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The single-view supervised term (CE of the original view)."""
        return self._ce(logits, target)

    def get_extra_state(self) -> dict[str, Any]:
        """The view generator's state (saved in checkpoints)."""
        return {"generator": self.generator.get_state()}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        """Restore the view generator."""
        self.generator.set_state(state["generator"])

    def extra_repr(self) -> str:
        """Weights and view options in the module repr."""
        w = ", ".join(f"{k}={v:g}" for k, v in self.weights.items())
        return f"{w}, {self.view_kwargs}"


#: Options of :class:`TwoViewObjective` (everything else goes to the consistency term).
_OBJECTIVE_OPTIONS = tuple(
    n for n in inspect.signature(TwoViewObjective).parameters if n not in ("consistency",)
)


def two_view_objective(term_factory: Callable[..., nn.Module], **kw: Any) -> TwoViewObjective:
    """A :class:`TwoViewObjective` around ``term_factory(**rest)``.

    ``kw`` is split: :class:`TwoViewObjective` options (``l0, l1, l2, class_reduction, degrees,
    ..., seed``) go to the objective, the rest to the consistency term; ``ignore_index`` goes to
    both.

    Example:
        >>> from calibrant.registry import LOSSES
        >>> obj = two_view_objective(LOSSES.get("bwcr").factory, l2=0.1, weighted=False)
        >>> obj.weights["cons"], obj.consistency.hparams["weighted"]
        (0.1, False)
    """
    own = {k: kw.pop(k) for k in list(kw) if k in _OBJECTIVE_OPTIONS}
    if "ignore_index" in own:
        kw["ignore_index"] = own["ignore_index"]
    return TwoViewObjective(term_factory(**kw), **own)
