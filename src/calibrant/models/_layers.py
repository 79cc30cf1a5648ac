"""Shared building blocks of the model files: norms, padding, input checks, channels-last.

Example:
    >>> x = torch.zeros(1, 1, 37, 53)
    >>> padded, crop = pad_to_multiple(x, 16)
    >>> tuple(padded.shape), tuple(padded[crop].shape)
    ((1, 1, 48, 64), (1, 1, 37, 53))
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from calibrant._checks import check_choice

__all__ = [
    "NORMS",
    "make_norm",
    "pad_to_multiple",
    "check_image_input",
    "conv_nd",
    "pool_nd",
    "to_channels_last",
]

NORMS = ("batch", "instance", "group", "none")


def conv_nd(spatial_dims: int) -> type[nn.Module]:
    """``nn.Conv2d`` or ``nn.Conv3d``."""
    check_choice("spatial_dims", spatial_dims, (2, 3))
    return nn.Conv2d if spatial_dims == 2 else nn.Conv3d


def pool_nd(spatial_dims: int) -> type[nn.Module]:
    """``nn.MaxPool2d`` or ``nn.MaxPool3d``."""
    check_choice("spatial_dims", spatial_dims, (2, 3))
    return nn.MaxPool2d if spatial_dims == 2 else nn.MaxPool3d


def make_norm(norm: str, channels: int, spatial_dims: int, *, groups: int = 8) -> nn.Module:
    """Normalisation layer by name.

    Args:
        norm: ``"batch"`` (running statistics, differs between train and eval), ``"instance"``
            (affine, no running statistics), ``"group"`` (``min(groups, channels)`` groups; the
            count is reduced until it divides ``channels``) or ``"none"`` (identity).
        channels: feature channels.
        spatial_dims: 2 or 3 (1 for feature vectors, batch norm only).
        groups: requested number of groups for group norm.

    Returns:
        The layer.
    """
    check_choice("norm", norm, NORMS)
    if norm == "none":
        return nn.Identity()
    if norm == "batch":
        return {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[spatial_dims](channels)
    if norm == "instance":
        cls = {2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}[spatial_dims]
        return cls(channels, affine=True)
    g = max(1, min(groups, channels))
    while channels % g:
        g -= 1
    return nn.GroupNorm(g, channels)


def pad_to_multiple(
    x: torch.Tensor, multiple: int | tuple[int, ...], *, mode: str = "constant"
) -> tuple[torch.Tensor, tuple[slice, ...]]:
    """Pad the trailing spatial dims of ``x`` (B, C, *spatial) at the end up to a multiple.

    Args:
        x: input, shape ``(B, C, *spatial)``.
        multiple: required divisor of every spatial size (one int or one per spatial dim).
        mode: ``F.pad`` mode: ``"constant"`` (zeros), ``"replicate"`` or ``"reflect"``.

    Returns:
        The padded tensor and the index that crops an output of the padded size back to ``x``'s
        spatial size (``out[crop]``).
    """
    spatial = x.shape[2:]
    mults = (multiple,) * len(spatial) if isinstance(multiple, int) else tuple(multiple)
    if len(mults) != len(spatial):
        raise ValueError(f"multiple has {len(mults)} entries for {len(spatial)} spatial dims")
    extra = [(-s) % m for s, m in zip(spatial, mults, strict=True)]
    crop = (slice(None), slice(None)) + tuple(slice(0, s) for s in spatial)
    if not any(extra):
        return x, crop
    pad: list[int] = []
    for e in reversed(extra):  # F.pad lists the last dim first
        pad += [0, e]
    if mode == "reflect" and any(e >= s for e, s in zip(extra, spatial, strict=True)):
        mode = "replicate"  # reflect needs pad < size; tiny inputs fall back to replicate
    return F.pad(x, pad, mode=mode), crop


def check_image_input(x: torch.Tensor, in_channels: int, spatial_dims: int) -> None:
    """Raise a clear ValueError unless ``x`` is float ``(B, in_channels, *spatial)``."""
    if not torch.is_floating_point(x):
        raise ValueError(f"input must be a floating-point tensor, got dtype {x.dtype}")
    if x.dim() != spatial_dims + 2:
        raise ValueError(
            f"input must have shape (B, C, {', '.join('HWD'[:spatial_dims])}) "
            f"({spatial_dims + 2} dims), got {tuple(x.shape)}"
        )
    if x.shape[1] != in_channels:
        raise ValueError(
            f"input has {x.shape[1]} channels but the model expects in_channels={in_channels}"
        )


# oneDNN's 1x1 strided convolution, channels-last, writes past its work buffer in the weight
# gradient when the input has fewer channels per group than its register block (16 with
# AVX-512, 8 with AVX2): heap corruption and a crash (a hang in uxlfoundation/oneDNN#6035; seen
# here with torch 2.13.0 on a 1x1 stride-2 Conv2d with 4 input channels, as in DynUNet's
# residual downsampling). Such convolutions stay contiguous, inputs included.
_ONEDNN_1X1_BLOCK = 16


def _unsafe_channels_last(conv: nn.Module) -> bool:
    """A 1x1 strided convolution with fewer input channels per group than oneDNN's block."""
    return (
        all(k == 1 for k in conv.kernel_size)
        and any(s > 1 for s in conv.stride)
        and conv.in_channels // conv.groups < _ONEDNN_1X1_BLOCK
    )


def _contiguous_input(module: nn.Module, args: tuple) -> tuple:
    return tuple(a.contiguous() if isinstance(a, torch.Tensor) else a for a in args)


def to_channels_last(model: nn.Module) -> nn.Module:
    """Store a convolutional model's weights channels-last (NHWC / NDHWC), in place.

    The convolutions then run in the channels-last layout whatever the input's layout (oneDNN
    and cuDNN pick it from the weight), and their outputs come back in it. Values are unchanged;
    only the float summation order of the convolutions differs, so results agree to rounding.
    On this repository's 2-core CPU (``benchmarks/results/memory_format.md``) the train step of
    the ``hippocampus_ce`` 3D UNet is 1.5× faster this way, that of the ``acdc_ce`` 2D UNet
    1.1×. A model with 3D convolutions takes ``torch.channels_last_3d``, one with 2D
    convolutions ``torch.channels_last``.

    Exception: a 1×1 strided convolution with fewer than 16 input channels per group stays
    contiguous and gets its input made contiguous, because oneDNN corrupts memory on it in
    channels-last (uxlfoundation/oneDNN#6035).

    Args:
        model: a module holding ``nn.Conv2d`` or ``nn.Conv3d`` layers (not both).

    Returns:
        ``model`` itself, converted.

    Raises:
        ValueError: if the model has no 2D/3D convolution, or has both kinds.

    Example:
        >>> net = nn.Sequential(nn.Conv3d(1, 4, 3), nn.ReLU(), nn.Conv3d(4, 2, 1, stride=2))
        >>> net = to_channels_last(net)
        >>> net[0].weight.is_contiguous(memory_format=torch.channels_last_3d)
        True
        >>> net[2].weight.stride()  # the 1x1 stride-2 convolution keeps the contiguous strides
        (4, 1, 1, 1, 1)
    """
    convs = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Conv3d))]
    dims = {m.weight.dim() for m in convs}
    if len(dims) != 1:
        kinds = "no 2D or 3D convolution" if not dims else "both 2D and 3D convolutions"
        raise ValueError(
            f"channels-last needs a model with 2D or 3D convolutions of one kind; "
            f"{type(model).__name__} has {kinds}"
        )
    model.to(memory_format=torch.channels_last_3d if dims == {5} else torch.channels_last)
    for conv in filter(_unsafe_channels_last, convs):
        # clone, not .contiguous(): a 1x1 kernel is "contiguous" in both layouts, and only the
        # strides tell the convolution which one to run
        conv.weight.data = conv.weight.data.clone(memory_format=torch.contiguous_format)
        if not getattr(conv, "_contiguous_input", False):  # once, however often this is called
            conv.register_forward_pre_hook(_contiguous_input)
            conv._contiguous_input = True
    return model
