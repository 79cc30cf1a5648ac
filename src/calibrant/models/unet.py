"""UNet for 2D and 3D segmentation, and the 2D UNet settings of the MarginLoss/NACL/CRaC papers.

One class covers both dimensions. Inputs of any spatial size are accepted: the forward pass pads
the input at the end of each spatial axis (zeros by default) up to a multiple of the total
down-sampling factor and crops the logits back, so a 37 x 53 slice gives 37 x 53 logits.

Example:
    >>> from calibrant.registry import MODELS
    >>> net = MODELS.build("unet2d", in_channels=1, num_classes=4, base_channels=8, depth=3)
    >>> net(torch.zeros(2, 1, 37, 53)).shape
    torch.Size([2, 4, 37, 53])
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from calibrant._checks import check_choice, check_positive
from calibrant.models._layers import (
    check_image_input,
    conv_nd,
    make_norm,
    pad_to_multiple,
    pool_nd,
)
from calibrant.registry import MODELS

__all__ = ["UNet", "unet2d", "unet3d", "unet2d_paper"]


def _conv_block(
    spatial_dims: int, c_in: int, c_out: int, norm: str, dropout: float, groups: int
) -> nn.Sequential:
    """Two ``3^d`` convolutions, each followed by the normalisation and ReLU; optional dropout."""
    conv = conv_nd(spatial_dims)
    bias = norm == "none"  # a bias before a normalisation with a shift is redundant
    layers: list[nn.Module] = []
    for a, b in ((c_in, c_out), (c_out, c_out)):
        layers += [
            conv(a, b, 3, padding=1, bias=bias),
            make_norm(norm, b, spatial_dims, groups=groups),
            nn.ReLU(inplace=True),
        ]
    if dropout > 0:
        layers.append((nn.Dropout2d if spatial_dims == 2 else nn.Dropout3d)(dropout))
    return nn.Sequential(*layers)


class UNet(nn.Module):
    r"""Encoder-decoder with skip connections (Ronneberger et al.), 2D or 3D; outputs logits.

    Level ``i`` (``0..depth``) has ``base_channels * channel_factors[i]`` channels. The encoder
    applies a double-conv block per level and max-pools by ``pool_sizes[i]`` between levels ``i``
    and ``i + 1``. The decoder up-samples by the same factor (nearest-neighbour interpolation, or a
    learned transposed convolution), concatenates the skip of level ``i`` and applies a double-conv
    block down to level ``i``'s width. A final ``1^d`` convolution maps to ``num_classes`` logits.

    The input is padded at the end of each spatial axis to a multiple of
    :math:`\prod_i \text{pool\_sizes}_i` and the logits are cropped back, so any input size works.
    With ``norm="instance"`` (or ``"batch"`` in training mode) the padded size must leave more
    than one element per channel at the bottleneck, otherwise PyTorch raises a ``ValueError``.

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        num_classes: output channels (logits, no softmax).
        base_channels: width of the first level.
        depth: number of down-sampling steps (levels = ``depth + 1``).
        channel_factors: width multipliers per level, length ``depth + 1``; default
            ``(1, 2, 4, ..., 2**depth)``.
        norm: ``"batch"``, ``"instance"``, ``"group"`` or ``"none"`` after every convolution.
        dropout: channel-wise dropout probability at the end of every block (0 disables).
        pool_sizes: down-sampling factor per step, length ``depth``; default all 2.
        upsample: ``"nearest"`` (interpolation, no parameters; the papers' choice) or
            ``"transpose"`` (transposed convolution keeping the deeper level's width).
        pad_mode: ``F.pad`` mode for the internal padding: ``"constant"`` (zeros),
            ``"replicate"`` or ``"reflect"``.
        groups: number of groups for ``norm="group"``.

    Shape:
        - Input: ``(B, in_channels, *spatial)`` float with ``len(spatial) == spatial_dims``.
        - Output: ``(B, num_classes, *spatial)`` logits.

    Example:
        >>> net = UNet(3, in_channels=1, num_classes=3, base_channels=4, depth=2, norm="instance")
        >>> net(torch.zeros(1, 1, 13, 9, 6)).shape
        torch.Size([1, 3, 13, 9, 6])

    Reference:
        Ronneberger, Fischer and Brox, "U-Net: Convolutional networks for biomedical image
        segmentation", MICCAI 2015.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        num_classes: int = 2,
        *,
        base_channels: int = 32,
        depth: int = 4,
        channel_factors: Sequence[int] | None = None,
        norm: str = "batch",
        dropout: float = 0.0,
        pool_sizes: Sequence[int] | None = None,
        upsample: str = "nearest",
        pad_mode: str = "constant",
        groups: int = 8,
    ) -> None:
        super().__init__()
        check_choice("spatial_dims", spatial_dims, (2, 3))
        check_choice("upsample", upsample, ("nearest", "transpose"))
        check_choice("pad_mode", pad_mode, ("constant", "replicate", "reflect"))
        for name, v in (("in_channels", in_channels), ("num_classes", num_classes)):
            check_positive(name, v)
        check_positive("base_channels", base_channels)
        check_positive("depth", depth, strict=False)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        factors = tuple(channel_factors) if channel_factors is not None else None
        factors = factors or tuple(2**i for i in range(depth + 1))
        if len(factors) != depth + 1:
            raise ValueError(
                f"channel_factors needs depth + 1 = {depth + 1} entries, got {len(factors)}"
            )
        pools = tuple(pool_sizes) if pool_sizes is not None else (2,) * depth
        if len(pools) != depth or any(p < 1 for p in pools):
            raise ValueError(f"pool_sizes needs {depth} entries >= 1, got {pools}")

        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.pool_sizes = pools
        self.pad_mode = pad_mode
        self.multiple = math.prod(pools)
        widths = [base_channels * f for f in factors]
        self.widths = tuple(widths)

        self.encoder = nn.ModuleList()
        self.pools = nn.ModuleList()
        c_prev = in_channels
        for i, w in enumerate(widths):
            self.encoder.append(_conv_block(spatial_dims, c_prev, w, norm, dropout, groups))
            c_prev = w
            if i < depth:
                self.pools.append(pool_nd(spatial_dims)(pools[i], pools[i]))

        self.upsamplers = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for i in reversed(range(depth)):
            deeper = widths[i + 1]
            if upsample == "nearest":
                self.upsamplers.append(nn.Upsample(scale_factor=pools[i], mode="nearest"))
            else:
                tconv = nn.ConvTranspose2d if spatial_dims == 2 else nn.ConvTranspose3d
                self.upsamplers.append(tconv(deeper, deeper, pools[i], stride=pools[i]))
            self.decoder.append(
                _conv_block(spatial_dims, widths[i] + deeper, widths[i], norm, dropout, groups)
            )
        self.head = conv_nd(spatial_dims)(widths[0], num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, num_classes, *spatial)`` for an input ``(B, in_channels, *spatial)``."""
        check_image_input(x, self.in_channels, self.spatial_dims)
        x, crop = pad_to_multiple(x, self.multiple, mode=self.pad_mode)
        skips = []
        for i, block in enumerate(self.encoder):
            x = block(x)
            if i < len(self.pools):
                skips.append(x)
                x = self.pools[i](x)
        for up, block, skip in zip(self.upsamplers, self.decoder, reversed(skips), strict=True):
            x = block(torch.cat([up(x), skip], dim=1))
        return self.head(x)[crop]


@MODELS.register("unet2d", task="segmentation", input="image", spatial_dims=2)
def unet2d(in_channels: int = 1, num_classes: int = 2, **kwargs) -> UNet:
    """2D UNet (defaults: 32 base channels, depth 4, batch norm); see :class:`UNet` for kwargs.

    Example:
        >>> unet2d(num_classes=4, base_channels=4, depth=2)(torch.zeros(1, 1, 20, 30)).shape
        torch.Size([1, 4, 20, 30])
    """
    return UNet(2, in_channels, num_classes, **kwargs)


@MODELS.register("unet3d", task="segmentation", input="image", spatial_dims=3)
def unet3d(in_channels: int = 1, num_classes: int = 2, **kwargs) -> UNet:
    """3D UNet (defaults: 16 base channels, depth 4, instance norm); see :class:`UNet`.

    Instance norm is the default because 3D batches are small (1 or 2 volumes).

    Example:
        >>> unet3d(num_classes=3, base_channels=4, depth=2)(torch.zeros(1, 1, 9, 10, 11)).shape
        torch.Size([1, 3, 9, 10, 11])
    """
    kwargs.setdefault("base_channels", 16)
    kwargs.setdefault("norm", "instance")
    return UNet(3, in_channels, num_classes, **kwargs)


@MODELS.register("unet2d_paper", task="segmentation", input="image", spatial_dims=2)
def unet2d_paper(in_channels: int = 1, num_classes: int = 4, **kwargs) -> UNet:
    """The 2D UNet of MarginLoss / NACL / CRaC (ACDC, 192 x 192 crops, 4 classes).

    Settings (METHODS.md §8): 32 base filters, width factors ``(1, 2, 4, 8, 16)``, max-pooling by
    2, 2, 2 and 4 (the last step pools by 4, total factor 32), nearest-neighbour up-sampling,
    two 3x3 convolutions with bias + ReLU per block, **no normalisation**, no dropout, a 1x1
    output convolution. 7 846 180 parameters for 1 input channel and 4 classes. Any keyword
    of :class:`UNet` overrides the preset.

    Example:
        >>> net = unet2d_paper()
        >>> net(torch.zeros(1, 1, 50, 37)).shape
        torch.Size([1, 4, 50, 37])
        >>> net.pool_sizes, net.widths
        ((2, 2, 2, 4), (32, 64, 128, 256, 512))

    Reference:
        Murugesan et al., "Calibrating segmentation networks with margin-based label smoothing",
        Medical Image Analysis 2023 (code: github.com/Bala93/MarginLoss ``calibrate/net/unet.py``).
    """
    preset = dict(
        base_channels=32,
        depth=4,
        channel_factors=(1, 2, 4, 8, 16),
        pool_sizes=(2, 2, 2, 4),
        norm="none",
        dropout=0.0,
        upsample="nearest",
    )
    preset.update(kwargs)
    return UNet(2, in_channels, num_classes, **preset)
