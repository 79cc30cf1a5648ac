"""Input validation shared by every loss, metric, penalty and calibrator.

Every check raises :class:`ValueError` with a message that names the argument, what was expected
and what was received. Shape and dtype checks are always on. Checks that read tensor values
(finiteness, label range) are on by default too: calibrant prefers a clear error to a silent wrong
number. They cost one extra pass over the data; callers that have already validated their inputs
can pass ``validate=False`` where a function offers it.

Example:
    >>> import torch
    >>> from calibrant._checks import check_logits_target
    >>> check_logits_target(torch.zeros(2, 3, 4), torch.zeros(2, 4, dtype=torch.long))
    >>> check_logits_target(torch.zeros(2, 3, 4), torch.zeros(2, 5, dtype=torch.long))
    Traceback (most recent call last):
    ...
    ValueError: target shape (2, 5) does not match logits shape (2, 3, 4) ...
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

__all__ = [
    "check_choice",
    "check_finite",
    "check_indicator_target",
    "check_label_dtype",
    "check_labels_in_range",
    "check_logits_target",
    "check_multilabel_target",
    "check_positive",
]


def check_choice(name: str, value: object, choices: Iterable[object]) -> None:
    """Raise if ``value`` is not one of ``choices``."""
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def check_positive(name: str, value: float, *, strict: bool = True) -> None:
    """Raise if ``value`` is not (strictly) positive."""
    if (strict and not value > 0) or (not strict and not value >= 0):
        raise ValueError(f"{name} must be {'> 0' if strict else '>= 0'}, got {value!r}")


def check_finite(name: str, x: torch.Tensor) -> None:
    """Raise if ``x`` holds NaN or infinite values, saying how many."""
    finite = torch.isfinite(x)
    if not bool(finite.all()):
        n_nan = int(torch.isnan(x).sum())
        n_inf = int(x.numel() - finite.sum()) - n_nan
        raise ValueError(f"{name} contains {n_nan} NaN and {n_inf} infinite values")


def check_label_dtype(name: str, labels: torch.Tensor) -> None:
    """Raise unless ``labels`` has an integer dtype (not float, complex or bool)."""
    dt = labels.dtype
    if dt.is_floating_point or dt.is_complex or dt == torch.bool:
        raise ValueError(f"{name} must be an integer tensor of class labels, got {dt}")


def check_logits_target(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    num_classes: int | None = None,
    min_dims: int = 2,
) -> None:
    """Check a multi-class pair: logits ``(B, C, *spatial)`` float, target ``(B, *spatial)`` int.

    Args:
        logits: class scores, class dimension 1.
        target: integer labels.
        num_classes: if given, ``C`` must equal it.
        min_dims: minimum number of logits dimensions.

    Raises:
        ValueError: on a non-floating logits dtype, a non-integer target dtype, a shape mismatch
            or a wrong number of classes.
    """
    if not torch.is_floating_point(logits):
        raise ValueError(f"logits must be a floating-point tensor, got dtype {logits.dtype}")
    if logits.dim() < min_dims:
        raise ValueError(
            f"logits must have shape (B, C, *spatial) with at least {min_dims} dims, "
            f"got shape {tuple(logits.shape)}"
        )
    check_label_dtype("target", target)
    expected = (logits.shape[0], *logits.shape[2:])
    if tuple(target.shape) != expected:
        raise ValueError(
            f"target shape {tuple(target.shape)} does not match logits shape "
            f"{tuple(logits.shape)} without the class dim 1; expected {expected}"
        )
    if num_classes is not None and logits.shape[1] != num_classes:
        raise ValueError(
            f"logits have {logits.shape[1]} classes on dim 1 but num_classes={num_classes}"
        )


def check_labels_in_range(
    target: torch.Tensor, num_classes: int, ignore_index: int | None = None
) -> None:
    """Raise if a label outside ``[0, num_classes)`` other than ``ignore_index`` occurs."""
    bad = (target < 0) | (target >= num_classes)
    if ignore_index is not None:
        bad &= target != ignore_index
    if bool(bad.any()):
        values = torch.unique(target[bad])[:5].tolist()
        raise ValueError(
            f"target holds labels outside [0, {num_classes}) (ignore_index={ignore_index}): "
            f"{values}"
        )


def check_indicator_target(
    logits: torch.Tensor, target: torch.Tensor, *, kind: str, shape_hint: str = ""
) -> None:
    """Check float logits and a {0, 1} target of the same shape; ``kind`` names the target.

    Args:
        logits: scores of any floating dtype.
        target: ``{0, 1}`` values, one per logit.
        kind: what the target is called in the messages (``"multi-label"``, ``"binary"``).
        shape_hint: text appended to the shape-mismatch message.
    """
    if not torch.is_floating_point(logits):
        raise ValueError(f"logits must be a floating-point tensor, got dtype {logits.dtype}")
    if logits.shape != target.shape:
        raise ValueError(
            f"{kind} target shape {tuple(target.shape)} must equal logits shape "
            f"{tuple(logits.shape)}{shape_hint}"
        )
    if bool(((target != 0) & (target != 1)).any()):
        raise ValueError(f"{kind} target must hold only 0 and 1")


def check_multilabel_target(logits: torch.Tensor, target: torch.Tensor) -> None:
    """Check a multi-label pair: logits and {0, 1} target of the same shape ``(B, C, *)``."""
    check_indicator_target(logits, target, kind="multi-label")
