r"""MONAI's target layouts for calibrant's losses and ALM terms (pure PyTorch, no MONAI import).

calibrant's multi-class losses (CE, MbLS, NACL, SVLS, the ``*_softmax`` overlap losses, ALL) and
its ALM terms (CRaC, NACL, CALS) take integer labels ``(B, *spatial)`` with
``ignore_index = -100``; its multi-label losses (sigmoid Dice, Jaccard, Tversky, Combo, BCE, ...)
take ``{0, 1}`` targets of the logits' shape ``(B, C, *spatial)``. MONAI pipelines hand over

- labels ``(B, 1, *spatial)``, often float (``LoadImage`` gives float MetaTensors), the layout of
  MONAI's ``to_onehot_y=True``;
- one-hot labels ``(B, C, *spatial)`` (after ``AsDiscrete(to_onehot=C)``), the layout of MONAI's
  ``to_onehot_y=False``.

:func:`as_index_target` and :func:`as_onehot_target` turn any of the three layouts into what a
calibrant loss takes, and :class:`MonaiTargets` wraps a loss (or a whole criterion with its ALM
terms) so that it accepts them directly. The layout is read from the shapes, so no option is
needed: a target with one dim fewer than the logits is calibrant's layout, one channel is the
``(B, 1, *spatial)`` label layout and ``C`` channels are one-hot. Conventions:

- float labels must hold whole numbers (checked); they become int64;
- a one-hot position with no hot channel (all zeros, e.g. padding in one-hot space) or with
  ``ignore_index`` in any channel becomes ``ignore_index``; more than one hot channel is an error;
- :func:`as_onehot_target` encodes ignored labels as ``ignore_index`` in every channel (the
  multi-label losses' convention).

Example:
    >>> import torch
    >>> from calibrant.integrations.targets import MonaiTargets, as_index_target
    >>> logits = torch.zeros(1, 3, 2, 2)
    >>> monai_label = torch.tensor([[[[0.0, 1.0], [2.0, 1.0]]]])         # (B, 1, H, W) float
    >>> as_index_target(monai_label, logits).tolist()
    [[[0, 1], [2, 1]]]
    >>> onehot = torch.nn.functional.one_hot(torch.tensor([[[0, 1], [2, 1]]]), 3).movedim(-1, 1)
    >>> bool((as_index_target(onehot, logits) == as_index_target(monai_label, logits)).all())
    True
    >>> from calibrant import LOSSES
    >>> crac = MonaiTargets(LOSSES.build("crac", num_classes=3))
    >>> float(crac(logits, monai_label)) == float(crac(logits, onehot))
    True
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from calibrant._checks import check_choice

__all__ = ["MonaiTargets", "as_index_target", "as_onehot_target", "plain_tensor"]


def plain_tensor(x: Any) -> Any:
    """A MONAI ``MetaTensor`` as a plain ``torch.Tensor`` (anything else unchanged)."""
    as_tensor = getattr(x, "as_tensor", None)
    return as_tensor() if isinstance(x, torch.Tensor) and callable(as_tensor) else x


def _whole_long(labels: torch.Tensor) -> torch.Tensor:
    if labels.dtype.is_floating_point:
        if bool((labels != labels.round()).any()):
            raise ValueError(
                "float labels must hold whole class indices; got fractional values (soft labels "
                "are not a label layout calibrant's multi-class losses take)"
            )
    elif labels.dtype == torch.bool:
        return labels.long()
    return labels.long()


def _check_layout(target: torch.Tensor, logits: torch.Tensor) -> None:
    nd = logits.dim()
    if target.dim() not in (nd - 1, nd):
        raise ValueError(
            f"target shape {tuple(target.shape)} fits none of the layouts for logits "
            f"{tuple(logits.shape)}: (B, *spatial) labels, (B, 1, *spatial) labels or "
            "(B, C, *spatial) one-hot"
        )
    spatial = target.shape[1:] if target.dim() == nd - 1 else target.shape[2:]
    if target.shape[0] != logits.shape[0] or tuple(spatial) != tuple(logits.shape[2:]):
        raise ValueError(
            f"target shape {tuple(target.shape)} does not match logits shape "
            f"{tuple(logits.shape)} in the batch or spatial dims"
        )
    if target.dim() == nd and target.shape[1] not in (1, logits.shape[1]):
        raise ValueError(
            f"target has {target.shape[1]} channels; expected 1 (labels) or {logits.shape[1]} "
            f"(one-hot, as the logits' classes) for logits {tuple(logits.shape)}"
        )


def as_index_target(
    target: torch.Tensor, logits: torch.Tensor, *, ignore_index: int | None = -100
) -> torch.Tensor:
    """Integer labels ``(B, *spatial)`` from labels ``(B, *spatial)``, ``(B, 1, *)`` or one-hot.

    Args:
        target: ``(B, *spatial)`` or ``(B, 1, *spatial)`` labels (int or whole-valued float), or
            ``(B, C, *spatial)`` one-hot (any dtype holding 0/1).
        logits: ``(B, C, *spatial)``; only its shape is read.
        ignore_index: label of ignored positions (one-hot positions without a hot channel), or
            ``None`` (then such positions are an error).

    Returns:
        int64 ``(B, *spatial)``.

    Raises:
        ValueError: on a layout that fits none of the three, fractional float labels, or a
            one-hot target with values other than 0/1 (and ``ignore_index``), several hot
            channels at one position or (with ``ignore_index=None``) none.
    """
    target = plain_tensor(target)
    _check_layout(target, logits)
    if target.dim() == logits.dim() - 1:
        return _whole_long(target)
    if target.shape[1] == 1:
        return _whole_long(target[:, 0])
    hot, zero = target == 1, target == 0
    ignored = None if ignore_index is None else (target == ignore_index).any(1)
    ok = hot | zero if ignore_index is None else hot | zero | (target == ignore_index)
    if not bool(ok.all()):
        raise ValueError("a one-hot target may hold only 0 and 1 (and ignore_index)")
    count = hot.sum(1)
    if ignored is not None:
        count = count.masked_fill(ignored, 1)
    if bool((count > 1).any()):
        raise ValueError("a one-hot target has several hot channels at one position")
    labels = hot.to(torch.uint8).argmax(1)
    missing = count == 0
    if ignored is not None:
        missing |= ignored
    if bool(missing.any()):
        if ignore_index is None:
            raise ValueError(
                "a one-hot target has positions without a hot channel and ignore_index is None"
            )
        labels = labels.masked_fill(missing, ignore_index)
    return labels


def as_onehot_target(
    target: torch.Tensor, logits: torch.Tensor, *, ignore_index: int | None = -100
) -> torch.Tensor:
    """``{0, 1}`` float targets ``(B, C, *spatial)`` (multi-label losses) from any layout.

    A ``(B, C, *spatial)`` target is returned as is (as MONAI's ``to_onehot_y=False``); labels
    ``(B, 1, *spatial)`` or ``(B, *spatial)`` are one-hot encoded (``to_onehot_y=True``), with
    ignored labels set to ``ignore_index`` in every channel. With one logit channel (a binary
    sigmoid output) a ``(B, 1, *spatial)`` target already is the multi-label layout.
    """
    target = plain_tensor(target)
    _check_layout(target, logits)
    c = logits.shape[1]
    if target.dim() == logits.dim() and target.shape[1] == c:
        return target
    labels = _whole_long(target[:, 0] if target.dim() == logits.dim() else target)
    ignored = None if ignore_index is None else labels == ignore_index
    safe = labels if ignored is None else labels.masked_fill(ignored, 0)
    if bool(((safe < 0) | (safe >= c)).any()):
        raise ValueError(f"labels outside [0, {c}) cannot be one-hot encoded for {c} channels")
    dtype = logits.dtype if logits.dtype.is_floating_point else torch.float32
    shape = (labels.shape[0], c, *labels.shape[1:])
    out = torch.zeros(shape, dtype=dtype, device=labels.device).scatter_(1, safe.unsqueeze(1), 1)
    if ignored is not None:
        out = out.masked_fill(ignored.unsqueeze(1), ignore_index)
    return out


class MonaiTargets(nn.Module):
    """Wrap a calibrant loss or criterion so that it takes MONAI's target layouts.

    The wrapped module and its ALM terms are unchanged (they stay submodules, so
    :func:`calibrant.alm.alm_terms`, ``state_dict`` and the engine see them as before); only the
    target is converted before each call.

    Args:
        loss: a calibrant loss or criterion (e.g. ``LOSSES.build("crac", num_classes=3)``).
        target: what ``loss`` takes: ``"index"`` (multi-class losses and ALM terms: labels
            ``(B, *spatial)``) or ``"onehot"`` (multi-label losses: ``{0, 1}`` of the logits'
            shape).
        ignore_index: the loss's ignored label.

    Shape:
        - logits: ``(B, C, *spatial)``; target: ``(B, *spatial)``, ``(B, 1, *spatial)`` or
          ``(B, C, *spatial)`` one-hot.
    """

    def __init__(
        self, loss: nn.Module, *, target: str = "index", ignore_index: int | None = -100
    ) -> None:
        super().__init__()
        check_choice("target", target, ("index", "onehot"))
        self.loss = loss
        self.target = target
        self.ignore_index = ignore_index

    def convert(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The target in the layout the wrapped loss takes."""
        fn = as_index_target if self.target == "index" else as_onehot_target
        return fn(target, logits, ignore_index=self.ignore_index)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The wrapped loss on the converted target."""
        return self.loss(plain_tensor(logits), self.convert(logits, target))

    def terms(self, logits: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """Named terms of the wrapped criterion (``{"loss": value}`` if it has none)."""
        logits, target = plain_tensor(logits), self.convert(logits, target)
        terms = getattr(self.loss, "terms", None)
        return terms(logits, target) if callable(terms) else {"loss": self.loss(logits, target)}

    @torch.no_grad()
    def observe(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        """``observe`` of every ALM term inside the wrapped criterion, on the converted target."""
        from calibrant.alm.term import alm_terms

        target = self.convert(logits, target)
        for term in alm_terms(self.loss):
            term.observe(plain_tensor(logits), target)

    def step(self) -> list[dict[str, Any]]:
        """``step()`` of every ALM term inside the wrapped criterion; their log records."""
        from calibrant.alm.term import alm_terms

        return [term.step() for term in alm_terms(self.loss)]

    def extra_repr(self) -> str:
        """The target layout the wrapped loss takes."""
        return f"target={self.target!r}"
