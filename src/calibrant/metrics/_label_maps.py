"""Label maps for the segmentation metrics (private): input checks, argmax, confusion counts.

:func:`prepare_label_maps` turns logits or predicted labels plus the target into compact NumPy
label maps (the smallest signed integer dtype that holds ``-1..C``; ignored voxels are ``-1`` in
both), which every per-case kernel of :mod:`calibrant.metrics.per_case` and
:mod:`calibrant.metrics._surface` reads.
"""

from __future__ import annotations

import numpy as np
import torch

from calibrant._checks import (
    check_finite,
    check_label_dtype,
    check_labels_in_range,
    check_logits_target,
)

__all__ = ["prepare_label_maps", "confusion_counts", "spacing_table"]


def prepare_label_maps(
    logits: torch.Tensor | None,
    target: torch.Tensor,
    pred_labels: torch.Tensor | None,
    num_classes: int | None,
    ignore_index: int | None,
    validate: bool,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Return ``(pred, target, C)``: compact NumPy label maps, ignored voxels -1 in both."""
    if (logits is None) == (pred_labels is None):
        raise ValueError(
            "pass exactly one of logits (B, C, *spatial) and pred_labels (B, *spatial)"
        )
    if logits is not None:
        check_logits_target(logits, target, num_classes=num_classes, min_dims=3)
        logits = logits.detach()  # the metrics are not differentiable; the argmax runs in place
        num_classes = logits.shape[1]
        # One cheap reduction first: a finite sum implies every element is finite (any NaN or
        # inf element makes the sum NaN or inf); the full check only runs to explain a failure.
        # (An overflowing sum of finite values also falls back to the full check.)
        if validate and not bool(torch.isfinite(logits.sum())):
            check_finite("logits", logits)
        pred = _argmax(logits, _label_dtype(num_classes))
    else:
        assert pred_labels is not None
        check_label_dtype("target", target)
        if num_classes is None:
            raise ValueError("num_classes is required with pred_labels")
        check_label_dtype("pred_labels", pred_labels)
        if pred_labels.shape != target.shape:
            raise ValueError(
                f"pred_labels shape {tuple(pred_labels.shape)} does not match target shape "
                f"{tuple(target.shape)}"
            )
        if validate:
            _check_range(pred_labels, num_classes, None)
        pred = pred_labels.long()
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if not 2 <= target.dim() <= 4:
        raise ValueError(
            f"target must have shape (B, *spatial) with 1 to 3 spatial dims, got "
            f"{tuple(target.shape)}"
        )
    if validate:
        _check_range(target, num_classes, ignore_index)
    # Compact CPU copies (int8/int16/int32): every later pass reads 1/8 of the int64 bytes.
    dtype = _label_dtype(num_classes)
    tgt = target.to("cpu", dtype)
    pred = pred.to("cpu", dtype)
    if ignore_index is not None:
        ignored = target == ignore_index
        if bool(ignored.any()):
            ignored = ignored.cpu()
            tgt = tgt.masked_fill(ignored, -1)
            pred = pred.masked_fill(ignored, -1)
    return pred.numpy(), tgt.numpy(), num_classes


def _label_dtype(num_classes: int) -> torch.dtype:
    """Smallest signed integer dtype that holds -1..num_classes."""
    if num_classes < 127:
        return torch.int8
    return torch.int16 if num_classes < 32767 else torch.int32


def confusion_counts(pred: np.ndarray, tgt: np.ndarray, C: int) -> torch.Tensor:
    """``(C, C)`` float64 counts ``[target, pred]`` of one case; voxels labelled -1 are dropped."""
    k = C + 1
    if k * k <= 256:  # uint8 codes (wrapping -1 -> 0): 1 byte per voxel, one bincount
        code = tgt.view(np.uint8) + np.uint8(1)
        code *= np.uint8(k)
        code += pred.view(np.uint8)
        code += np.uint8(1)
        counts = torch.bincount(torch.from_numpy(code.reshape(-1)), minlength=k * k).numpy()
    else:
        code = (tgt.astype(np.int64) + 1) * k + pred + 1
        counts = np.bincount(code.reshape(-1), minlength=k * k)
    return torch.from_numpy(counts.reshape(k, k)[1:, 1:].astype(np.float64))


def _argmax(logits: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``argmax`` over dim 1 (first maximum wins, as ``torch.argmax``) as ``dtype`` labels.

    A running maximum over the classes reads each class plane once, contiguously, instead of
    striding across dim 1; several times faster than ``torch.argmax`` for a few classes.
    """
    if logits.shape[1] > 32:
        return logits.argmax(dim=1).to(dtype)
    best = logits[:, 0].clone()
    idx = torch.zeros(best.shape, dtype=dtype, device=logits.device)
    for c in range(1, logits.shape[1]):
        x = logits[:, c]
        better = x > best
        idx.masked_fill_(better, c)
        torch.maximum(best, x, out=best)
    return idx


def _check_range(target: torch.Tensor, num_classes: int, ignore_index: int | None) -> None:
    """Label-range check with a one-pass fast path (min/max) before the detailed check."""
    lo, hi = torch.aminmax(target)
    if int(lo) >= 0 and int(hi) < num_classes:
        return
    check_labels_in_range(target, num_classes, ignore_index)


def spacing_table(spacing, batch: int, nd: int) -> np.ndarray:
    """``(B, nd)`` float64 voxel sizes from ``None``, a number, a sequence or a table."""
    if spacing is None:
        table = np.ones((batch, nd))
    else:
        arr = np.asarray(
            spacing.detach().cpu().numpy() if torch.is_tensor(spacing) else spacing, np.float64
        )
        if arr.ndim == 0:
            table = np.full((batch, nd), float(arr))
        elif arr.shape == (nd,):
            table = np.broadcast_to(arr, (batch, nd)).copy()
        elif arr.shape == (batch, nd):
            table = arr.copy()
        else:
            raise ValueError(
                f"spacing must be a number, a sequence of {nd} voxel sizes or a ({batch}, {nd}) "
                f"array, got shape {arr.shape}"
            )
    if not np.all(np.isfinite(table)) or not np.all(table > 0):
        raise ValueError(f"spacing must be finite and > 0, got {table.tolist()}")
    return table
