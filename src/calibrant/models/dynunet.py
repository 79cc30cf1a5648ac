"""MONAI ``DynUNet`` as the nnU-Net-style backbone (optional extra ``calibrant[monai]``).

MONAI is imported inside the factory, so ``import calibrant`` does not need it. The network is
wrapped so that inputs of any spatial size work: the input is padded at the end of each axis to a
multiple of the product of the strides and the logits are cropped back (DynUNet itself requires
divisible sizes).

Example:
    >>> from calibrant.registry import MODELS
    >>> net = MODELS.build("dynunet", in_channels=1, num_classes=4, filters=(8, 8, 16, 16, 32, 32))
    >>> net(torch.zeros(2, 1, 37, 53)).shape
    torch.Size([2, 4, 37, 53])
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from calibrant._checks import check_choice
from calibrant.models._layers import check_image_input, pad_to_multiple
from calibrant.registry import MODELS

__all__ = ["PaddedDynUNet", "dynunet"]


class PaddedDynUNet(nn.Module):
    """A MONAI ``DynUNet`` with internal pad-to-multiple and crop-back; outputs logits.

    Args:
        net: the wrapped ``monai.networks.nets.DynUNet``.
        spatial_dims: 2 or 3.
        in_channels: input channels (checked in ``forward``).
        num_classes: logit channels of ``net``.
        multiple: product of the strides per spatial axis.
        pad_mode: ``F.pad`` mode for the padding.

    Shape:
        - Input: ``(B, in_channels, *spatial)``.
        - Output: ``(B, num_classes, *spatial)``; with deep supervision in training mode MONAI
          returns ``(B, 1 + deep_supr_num, num_classes, *spatial)``, also cropped.
    """

    def __init__(
        self,
        net: nn.Module,
        spatial_dims: int,
        in_channels: int,
        num_classes: int,
        multiple: tuple[int, ...],
        pad_mode: str = "constant",
    ) -> None:
        super().__init__()
        self.net = net
        self.num_classes = num_classes
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.multiple = multiple
        self.pad_mode = pad_mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits at the input's spatial size."""
        check_image_input(x, self.in_channels, self.spatial_dims)
        x, crop = pad_to_multiple(x, self.multiple, mode=self.pad_mode)
        out = self.net(x)
        return out[(Ellipsis,) + crop[2:]]


@MODELS.register("dynunet", task="segmentation", input="image", spatial_dims=2, requires="monai")
def dynunet(
    in_channels: int = 1,
    num_classes: int = 2,
    *,
    spatial_dims: int = 2,
    levels: int = 6,
    kernel_size: int | Sequence = 3,
    strides: Sequence | None = None,
    filters: Sequence[int] | None = None,
    norm: str = "instance",
    res_block: bool = True,
    deep_supervision: bool = False,
    dropout: float | None = None,
    pad_mode: str = "constant",
) -> PaddedDynUNet:
    """nnU-Net-style backbone: MONAI ``DynUNet`` with the MarginLoss/CRaC settings as defaults.

    Defaults (METHODS.md §8): 6 levels, kernel 3, strides 1 then 2 five times (total factor 32),
    instance norm, residual blocks, no deep supervision; MONAI's default filters
    (``min(2 ** (5 + i), 512)`` in 2D, capped at 320 in 3D). ``upsample_kernel_size`` equals
    ``strides[1:]``.

    Args:
        in_channels: input channels.
        num_classes: logit channels.
        spatial_dims: 2 or 3.
        levels: number of resolution levels when ``strides`` is not given.
        kernel_size: one kernel size for every level, or a per-level sequence.
        strides: per-level strides (first usually 1); default ``(1,) + (2,) * (levels - 1)``.
        filters: per-level widths; ``None`` uses MONAI's default.
        norm: MONAI norm name: ``"instance"``, ``"batch"`` or ``"group"``.
        res_block: residual blocks (nnU-Net "ResEnc"-like) instead of plain conv blocks.
        deep_supervision: MONAI deep supervision heads (training-mode output gains a dim).
        dropout: dropout probability inside the blocks, or ``None``.
        pad_mode: ``F.pad`` mode for the internal padding.

    Returns:
        A :class:`PaddedDynUNet`.

    Raises:
        ImportError: if MONAI is not installed (install ``calibrant[monai]``).

    Reference:
        Isensee et al., "nnU-Net: a self-configuring method for deep learning-based biomedical
        image segmentation", Nature Methods 2021; MONAI ``monai.networks.nets.DynUNet``.
    """
    try:
        from monai.networks.nets import DynUNet
    except ImportError as err:  # pragma: no cover - exercised only without MONAI
        raise ImportError(
            "the 'dynunet' model needs MONAI: pip install 'calibrant[monai]'"
        ) from err
    check_choice("spatial_dims", spatial_dims, (2, 3))
    check_choice("norm", norm, ("instance", "batch", "group"))
    strides = list(strides) if strides is not None else [1] + [2] * (levels - 1)
    kernels = (
        list(kernel_size) if isinstance(kernel_size, Sequence) else [kernel_size] * len(strides)
    )
    if len(kernels) != len(strides):
        raise ValueError(f"kernel_size has {len(kernels)} levels but strides has {len(strides)}")
    if filters is not None and len(filters) != len(strides):
        raise ValueError(f"filters has {len(filters)} levels but strides has {len(strides)}")
    norm_name = ("group", {"num_groups": 8}) if norm == "group" else (norm, {"affine": True})
    if norm == "batch":
        norm_name = "batch"
    net = DynUNet(
        spatial_dims=spatial_dims,
        in_channels=in_channels,
        out_channels=num_classes,
        kernel_size=kernels,
        strides=strides,
        upsample_kernel_size=strides[1:],
        filters=list(filters) if filters is not None else None,
        dropout=dropout,
        norm_name=norm_name,
        deep_supervision=deep_supervision,
        res_block=res_block,
    )
    per_axis = [s if isinstance(s, Sequence) else (s,) * spatial_dims for s in strides]
    multiple = tuple(math.prod(s[d] for s in per_axis) for d in range(spatial_dims))
    return PaddedDynUNet(net, spatial_dims, in_channels, num_classes, multiple, pad_mode)
