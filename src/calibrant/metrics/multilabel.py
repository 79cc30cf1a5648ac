r"""Multi-label calibration: reliability of the positive-label probability.

Every (sample, label) pair is one prediction: confidence :math:`\hat\eta_{it} =
\sigma(v_{it})` (the probability that label ``t`` is present) and outcome :math:`y_{it}\in\{0,1\}`
(the SPA paper's protocol, METHODS §7.5). Pairs are pooled over samples and labels, or kept per
label (``per_label=True``: one value per label, shape ``(T,)``). Bins follow the top-label rules
of :mod:`calibrant.metrics.calibration` (``[b/n, (b+1)/n)``, 1.0 in the last bin).

"ACE" is ambiguous in the literature; here ``"adaptive"`` (equal-mass bins, the default meaning
of ACE, METHODS C1) and ``"avg"`` (average over non-empty equal-width bins) are separate norms.

Example:
    >>> import torch
    >>> from calibrant.metrics import multilabel_calibration_error
    >>> v = torch.tensor([[2.0, -1.0], [0.5, 3.0]])
    >>> y = torch.tensor([[1, 0], [0, 1]])
    >>> round(float(multilabel_calibration_error(v, y, n_bins=10)), 4)
    0.2645

Reference:
    SPA/LPR paper (multi-label calibration tables); Nixon et al., CVPR-W 2019 (adaptive bins).
"""

from __future__ import annotations

from typing import Any

import torch

from calibrant._checks import check_choice, check_multilabel_target
from calibrant._tensor import float32
from calibrant.metrics import _binning as K
from calibrant.metrics._base import CalMetric, register_norms
from calibrant.metrics._curve import ReliabilityCurve

__all__ = [
    "multilabel_calibration_error",
    "multilabel_reliability_curve",
    "MultilabelCalibrationError",
    "ML_NORMS",
]

#: ``l1`` ECE, ``l2`` RMSCE, ``max`` MCE, ``avg`` average CE, ``adaptive`` equal-mass ECE (ACE).
ML_NORMS = ("l1", "l2", "max", "avg", "adaptive")
FINE_BINS = 1 << 14


def _check(logits, target, mask, input_kind):
    check_choice("input_kind", input_kind, K.INPUT_KINDS)
    if logits.dim() < 2:
        raise ValueError(f"logits must have shape (B, T, *), got {tuple(logits.shape)}")
    check_multilabel_target(logits, target)
    if mask is not None and (mask.dtype != torch.bool or mask.shape != target.shape):
        raise ValueError("mask must be a bool tensor with the target's shape")


def _pairs(logits, target, mask, input_kind):
    """Flatten to (T, L): probabilities, outcomes, validity (label on dim 0)."""
    T = logits.shape[1]
    with torch.no_grad(), float32(logits):
        v = logits.float().movedim(1, 0).reshape(T, -1)
        if input_kind == "probs":
            if not bool(((v >= 0) & (v <= 1)).all()):
                raise ValueError("probs must be finite and lie in [0, 1] (input_kind='probs')")
            p = v
        else:
            if not bool(torch.isfinite(v).all()):
                raise ValueError("logits contain NaN or infinite values")
            p = torch.sigmoid(v)
    y = target.movedim(1, 0).reshape(T, -1).bool()
    valid = (
        mask.movedim(1, 0).reshape(T, -1) if mask is not None else torch.ones_like(y, dtype=bool)
    )
    return p, y, valid


def _binned(p, y, valid, n_bins, per_label):
    T = p.shape[0]
    groups = T if per_label else 1
    out = K.empty_bins((groups, n_bins), p.device)
    slot = K.bin_index(p, n_bins).add_(y, alpha=n_bins)
    if per_label:
        slot += torch.arange(T, device=p.device).unsqueeze(1) * (2 * n_bins)
    slot.masked_fill_(~valid, 2 * n_bins * groups)
    K.accumulate(out, slot.reshape(-1), p.reshape(-1), 2 * n_bins * groups, groups)
    return out


def _value(p, y, valid, n_bins, norm, per_label):
    if norm != "adaptive":
        bins = _binned(p, y, valid, n_bins, per_label)
    elif per_label:
        per = [
            K.adaptive_exact(p[t][valid[t]], y[t][valid[t]], n_bins, "interp")
            for t in range(len(p))
        ]
        bins = K.Bins(*(torch.stack(v) for v in zip(*per, strict=True)))
    else:
        pooled = K.adaptive_exact(p[valid], y[valid], n_bins, "interp")
        bins = K.Bins(*(v.unsqueeze(0) for v in pooled))
    out = K.reduce_bins(bins, "l1" if norm == "adaptive" else norm)
    return out if per_label else out[0]


def multilabel_calibration_error(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    n_bins: int = 15,
    norm: str = "l1",
    per_label: bool = False,
    mask: torch.Tensor | None = None,
    input_kind: str = "logits",
) -> torch.Tensor:
    r"""Calibration error of positive-label probabilities pooled over (sample, label) pairs.

    .. math::
        \mathrm{ECE} = \sum_b \frac{n_b}{M} |\mathrm{freq}_b - \mathrm{conf}_b|,\quad
        \mathrm{freq}_b = \text{share of positive pairs in bin } b

    Args:
        logits: ``(B, T, *)`` per-label logits (sigmoid link), or probabilities with
            ``input_kind="probs"``.
        target: ``(B, T, *)`` in {0, 1}.
        n_bins: bins.
        norm: ``"l1"`` (ECE), ``"l2"``, ``"max"`` (MCE over non-empty bins), ``"avg"``
            (average CE over non-empty bins) or ``"adaptive"`` (equal-mass ECE, exact; the
            default meaning of "ACE").
        per_label: one value per label ``(T,)`` instead of the pooled scalar.
        mask: optional bool ``(B, T, *)``; only True pairs count.
        input_kind: ``"logits"`` or ``"probs"``.

    Returns:
        float64 scalar, or ``(T,)`` with ``per_label`` (NaN where no pair is valid).

    Example:
        >>> v = torch.tensor([[2.0, -1.0], [0.5, 3.0]]); y = torch.tensor([[1, 0], [0, 1]])
        >>> multilabel_calibration_error(v, y, n_bins=10, norm="max", per_label=True)
        tensor([0.6225, 0.2689], dtype=torch.float64)

    Reference:
        SPA/LPR paper; METHODS §7.5 and §10.C1.
    """
    K.check_n_bins(n_bins)
    check_choice("norm", norm, ML_NORMS)
    _check(logits, target, mask, input_kind)
    p, y, valid = _pairs(logits, target, mask, input_kind)
    return _value(p, y, valid, n_bins, norm, per_label)


def multilabel_reliability_curve(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    n_bins: int = 15,
    mask: torch.Tensor | None = None,
    input_kind: str = "logits",
) -> ReliabilityCurve:
    """Pooled positive-label reliability curve (per-bin count, mean probability, frequency).

    Example:
        >>> c = multilabel_reliability_curve(torch.tensor([[2.0, -1.0]]), torch.tensor([[1, 0]]),
        ...                                  n_bins=4)
        >>> c.count.tolist()
        [0, 1, 0, 1]
    """
    K.check_n_bins(n_bins)
    _check(logits, target, mask, input_kind)
    p, y, valid = _pairs(logits, target, mask, input_kind)
    bins = _binned(p, y, valid, n_bins, False)
    return K.curve_from_bins(K.Bins(*(v[0] for v in bins)))


class MultilabelCalibrationError(CalMetric):
    """Streaming multi-label calibration error (see :func:`multilabel_calibration_error`).

    States are per (group, bin) sums with group = label (``per_label``) or one pooled group.
    ``norm="adaptive"`` keeps a fine histogram of ``fine_bins`` sub-bins per group and equals
    the exact function up to :meth:`error_bound`.

    Args:
        n_bins: bins.
        norm: one of :data:`ML_NORMS`.
        per_label: per-label values.
        num_labels: ``T`` (required with ``per_label``; checked on update).
        fine_bins: sub-bins for ``norm="adaptive"``.
        input_kind: ``"logits"`` or ``"probs"``.
        **kwargs: forwarded to :class:`torchmetrics.Metric`.

    Example:
        >>> m = MultilabelCalibrationError(n_bins=10)
        >>> m.update(torch.tensor([[2.0, -1.0]]), torch.tensor([[1, 0]]))
        >>> m.update(torch.tensor([[0.5, 3.0]]), torch.tensor([[0, 1]]))
        >>> round(float(m.compute()), 4)
        0.2645
    """

    def __init__(
        self,
        n_bins: int = 15,
        norm: str = "l1",
        *,
        per_label: bool = False,
        num_labels: int | None = None,
        fine_bins: int = FINE_BINS,
        input_kind: str = "logits",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        K.check_n_bins(n_bins)
        K.check_n_bins(fine_bins, "fine_bins")
        check_choice("norm", norm, ML_NORMS)
        check_choice("input_kind", input_kind, K.INPUT_KINDS)
        if per_label and num_labels is None:
            raise ValueError("per_label=True needs num_labels (the state size is fixed)")
        self.n_bins, self.norm, self.per_label = n_bins, norm, per_label
        self.num_labels, self.input_kind = num_labels, input_kind
        self.hist_bins = fine_bins if norm == "adaptive" else n_bins
        self._add_bins((num_labels if per_label else 1, self.hist_bins))

    def update(
        self, logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None
    ) -> None:
        """Add a batch ``(B, T, *)``."""
        _check(logits, target, mask, self.input_kind)
        if self.num_labels is not None and logits.shape[1] != self.num_labels:
            raise ValueError(
                f"logits have {logits.shape[1]} labels on dim 1 but num_labels={self.num_labels}"
            )
        p, y, valid = _pairs(logits, target, mask, self.input_kind)
        self._add_to_bins(_binned(p, y, valid, self.hist_bins, self.per_label))

    def _coarse(self) -> tuple[K.Bins, torch.Tensor]:
        bins = self._bins()
        if self.norm != "adaptive":
            return bins, self.conf.new_zeros(bins.count.shape[0])
        return K.adaptive_from_fine(bins, self.n_bins, "interp")

    def _value(self) -> torch.Tensor:
        bins, _ = self._coarse()
        out = K.reduce_bins(bins, "l1" if self.norm == "adaptive" else self.norm)
        return out if self.per_label else out[0]

    def error_bound(self) -> torch.Tensor:
        """Bound on ``|compute() - exact|`` (0 unless ``norm="adaptive"``)."""
        _, b = self._coarse()
        return b if self.per_label else b[0]


def _legend(what: str) -> str:
    return f"{what} of σ(v) against the 0/1 label, every (sample, label) pair pooled"


register_norms(
    MultilabelCalibrationError,
    {
        "multilabel_ece": ("l1", _legend("ECE (15 equal-width bins)")),
        "multilabel_ace": (
            "adaptive",
            _legend("adaptive ECE (equal-mass bins; the SPA paper's ACE)"),
        ),
        "multilabel_average_ce": (
            "avg",
            _legend("average calibration error (unweighted mean bin gap)"),
        ),
        "multilabel_mce": ("max", _legend("maximum calibration error (largest bin gap)")),
        "multilabel_rmsce": ("l2", _legend("root-mean-square calibration error")),
    },
    task="multilabel",
    better="lower",
)
