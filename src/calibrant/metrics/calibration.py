r"""Binned calibration errors for multi-class classification and segmentation.

Top-label ECE/RMSCE/MCE/average CE, adaptive (equal-mass) ECE and their reliability curves;
:class:`PerVolumeMean` (the papers' per-volume protocol) comes from
:mod:`calibrant.metrics.per_volume` and is re-exported here. Class-wise ECE and TACE live in
:mod:`calibrant.metrics.classwise`, the proper scoring rules (Brier, NLL, neighbourhood Brier) in
:mod:`calibrant.metrics.scores`; all three modules share these conventions and the streaming base
of :mod:`calibrant.metrics._base`.

Every metric has a pure function and a :class:`torchmetrics.Metric` class over the same private
kernels (:mod:`calibrant.metrics._binning`). Class states are fixed-size sums (float64 sums,
int64 counts, ``dist_reduce_fx="sum"``), so streaming over batches and DDP ranks gives exactly the
one-shot value; the only exception is equal-mass binning, which is exact in the functions and
streamed from a fine histogram with a reported error bound.

Conventions (all documented in ``docs/metrics_calibration.md``):

* **Input.** Logits ``(B, C, *spatial)``, labels ``(B, *spatial)`` with ``ignore_index``.
  Probabilities only with ``input_kind="probs"`` (never guessed from the value range).
* **Bins.** ``n`` equal-width bins ``[b/n, (b+1)/n)``, bin index ``min(floor(fl32(p n)), n-1)``:
  a confidence of exactly 1.0 lands in the last bin and 0.0 in the first.
* **Pixel subset.** ``pixel_subset="all"`` (every non-ignored element) or ``"gt_fg"``
  (ground-truth label != 0, the CRaC/MbLS test protocol); ``mask`` selects a further subset.
* **Aggregation.** Functions and classes pool over everything they see; wrap a class in
  :class:`PerVolumeMean` (one ``update`` = one volume) for the papers' mean of per-volume values.
* **No valid element** gives NaN (never an error), so a volume without foreground is visible.

Example:
    >>> import torch
    >>> from calibrant.metrics import expected_calibration_error, CalibrationError
    >>> logits = torch.tensor([[4.0, 0.0], [0.0, 1.0], [2.0, 2.5]])
    >>> target = torch.tensor([0, 0, 1])
    >>> round(float(expected_calibration_error(logits, target, n_bins=10)), 4)
    0.3755
    >>> metric = CalibrationError(n_bins=10)
    >>> metric.update(logits[:2], target[:2]); metric.update(logits[2:], target[2:])
    >>> round(float(metric.compute()), 4)
    0.3755

Reference:
    Guo et al., On Calibration of Modern Neural Networks, ICML 2017 (ECE, MCE).
    Nixon et al., Measuring Calibration in Deep Learning, CVPR-W 2019 (adaptive ECE, TACE).
    Kull et al., Beyond temperature scaling, NeurIPS 2019 (class-wise ECE).
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from calibrant._checks import check_choice
from calibrant._tensor import float32
from calibrant.metrics import _binning as K
from calibrant.metrics._base import (
    CalMetric,
    Inputs,
    binned_function,
    register_norms,
)
from calibrant.metrics._curve import ReliabilityCurve
from calibrant.metrics.per_volume import _POOLED, PerVolumeMean
from calibrant.registry import METRICS

__all__ = [
    "expected_calibration_error",
    "rms_calibration_error",
    "maximum_calibration_error",
    "average_calibration_error",
    "adaptive_calibration_error",
    "reliability_curve",
    "CalibrationError",
    "AdaptiveCalibrationError",
    "PerVolumeMean",
]

# the registry metadata that this module's metrics share
_register = functools.partial(METRICS.register, task="multiclass", better="lower")

#: Default number of fine bins for streamed equal-mass top-label binning.
FINE_BINS = 1 << 14


# ----------------------------------------------------------------------------------------------
# Private accumulation over chunks (shared by functions and classes)
# ----------------------------------------------------------------------------------------------


def _top_label_bins(logits, target, mask, inputs: Inputs, n_bins: int, *, keep: bool = False):
    """Binned top-label sums; with ``keep`` also the raw (conf, correct) of valid elements."""
    chunks = inputs.chunks(logits, target, mask)
    bins = K.empty_bins((n_bins,), logits.device)
    kept_conf, kept_acc = [], []
    ws = K.Workspace()
    with torch.no_grad(), float32(logits):
        for ch in chunks:
            conf, correct, _ = K.top_label(ch.z, ch.t, inputs.input_kind, ws.like(ch.z))
            K.bin_values(bins, conf, correct, ch.valid, n_bins)
            if keep:
                kept_conf.append(conf[ch.valid])
                kept_acc.append(correct[ch.valid])
    if keep:
        dev = logits.device
        conf = torch.cat(kept_conf) if kept_conf else torch.zeros(0, device=dev)
        acc = torch.cat(kept_acc) if kept_acc else torch.zeros(0, dtype=torch.bool, device=dev)
        return bins, conf, acc
    return bins


def _top_label_error(logits, target, mask, inputs: Inputs, n_bins: int, norm: str):
    """The body of every equal-width top-label function: bin, then reduce with ``norm``."""
    K.check_n_bins(n_bins)
    return K.reduce_bins(_top_label_bins(logits, target, mask, inputs, n_bins), norm)


# ----------------------------------------------------------------------------------------------
# Top-label functions
# ----------------------------------------------------------------------------------------------


@binned_function
def expected_calibration_error(logits, target, mask, _inputs: Inputs, n_bins: int) -> torch.Tensor:
    r"""Top-label expected calibration error (ECE, L1) with ``n`` equal-width bins.

    .. math::
        \mathrm{ECE} = \sum_b \frac{n_b}{M} |\mathrm{acc}_b - \mathrm{conf}_b|

    where bin :math:`b` holds the :math:`n_b` valid elements (of :math:`M`) whose top-label
    confidence :math:`\hat p_i = \max_k \mathrm{softmax}(z_i)_k` has ``min(floor(p n), n-1) = b``
    (``[b/n, (b+1)/n)``; 1.0 in the last bin), :math:`\mathrm{acc}_b` is the fraction with
    ``argmax == target`` and :math:`\mathrm{conf}_b` the mean confidence.

    Args:
        logits: scores ``(B, C, *spatial)`` (any float dtype; computed in float32), or
            probabilities with ``input_kind="probs"``.
        target: labels ``(B, *spatial)``.
        n_bins: number of bins.
        ignore_index: label excluded from the metric (``None``: none).
        mask: optional bool ``(B, *spatial)``; only True elements count.
        pixel_subset: ``"all"`` or ``"gt_fg"`` (only elements whose label is not 0).
        input_kind: ``"logits"`` (default) or ``"probs"``.

    Returns:
        float64 scalar; NaN when no element is valid.

    Raises:
        ValueError: NaN/inf logits, shape/dtype mismatch, labels out of range.

    Shape:
        logits ``(B, C, *spatial)``, target ``(B, *spatial)``, output ``()``.

    Example:
        >>> logits = torch.tensor([[4.0, 0.0], [0.0, 1.0], [2.0, 2.5]])
        >>> round(float(expected_calibration_error(logits, torch.tensor([0, 0, 1]), n_bins=10)), 4)
        0.3755

    Reference:
        Guo et al., On Calibration of Modern Neural Networks, ICML 2017.
    """
    return _top_label_error(logits, target, mask, _inputs, n_bins, "l1")


@binned_function
def rms_calibration_error(logits, target, mask, _inputs: Inputs, n_bins: int) -> torch.Tensor:
    r"""Top-label root-mean-square calibration error (RMSCE, L2) with ``n`` equal-width bins.

    .. math::
        \mathrm{RMSCE} = \sqrt{\sum_b \frac{n_b}{M} (\mathrm{acc}_b - \mathrm{conf}_b)^2}

    over the bins of :func:`expected_calibration_error`, whose arguments, return value, errors
    and shapes it shares; it weighs large bin gaps more.

    Example:
        >>> logits = torch.tensor([[4.0, 0.0], [0.0, 1.0], [2.0, 2.5]])
        >>> round(float(rms_calibration_error(logits, torch.tensor([0, 0, 1]), n_bins=10)), 4)
        0.4752

    Reference:
        Nixon et al., Measuring Calibration in Deep Learning, CVPR Workshops 2019.
    """
    return _top_label_error(logits, target, mask, _inputs, n_bins, "l2")


@binned_function
def maximum_calibration_error(logits, target, mask, _inputs: Inputs, n_bins: int) -> torch.Tensor:
    r"""Top-label maximum calibration error (MCE): the largest gap of a non-empty bin.

    .. math::
        \mathrm{MCE} = \max_{b: n_b > 0} |\mathrm{acc}_b - \mathrm{conf}_b|

    over the equal-width bins of :func:`expected_calibration_error` (an empty bin has no gap),
    with the same arguments, return value, errors and shapes.

    Example:
        >>> logits = torch.tensor([[4.0, 0.0], [0.0, 1.0], [2.0, 2.5]])
        >>> round(float(maximum_calibration_error(logits, torch.tensor([0, 0, 1]), n_bins=10)), 4)
        0.7311

    Reference:
        Naeini et al., Obtaining Well Calibrated Probabilities Using Bayesian Binning, AAAI 2015;
        Guo et al., On Calibration of Modern Neural Networks, ICML 2017.
    """
    return _top_label_error(logits, target, mask, _inputs, n_bins, "max")


@binned_function
def average_calibration_error(logits, target, mask, _inputs: Inputs, n_bins: int) -> torch.Tensor:
    r"""Top-label average calibration error: the unweighted mean gap of the non-empty bins.

    .. math::
        \mathrm{AvgCE} = \frac{1}{|\{b: n_b>0\}|} \sum_{b: n_b > 0}
        |\mathrm{acc}_b - \mathrm{conf}_b|

    over the equal-width bins of :func:`expected_calibration_error`. Every non-empty bin weighs
    the same, however few elements it holds. This is not the adaptive (equal-mass) ECE, which is
    :func:`adaptive_calibration_error`. Arguments, return value, errors and shapes are those of
    :func:`expected_calibration_error`.

    Example:
        >>> logits = torch.tensor([[4.0, 0.0], [3.0, 0.0], [0.0, 1.0]])
        >>> target = torch.tensor([0, 0, 0])  # two right, confident; one wrong, less so
        >>> round(float(average_calibration_error(logits, target, n_bins=10)), 4)  # ECE 0.2655
        0.3819

    Reference:
        Nixon et al., Measuring Calibration in Deep Learning, CVPR Workshops 2019.
    """
    return _top_label_error(logits, target, mask, _inputs, n_bins, "avg")


@binned_function
def reliability_curve(logits, target, mask, _inputs: Inputs, n_bins: int) -> ReliabilityCurve:
    """Top-label reliability curve: per-bin count, mean confidence and accuracy.

    Same bins and arguments as :func:`expected_calibration_error`; empty bins have NaN means.

    Args:
        logits: ``(B, C, *spatial)`` (or probabilities with ``input_kind="probs"``).
        target: ``(B, *spatial)``.
        n_bins: equal-width bins.
        ignore_index: ignored label.
        mask: optional bool subset.
        pixel_subset: ``"all"`` or ``"gt_fg"``.
        input_kind: ``"logits"`` or ``"probs"``.

    Returns:
        A :class:`~calibrant.metrics.ReliabilityCurve`.

    Shape:
        ``edges (n_bins+1,)``, the others ``(n_bins,)``.

    Example:
        >>> curve = reliability_curve(torch.tensor([[4.0, 0.0], [0.0, 1.0]]),
        ...                           torch.tensor([0, 0]), n_bins=4)
        >>> curve.count.tolist()
        [0, 0, 1, 1]

    Reference:
        DeGroot & Fienberg, The comparison and evaluation of forecasters, 1983.
    """
    K.check_n_bins(n_bins)
    return K.curve_from_bins(_top_label_bins(logits, target, mask, _inputs, n_bins))


@binned_function
def adaptive_calibration_error(logits, target, mask, _inputs: Inputs, n_bins: int) -> torch.Tensor:
    r"""Adaptive (equal-mass) top-label ECE, exact (sort-based).

    Edges are the sorted confidences interpolated at ``linspace(0, M, n+1)`` (as the research
    code's ``AdaptiveECELoss``); bins are ``(e_b, e_{b+1}]`` except that the first bin is closed,
    so the smallest confidence is **included** (the research code drops it, METHODS E6).

    .. math::
        \mathrm{AdaECE} = \sum_b \frac{n_b}{M} |\mathrm{acc}_b - \mathrm{conf}_b|

    This one-shot form keeps every valid confidence (5 bytes per element); for streaming use
    :class:`AdaptiveCalibrationError` (fine histogram with an error bound).

    Args:
        logits: ``(B, C, *spatial)`` scores (probabilities with ``input_kind="probs"``).
        target: ``(B, *spatial)`` labels.
        n_bins: number of equal-mass bins (each holds about ``M / n_bins`` elements).
        ignore_index: ignored label; its elements take no part in the ranking.
        mask: optional bool ``(B, *spatial)``; the bins share out the True elements only.
        pixel_subset: ``"all"`` or ``"gt_fg"``; the bins share out the kept elements only.
        input_kind: ``"logits"`` or ``"probs"``.

    Returns:
        float64 scalar in ``[0, 1]`` (NaN with no valid element).

    Example:
        >>> logits = torch.tensor([[4.0, 0.0], [0.0, 1.0], [2.0, 2.5], [1.0, 0.0]])
        >>> round(float(adaptive_calibration_error(logits, torch.tensor([0, 0, 1, 1]),
        ...                                        n_bins=2)), 4)
        0.2756

    Reference:
        Nixon et al., Measuring Calibration in Deep Learning, CVPR Workshops 2019.
    """
    K.check_n_bins(n_bins)
    _, conf, acc = _top_label_bins(logits, target, mask, _inputs, 1, keep=True)
    return K.reduce_bins(K.adaptive_exact(conf, acc, n_bins, "interp"), "l1")


# ----------------------------------------------------------------------------------------------
# Streaming classes
# ----------------------------------------------------------------------------------------------


class _TopLabelHistogram(CalMetric):
    """Shared state and update of the top-label classes (private).

    State: ``count``/``conf``/``acc`` sums over ``hist_bins`` equal-width confidence bins (the
    ``n_bins`` bins themselves, or the fine sub-bins of an equal-mass binning); a subclass
    reduces the bins in ``_value``.
    """

    def __init__(
        self,
        n_bins: int,
        hist_bins: int,
        ignore_index: int | None,
        pixel_subset: str,
        input_kind: str,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        K.check_n_bins(n_bins)
        self._set_inputs(ignore_index, pixel_subset, input_kind)
        self.n_bins, self.hist_bins = n_bins, hist_bins
        self._add_bins((hist_bins,))

    def update(
        self, logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None
    ) -> None:
        """Add a batch ``(B, C, *spatial)`` / ``(B, *spatial)``."""
        self._add_to_bins(_top_label_bins(logits, target, mask, self.inputs, self.hist_bins))


class CalibrationError(_TopLabelHistogram):
    """Streaming top-label calibration error (ECE, RMSCE, MCE or average CE).

    States: ``count`` (int64), ``conf`` and ``acc`` (float64) per bin, so the state is
    ``24 n_bins`` bytes whatever the number of pixels, and the result equals
    :func:`expected_calibration_error` (etc.) on the concatenated data.

    Args:
        n_bins: equal-width bins.
        norm: ``"l1"`` (ECE), ``"l2"`` (RMSCE), ``"max"`` (MCE) or ``"avg"`` (average CE).
        ignore_index: ignored label.
        pixel_subset: ``"all"`` or ``"gt_fg"``.
        input_kind: ``"logits"`` or ``"probs"``.
        **kwargs: forwarded to :class:`torchmetrics.Metric`.

    Example:
        >>> m = CalibrationError(n_bins=10, norm="max")
        >>> m.update(torch.tensor([[4.0, 0.0], [0.0, 1.0], [2.0, 2.5]]), torch.tensor([0, 0, 1]))
        >>> round(float(m.compute()), 4)
        0.7311
        >>> m.curve().count.sum().item()
        3
    """

    def __init__(
        self,
        n_bins: int = 15,
        norm: str = "l1",
        *,
        ignore_index: int | None = -100,
        pixel_subset: str = "all",
        input_kind: str = "logits",
        **kwargs: Any,
    ) -> None:
        super().__init__(n_bins, n_bins, ignore_index, pixel_subset, input_kind, **kwargs)
        check_choice("norm", norm, K.NORMS)
        self.norm = norm

    def _value(self) -> torch.Tensor:
        return K.reduce_bins(self._bins(), self.norm)

    def curve(self) -> ReliabilityCurve:
        """Reliability curve of the accumulated state."""
        return K.curve_from_bins(self._bins())


@_register("adaptive_ece", legend=f"adaptive ECE: top-label, 15 equal-mass bins, {_POOLED}")
class AdaptiveCalibrationError(_TopLabelHistogram):
    """Streaming adaptive (equal-mass) top-label ECE from a fine equal-width histogram.

    The state is ``fine_bins`` equal-width sub-bins (default ``2**14``: 384 KiB). At
    :meth:`compute` each sub-bin is assigned whole to the equal-mass bin of its middle rank,
    which reproduces :func:`adaptive_calibration_error` except for samples in the few
    sub-bins that straddle an equal-mass boundary; :meth:`error_bound` returns the guaranteed
    bound ``|streamed - exact| <= 2 (samples in straddling sub-bins) / M``.

    Args:
        n_bins: equal-mass bins.
        fine_bins: sub-bins of the histogram.
        ignore_index: ignored label.
        pixel_subset: ``"all"`` or ``"gt_fg"``.
        input_kind: ``"logits"`` or ``"probs"``.
        **kwargs: forwarded to :class:`torchmetrics.Metric`.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> x, y = torch.randn(2000, 5, generator=g), torch.randint(0, 5, (2000,), generator=g)
        >>> m = AdaptiveCalibrationError()
        >>> m.update(x, y)
        >>> exact = adaptive_calibration_error(x, y)
        >>> bool((m.compute() - exact).abs() <= m.error_bound())
        True
    """

    def __init__(
        self,
        n_bins: int = 15,
        fine_bins: int = FINE_BINS,
        *,
        ignore_index: int | None = -100,
        pixel_subset: str = "all",
        input_kind: str = "logits",
        **kwargs: Any,
    ) -> None:
        K.check_n_bins(fine_bins, "fine_bins")
        super().__init__(n_bins, fine_bins, ignore_index, pixel_subset, input_kind, **kwargs)
        self.fine_bins = fine_bins

    def _value(self) -> torch.Tensor:
        bins, _ = K.adaptive_from_fine(self._bins(), self.n_bins, "interp")
        return K.reduce_bins(bins, "l1")

    def error_bound(self) -> torch.Tensor:
        """Upper bound on ``|compute() - adaptive_calibration_error(all data)|``."""
        return K.adaptive_from_fine(self._bins(), self.n_bins, "interp")[1]


# ----------------------------------------------------------------------------------------------
# Registry (the CLI's names)
# ----------------------------------------------------------------------------------------------


register_norms(
    CalibrationError,
    {
        "ece": ("l1", f"top-label ECE, 15 equal-width confidence bins, {_POOLED}"),
        "rmsce": ("l2", f"root-mean-square calibration error (top-label, 15 bins), {_POOLED}"),
        "mce": (
            "max",
            f"maximum calibration error: the largest bin gap (top-label, 15 bins), {_POOLED}",
        ),
        "average_ce": (
            "avg",
            "average calibration error: unweighted mean gap of the non-empty bins, " + _POOLED,
        ),
    },
    task="multiclass",
    better="lower",
)
