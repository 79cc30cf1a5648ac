"""Shared tensor plumbing: masking, reduction, one-hot, neighbourhood proportions, regions.

Everything here is dimension-agnostic: tensors are ``(B, C, *spatial)`` with 0 to 3 spatial dims,
targets ``(B, *spatial)``. Ignored elements are handled by masking, never by boolean indexing, so
shapes stay static.

Example:
    >>> import torch
    >>> from calibrant._tensor import neighbor_proportions, boundary_mask
    >>> y = torch.tensor([[[0, 0, 1], [0, 0, 1], [0, 0, 1]]])
    >>> tau = neighbor_proportions(y, num_classes=2)
    >>> tau.shape, bool(torch.allclose(tau.sum(1), torch.ones(1, 3, 3)))
    (torch.Size([1, 2, 3, 3]), True)
    >>> boundary_mask(y).int()
    tensor([[[0, 1, 1],
             [0, 1, 1],
             [0, 1, 1]]], dtype=torch.int32)
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F

from calibrant._checks import check_choice, check_finite, check_labels_in_range

__all__ = [
    "REDUCTIONS",
    "Forward",
    "float32",
    "valid_mask",
    "finite_or_raise",
    "labels_and_mask",
    "reduce",
    "one_hot",
    "flatten_classes",
    "neighbor_proportions",
    "boundary_mask",
    "window_counts",
    "row_chunks",
]

REDUCTIONS = ("mean", "sum", "none")
PADDINGS = ("label0", "zeros", "replicate")

#: A model's forward call, ``images -> logits`` (what a training step runs its views through).
Forward = Callable[[torch.Tensor], torch.Tensor]


@contextlib.contextmanager
def float32(x: torch.Tensor) -> Iterator[None]:
    """Context that disables autocast for ``x``'s device, so losses compute in float32.

    Use together with ``x.float()``: autocast may have produced bf16/fp16 logits, and the loss
    itself must not be re-lowered.
    """
    with torch.autocast(device_type=x.device.type, enabled=False):
        yield


def valid_mask(target: torch.Tensor, ignore_index: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace ignored labels by 0 and return ``(safe_target, mask)``.

    Args:
        target: integer labels ``(B, *spatial)``.
        ignore_index: label value to ignore, or ``None``.

    Returns:
        ``safe_target`` (int64, ignored entries set to 0) and ``mask`` (bool, True = valid).
    """
    target = target.long()
    if ignore_index is None:
        return target, torch.ones_like(target, dtype=torch.bool)
    mask = target != ignore_index
    return target.masked_fill(~mask, 0), mask


def finite_or_raise(name: str, x: torch.Tensor) -> None:
    """:func:`calibrant._checks.check_finite` with a one-read fast path.

    A float sum is finite only if every term is (inf and NaN absorb, ``inf - inf`` is NaN), so
    one reduction proves finiteness; only a non-finite sum (a bad value, or an overflow of
    finite ones) runs the full check, which raises or passes exactly as before.
    """
    if x.numel() and not bool(torch.isfinite(x.sum())):
        check_finite(name, x)


def labels_and_mask(
    target: torch.Tensor, num_classes: int, ignore_index: int | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Check the label range and return ``(safe int64 target, mask or None)``.

    ``mask`` is ``None`` when no element is ignored: one ``aminmax`` pass decides it, and the
    full :func:`calibrant._checks.check_labels_in_range` + :func:`valid_mask` run only when
    ignored or out-of-range labels may be present.
    """
    target = target.long()
    if target.numel():
        lo, hi = (int(v) for v in torch.aminmax(target))
        no_ignore = ignore_index is None or not lo <= ignore_index <= hi
        if no_ignore and lo >= 0 and hi < num_classes:
            return target, None
    check_labels_in_range(target, num_classes, ignore_index)
    return valid_mask(target, ignore_index)


def reduce(values: torch.Tensor, mask: torch.Tensor | None, reduction: str) -> torch.Tensor:
    """Reduce per-element values like PyTorch: ``mean`` is over *valid* elements only.

    Masked-out elements are zeroed (with ``where``, so NaN/inf there cannot leak). A mean over
    zero valid elements is 0 with zero gradient, matching an empty sum.

    Args:
        values: per-element loss ``(B, *spatial)``.
        mask: bool validity mask broadcastable to ``values``, or ``None`` (all valid).
        reduction: ``"mean" | "sum" | "none"``.
    """
    check_choice("reduction", reduction, REDUCTIONS)
    if mask is not None:
        values = torch.where(mask, values, values.new_zeros(()))
    if reduction == "none":
        return values
    total = values.sum()
    if reduction == "sum":
        return total
    count = values.numel() if mask is None else mask.expand_as(values).sum()
    return total / torch.clamp(torch.as_tensor(count, device=values.device), min=1)


def one_hot(
    target: torch.Tensor, num_classes: int, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """One-hot encode ``(B, *spatial)`` labels to float ``(B, C, *spatial)``; masked rows are 0."""
    safe = target.long().clamp(0, num_classes - 1).unsqueeze(1)
    shape = (target.shape[0], num_classes, *target.shape[1:])
    # scatter into float directly: F.one_hot builds an int64 tensor 8x the size first.
    oh = torch.zeros(shape, dtype=torch.float32, device=target.device).scatter_(1, safe, 1.0)
    if mask is not None:
        oh = oh * mask.unsqueeze(1)
    return oh


def flatten_classes(x: torch.Tensor) -> torch.Tensor:
    """``(B, C, *spatial)`` -> ``(B * prod(spatial), C)`` (a view when possible)."""
    return x.movedim(1, -1).reshape(-1, x.shape[1])


def _pool_fn(ndim: int, kind: str):
    fns = {
        ("avg", 1): F.avg_pool1d,
        ("avg", 2): F.avg_pool2d,
        ("avg", 3): F.avg_pool3d,
        ("max", 1): F.max_pool1d,
        ("max", 2): F.max_pool2d,
        ("max", 3): F.max_pool3d,
    }
    if (kind, ndim) not in fns:
        raise ValueError(f"neighbourhood operations need 1 to 3 spatial dims, got {ndim}")
    return fns[(kind, ndim)]


def _box_mean(padded: torch.Tensor, kernel_size: int, nd: int) -> torch.Tensor:
    """Valid ``k^nd`` window mean of a padded tensor, one axis at a time (separable sums)."""
    out = padded
    for axis in range(padded.dim() - nd, padded.dim()):
        n = out.shape[axis] - kernel_size + 1
        acc = out.narrow(axis, 0, n).clone()
        for j in range(1, kernel_size):
            acc.add_(out.narrow(axis, j, n))
        out = acc
    return out.div_(kernel_size**nd)


def neighbor_proportions(
    target: torch.Tensor,
    num_classes: int,
    *,
    kernel_size: int = 3,
    padding: str = "label0",
    ignore_index: int | None = None,
) -> torch.Tensor:
    r"""Class proportions in the ``k^d`` window around each element (the NACL target).

    .. math::
        \tau_{ik} = \frac{\#\{j \in W_k(i) : y_j = k\}}{|W_k(i)|}

    Args:
        target: integer labels ``(B, *spatial)``, 1 to 3 spatial dims.
        num_classes: number of classes ``C``.
        kernel_size: odd window size ``k``.
        padding: out-of-image neighbours read as class 0 (``"label0"``, the research code: rows
            sum to 1), as no class (``"zeros"``, MONAI: rows sum to < 1 at the border), or as the
            nearest in-image label (``"replicate"``).
        ignore_index: ignored neighbours count as absent and each window is renormalised over its
            valid neighbours (ignored centres get an all-zero row).

    Returns:
        Float tensor ``(B, C, *spatial)``.
    """
    check_choice("padding", padding, PADDINGS)
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd integer, got {kernel_size}")
    safe, mask = valid_mask(target, ignore_index)
    oh = one_hot(safe, num_classes, mask if ignore_index is not None else None)
    nd = oh.dim() - 2
    _pool_fn(nd, "avg")  # validates the number of spatial dims
    pads = (kernel_size // 2,) * (2 * nd)
    if padding == "replicate":
        counts = _box_mean(F.pad(oh, pads, mode="replicate"), kernel_size, nd)
    else:
        padded = F.pad(oh, pads, value=0.0)
        if padding == "label0":  # out-of-image neighbours are background
            padded[:, 0] += F.pad(torch.zeros_like(oh[:, 0]), pads, value=1.0)
        counts = _box_mean(padded, kernel_size, nd)
    if ignore_index is None:
        return counts
    # Ignored neighbours are absent: renormalise by the non-ignored share of the window.
    ignored = (~mask).unsqueeze(1).float()
    mode = "replicate" if padding == "replicate" else "constant"
    ignored_share = _box_mean(F.pad(ignored, pads, mode=mode), kernel_size, nd)
    return counts / (1.0 - ignored_share).clamp_min(1e-12) * mask.unsqueeze(1)


def boundary_mask(
    target: torch.Tensor, *, kernel_size: int = 3, ignore_index: int | None = None
) -> torch.Tensor:
    """True where the ``k^d`` window (label-0 padded) holds at least two distinct labels.

    This is the intended CRaC region test ("the patch has more than one category"), computed as
    ``maxpool(y) != minpool(y)``. Ignored neighbours are skipped; ignored centres are False.

    Args:
        target: integer labels ``(B, *spatial)``.
        kernel_size: odd window size.
        ignore_index: label to skip.

    Returns:
        Bool tensor ``(B, *spatial)``: True = boundary ("outer") region, False = inner.
    """
    safe, mask = valid_mask(target, ignore_index)
    y = safe.unsqueeze(1).float()
    nd = y.dim() - 2
    r = kernel_size // 2
    pads = (r,) * (2 * nd)
    big = float(torch.iinfo(torch.int32).max)
    hi = F.pad(torch.where(mask.unsqueeze(1), y, -big), pads, value=0.0)
    lo = F.pad(torch.where(mask.unsqueeze(1), y, big), pads, value=0.0)
    pool = _pool_fn(nd, "max")
    ymax = pool(hi, kernel_size, stride=1)
    ymin = -pool(-lo, kernel_size, stride=1)
    return ((ymax != ymin) & mask.unsqueeze(1)).squeeze(1)


def _box_sum_(x: torch.Tensor, kernel_size: int, nd: int) -> torch.Tensor:
    """Zero-padded ``k^nd`` box sum over the last ``nd`` dims, by shifted in-place adds."""
    r = kernel_size // 2
    for dim in range(x.dim() - nd, x.dim()):
        n = x.shape[dim]
        out = x.clone()
        for s in range(1, min(r, n - 1) + 1):
            out.narrow(dim, s, n - s).add_(x.narrow(dim, 0, n - s))
            out.narrow(dim, 0, n - s).add_(x.narrow(dim, s, n - s))
        x = out
    return x


def window_counts(
    target: torch.Tensor, num_classes: int, *, kernel_size: int = 3, padding: str = "label0"
) -> torch.Tensor:
    """Per-class label counts in each ``k^d`` window, in the smallest exact integer dtype.

    ``neighbor_proportions`` without ignored labels is ``window_counts / k^d`` for the
    ``"label0"`` and ``"zeros"`` paddings (both count out-of-image neighbours in the window
    size; ``label0`` adds them to class 0). Counts are ``uint8`` up to ``k^d = 255``, else
    ``int16``/``int32``: 1 byte per entry instead of a float32 one-hot and window sums.

    Args:
        target: integer labels ``(B, *spatial)`` in ``[0, num_classes)`` (nothing ignored).
        num_classes: ``C``.
        kernel_size: odd window size.
        padding: ``"label0"`` or ``"zeros"``.

    Returns:
        ``(B, C, *spatial)`` integer counts.
    """
    check_choice("padding", padding, ("label0", "zeros"))
    nd = target.dim() - 1
    _pool_fn(nd, "avg")  # validates the number of spatial dims
    size = kernel_size**nd
    dtype = torch.uint8 if size <= 255 else torch.int16 if size < 2**15 else torch.int32
    classes = torch.arange(num_classes, device=target.device).view(1, -1, *([1] * nd))
    oh = target.unsqueeze(1) == classes
    oh = oh.view(torch.uint8) if dtype == torch.uint8 else oh.to(dtype)
    counts = _box_sum_(oh, kernel_size, nd)
    if padding == "label0":
        ones = torch.ones((1, *target.shape[1:]), dtype=dtype, device=target.device)
        counts[:, 0] += size - _box_sum_(ones, kernel_size, nd)
    return counts


def row_chunks(
    shape: tuple[int, int, int], elements: int = 1 << 18
) -> Iterator[tuple[slice, slice, slice]]:
    """``(batch, class, position)`` slices of a ``(B, C, N)`` tensor, about ``elements`` each.

    Whole samples are grouped while they are small; a large sample is split over classes, then
    over positions. Fused element-wise losses loop over these so that their temporaries stay
    small (cache-resident and reused by the allocator instead of page-faulted in afresh).
    """
    b, c, n = shape
    per_sample = max(1, c * n)
    if per_sample <= elements:
        step = elements // per_sample
        for b0 in range(0, b, step):
            yield slice(b0, min(b, b0 + step)), slice(0, c), slice(0, n)
        return
    rows = elements // max(1, n)
    for i in range(b):
        if rows >= 1:
            for c0 in range(0, c, rows):
                yield slice(i, i + 1), slice(c0, min(c, c0 + rows)), slice(0, n)
            continue
        for k in range(c):
            for s0 in range(0, n, elements):
                yield slice(i, i + 1), slice(k, k + 1), slice(s0, min(n, s0 + elements))
