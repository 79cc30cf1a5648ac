r"""Signed over-confidence: mean confidence minus accuracy (positive = over-confident).

ECE says how far confidence is from accuracy but not in which direction; a calibration method
can only help a network that is over-confident, so the sign is the first thing to measure. For
the same elements and pixel subset as the ECE,

.. math::
    \mathrm{OC} = \frac{1}{M}\sum_{i=1}^{M} \big(\hat p_i - \mathbb{1}[\hat y_i = y_i]\big)
                = \sum_b \frac{n_b}{M} (\mathrm{conf}_b - \mathrm{acc}_b),

the signed sum of the ECE's bin gaps (any binning gives the same value, so it is computed with
one bin through the ECE's own kernels; ``|OC| <= ECE``).

* Multi-class and segmentation: :math:`\hat p_i = \max_k \mathrm{softmax}(z_i)_k`,
  :math:`\hat y_i = \arg\max_k z_{ik}` (first maximal index); ``pixel_subset="gt_fg"`` keeps
  ground-truth-foreground pixels (the papers' protocol). Registered as ``overconfidence``
  (pooled) and ``paper_overconfidence`` (ground-truth foreground, mean over volumes, as
  ``paper_ece``).
* Multi-label: each (sample, label) pair is a binary decision. With :math:`p = \sigma(v)`, the
  decision is "present" when :math:`p \ge 0.5`, its confidence :math:`\max(p, 1-p)` and it is
  correct when it matches :math:`y`. (The SPA paper's ACE bins :math:`p` itself; the signed gap
  of :math:`p` would cancel over-confident errors on both sides, so the binary top-label view is
  used.) Registered as ``multilabel_overconfidence``.

Example:
    >>> import torch
    >>> from calibrant.metrics import overconfidence, OverConfidence
    >>> logits = torch.tensor([[4.0, 0.0], [0.0, 1.0], [2.0, 2.5]])
    >>> target = torch.tensor([0, 0, 1])
    >>> round(float(overconfidence(logits, target)), 4)  # (0.982 + 0.731 + 0.622 - 2) / 3
    0.1118
    >>> m = OverConfidence()
    >>> m.update(logits[:1], target[:1]); m.update(logits[1:], target[1:])
    >>> round(float(m.compute()), 4)
    0.1118

Reference:
    Guo et al., On Calibration of Modern Neural Networks, ICML 2017 (over-confidence of modern
    networks: mean confidence above accuracy).
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from calibrant.metrics import _binning as K
from calibrant.metrics._base import CalMetric, Inputs, element_function
from calibrant.metrics.calibration import CalibrationError, _top_label_error
from calibrant.metrics.multilabel import _check as _check_multilabel
from calibrant.metrics.multilabel import _pairs
from calibrant.registry import METRICS

__all__ = [
    "overconfidence",
    "multilabel_overconfidence",
    "OverConfidence",
    "MultilabelOverConfidence",
]

# the registry metadata that this module's metrics share
_register = functools.partial(METRICS.register, better="zero")


@element_function
def overconfidence(logits, target, mask, _inputs: Inputs) -> torch.Tensor:
    r"""Mean top-label confidence minus accuracy over the valid elements.

    Args:
        logits: scores ``(B, C, *spatial)``, or probabilities with ``input_kind="probs"``.
        target: labels ``(B, *spatial)``.
        ignore_index: label excluded (``None``: none).
        mask: optional bool ``(B, *spatial)``; only True elements count.
        pixel_subset: ``"all"`` or ``"gt_fg"`` (only elements whose label is not 0).
        input_kind: ``"logits"`` or ``"probs"``.

    Returns:
        float64 scalar in ``[-1, 1]``; positive means over-confident; NaN with no valid element.

    Shape:
        logits ``(B, C, *spatial)``, target ``(B, *spatial)``, output ``()``.

    Example:
        >>> round(float(overconfidence(torch.tensor([[3.0, 0.0]]), torch.tensor([1]))), 4)
        0.9526
    """
    return _top_label_error(logits, target, mask, _inputs, 1, "signed")


def _binary_decisions(logits, target, mask, input_kind) -> K.Bins:
    """One-bin sums of the binary top-label confidence and correctness of every valid pair."""
    _check_multilabel(logits, target, mask, input_kind)
    p, y, valid = _pairs(logits, target, mask, input_kind)
    conf, correct = K.binary_decision(p, y)
    return K.Bins(
        valid.sum().reshape(1).long(),
        (conf * valid).sum().reshape(1),
        (correct * valid).sum().reshape(1),
    )


def multilabel_overconfidence(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    input_kind: str = "logits",
) -> torch.Tensor:
    r"""Over-confidence of the binary decisions of every (sample, label) pair.

    :math:`\frac{1}{M}\sum_{i,t} \big(\max(p_{it}, 1 - p_{it}) -
    \mathbb{1}[(p_{it} \ge 0.5) = y_{it}]\big)` with :math:`p = \sigma(v)`.

    Args:
        logits: scores ``(B, T, *)``, or probabilities with ``input_kind="probs"``.
        target: ``{0, 1}`` labels of the logits' shape.
        mask: optional bool of the target's shape.
        input_kind: ``"logits"`` or ``"probs"``.

    Returns:
        float64 scalar; NaN with no valid pair.

    Example:
        >>> v = torch.tensor([[2.0, -1.0], [0.5, 3.0]])
        >>> y = torch.tensor([[1, 0], [0, 1]])
        >>> round(float(multilabel_overconfidence(v, y)), 4)  # 0.7968 - 3/4
        0.0467
    """
    return K.reduce_bins(_binary_decisions(logits, target, mask, input_kind), "signed")


@_register(
    "overconfidence",
    task="multiclass",
    legend="signed over-confidence: mean top-label confidence minus accuracy (> 0: "
    "over-confident), all samples pooled (for segmentation every pixel)",
)
class OverConfidence(CalibrationError):
    """Streaming :func:`overconfidence` (one-bin sums: count, confidence, correctness).

    Args:
        ignore_index: ignored label.
        pixel_subset: ``"all"``, or ``"gt_fg"`` as in the registered ``paper_overconfidence``.
        input_kind: ``"logits"`` or ``"probs"``.
        **kwargs: forwarded to :class:`torchmetrics.Metric`.

    Example:
        >>> m = OverConfidence()
        >>> m.update(torch.tensor([[3.0, 0.0]]), torch.tensor([0]))
        >>> round(float(m.compute()), 4)
        -0.0474
    """

    higher_is_better = None  # 0 is best; the sign is the information

    def __init__(
        self,
        *,
        ignore_index: int | None = -100,
        pixel_subset: str = "all",
        input_kind: str = "logits",
        **kwargs: Any,
    ) -> None:
        super().__init__(
            1,
            "signed",
            ignore_index=ignore_index,
            pixel_subset=pixel_subset,
            input_kind=input_kind,
            **kwargs,
        )


@_register(
    "multilabel_overconfidence",
    task="multilabel",
    legend="signed over-confidence of every (sample, label) decision at σ ≥ 0.5 (> 0: "
    "over-confident), all pairs pooled",
)
class MultilabelOverConfidence(CalMetric):
    """Streaming :func:`multilabel_overconfidence` (one-bin sums, exact under DDP).

    Args:
        input_kind: ``"logits"`` or ``"probs"``.
        **kwargs: forwarded to :class:`torchmetrics.Metric`.

    Example:
        >>> m = MultilabelOverConfidence()
        >>> m.update(torch.tensor([[2.0, -1.0]]), torch.tensor([[1, 0]]))
        >>> m.update(torch.tensor([[0.5, 3.0]]), torch.tensor([[0, 1]]))
        >>> round(float(m.compute()), 4)
        0.0467
    """

    higher_is_better = None

    def __init__(self, *, input_kind: str = "logits", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.input_kind = input_kind
        self._add_bins((1,))

    def update(
        self, logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None
    ) -> None:
        """Add a batch ``(B, T, *)``."""
        self._add_to_bins(_binary_decisions(logits, target, mask, self.input_kind))

    def _value(self) -> torch.Tensor:
        return K.reduce_bins(self._bins(), "signed")
