r"""Binned calibration errors for multi-class classification and segmentation.

Top-label ECE/RMSCE/MCE/average CE, adaptive (equal-mass) ECE, class-wise ECE and TACE, their
reliability curves, and :class:`PerVolumeMean` (the papers' per-volume protocol). The proper
scoring rules (Brier, NLL, neighbourhood Brier) live in :mod:`calibrant.metrics.scores` and share
this module's conventions and streaming base.

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

import math
from typing import Any

import torch
from torchmetrics import Metric

from calibrant._checks import check_choice
from calibrant._tensor import float32
from calibrant.metrics import _binning as K
from calibrant.metrics._curve import ReliabilityCurve
from calibrant.registry import METRICS

__all__ = [
    "expected_calibration_error",
    "rms_calibration_error",
    "maximum_calibration_error",
    "average_calibration_error",
    "adaptive_calibration_error",
    "reliability_curve",
    "classwise_calibration_error",
    "tace",
    "CalibrationError",
    "AdaptiveCalibrationError",
    "ClasswiseCalibrationError",
    "TACE",
    "PerVolumeMean",
    "TACE_MODES",
    "CLASS_RANGES",
]

CLASS_RANGES = ("all", "present")
#: TACE modes -> (binning scheme, default n_bins, default include_background, default class
#: range, divide by n_bins).
TACE_MODES: dict[str, tuple[str, int, bool, str, bool]] = {
    "nixon": ("interp", 15, False, "all", False),
    "crac": ("uniform", 15, True, "present", False),
    "svls": ("rank", 10, False, "all", True),
}
#: Default number of fine bins for streamed equal-mass binning (top-label / per class).
FINE_BINS = 1 << 14
FINE_BINS_CLASSWISE = 1 << 12


# ----------------------------------------------------------------------------------------------
# Private accumulation over chunks (shared by functions and classes)
# ----------------------------------------------------------------------------------------------


def _prepare(logits, target, mask, *, num_classes, input_kind, pixel_subset):
    """Validate a batch (shared with :mod:`calibrant.metrics.scores`)."""
    K.check_inputs(
        logits,
        target,
        num_classes=num_classes,
        mask=mask,
        input_kind=input_kind,
        pixel_subset=pixel_subset,
    )


def _top_label_bins(
    logits, target, *, n_bins, ignore_index, mask, input_kind, pixel_subset, keep=False
):
    """Binned top-label sums; with ``keep`` also the raw (conf, correct) of valid elements."""
    _prepare(
        logits, target, mask, num_classes=None, input_kind=input_kind, pixel_subset=pixel_subset
    )
    bins = K.empty_bins((n_bins,), logits.device)
    kept_conf, kept_acc = [], []
    ws = K.Workspace()
    with torch.no_grad(), float32(logits):
        for ch in K.iter_chunks(
            logits, target, ignore_index=ignore_index, mask=mask, pixel_subset=pixel_subset
        ):
            conf, correct, _ = K.top_label(ch.z, ch.t, input_kind, ws.like(ch.z))
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


def _probs_chunk(ch: K.Chunk, input_kind: str, ws: K.Workspace) -> torch.Tensor:
    return K.class_probs(ch.z, input_kind)


def _classwise_bins(
    logits,
    target,
    *,
    n_bins,
    threshold,
    ignore_index,
    mask,
    input_kind,
    pixel_subset,
    num_classes,
    keep=False,
):
    """Per-class binned sums ``(C, n_bins)``, label counts ``(C,)``; with ``keep`` raw values."""
    _prepare(
        logits,
        target,
        mask,
        num_classes=num_classes,
        input_kind=input_kind,
        pixel_subset=pixel_subset,
    )
    C = logits.shape[1]
    bins = K.empty_bins((C, n_bins), logits.device)
    labels = torch.zeros(C, dtype=torch.int64, device=logits.device)
    kept_p, kept_t = [], []
    ws = K.Workspace()
    with torch.no_grad(), float32(logits):
        for ch in K.iter_chunks(
            logits, target, ignore_index=ignore_index, mask=mask, pixel_subset=pixel_subset
        ):
            p = _probs_chunk(ch, input_kind, ws)
            K.bin_classwise(bins, p, ch.t, ch.valid, n_bins, threshold)
            labels += torch.bincount(torch.where(ch.valid, ch.t, C), minlength=C + 1)[:C]
            if keep:
                kept_p.append(p[:, ch.valid])
                kept_t.append(ch.t[ch.valid])
    if keep:
        dev = logits.device
        p = torch.cat(kept_p, 1) if kept_p else torch.zeros(C, 0, device=dev)
        t = torch.cat(kept_t) if kept_t else torch.zeros(0, dtype=torch.long, device=dev)
        return bins, labels, p, t
    return bins, labels


def _class_selection(labels: torch.Tensor, class_range: str, include_background: bool):
    """Bool ``(C,)`` of the classes averaged over (``None`` if no valid element was seen)."""
    C = labels.shape[0]
    if int(labels.sum()) == 0:
        return None
    sel = torch.ones(C, dtype=torch.bool, device=labels.device)
    if class_range == "present":  # research code: classes 0..max(label) of the evaluated set
        top = int(torch.nonzero(labels).max())
        sel[top + 1 :] = False
    if not include_background:
        sel[0] = False
    return sel


def _classwise_value(
    bins: K.Bins,
    labels: torch.Tensor,
    *,
    class_range: str,
    include_background: bool,
    divide_by_bins: bool = False,
) -> torch.Tensor:
    """Mean over selected classes of the per-class ECE (a class with no kept sample adds 0)."""
    sel = _class_selection(labels, class_range, include_background)
    nan = torch.tensor(float("nan"), dtype=torch.float64, device=labels.device)
    if sel is None or not bool(sel.any()):
        return nan
    per_class = K.reduce_bins(bins, "l1").nan_to_num(0.0)
    if divide_by_bins:
        per_class = per_class / bins.count.shape[-1]
    return per_class[sel].mean()


def _check_class_args(class_range, include_background):
    check_choice("class_range", class_range, CLASS_RANGES)
    if not isinstance(include_background, bool):
        raise ValueError(f"include_background must be a bool, got {include_background!r}")


def _check_threshold(threshold: float) -> None:
    if not 0.0 <= threshold < 1.0:
        raise ValueError(f"threshold must lie in [0, 1), got {threshold!r}")


# ----------------------------------------------------------------------------------------------
# Top-label functions
# ----------------------------------------------------------------------------------------------


def _top_label(norm: str):
    def fn(
        logits: torch.Tensor,
        target: torch.Tensor,
        *,
        n_bins: int = 15,
        ignore_index: int | None = -100,
        mask: torch.Tensor | None = None,
        pixel_subset: str = "all",
        input_kind: str = "logits",
    ) -> torch.Tensor:
        K.check_n_bins(n_bins)
        bins = _top_label_bins(
            logits,
            target,
            n_bins=n_bins,
            ignore_index=ignore_index,
            mask=mask,
            input_kind=input_kind,
            pixel_subset=pixel_subset,
        )
        return K.reduce_bins(bins, norm)

    return fn


_ECE_DOC = r"""Top-label {title} with {n} equal-width bins.

    .. math::
        {math}

    where bin :math:`b` holds the valid elements whose top-label confidence
    :math:`\hat p_i = \max_k \mathrm{{softmax}}(z_i)_k` has ``min(floor(p n), n-1) = b``
    (``[b/n, (b+1)/n)``; 1.0 in the last bin), :math:`\mathrm{{acc}}_b` is the fraction with
    ``argmax == target`` and :math:`\mathrm{{conf}}_b` the mean confidence.

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
        >>> round(float({name}(logits, torch.tensor([0, 0, 1]), n_bins=10)), 4)
        {example}

    Reference:
        Guo et al., On Calibration of Modern Neural Networks, ICML 2017.
    """

expected_calibration_error = _top_label("l1")
expected_calibration_error.__name__ = "expected_calibration_error"
expected_calibration_error.__doc__ = _ECE_DOC.format(
    title="expected calibration error (ECE, L1)",
    n="``n``",
    math=r"\mathrm{ECE} = \sum_b \frac{n_b}{M} |\mathrm{acc}_b - \mathrm{conf}_b|",
    name="expected_calibration_error",
    example="0.3755",
)
rms_calibration_error = _top_label("l2")
rms_calibration_error.__name__ = "rms_calibration_error"
rms_calibration_error.__doc__ = _ECE_DOC.format(
    title="root-mean-square calibration error (RMSCE, L2)",
    n="``n``",
    math=r"\mathrm{RMSCE} = \sqrt{\sum_b \frac{n_b}{M} (\mathrm{acc}_b - \mathrm{conf}_b)^2}",
    name="rms_calibration_error",
    example="0.4752",
)
maximum_calibration_error = _top_label("max")
maximum_calibration_error.__name__ = "maximum_calibration_error"
maximum_calibration_error.__doc__ = _ECE_DOC.format(
    title="maximum calibration error (MCE) over non-empty bins",
    n="``n``",
    math=r"\mathrm{MCE} = \max_{b: n_b > 0} |\mathrm{acc}_b - \mathrm{conf}_b|",
    name="maximum_calibration_error",
    example="0.7311",
)
average_calibration_error = _top_label("avg")
average_calibration_error.__name__ = "average_calibration_error"
average_calibration_error.__doc__ = _ECE_DOC.format(
    title="average calibration error (unweighted mean over non-empty bins; not adaptive ECE)",
    n="``n``",
    math=r"\mathrm{AvgCE} = \frac{1}{|\{b: n_b>0\}|} \sum_{b: n_b > 0}"
    r" |\mathrm{acc}_b - \mathrm{conf}_b|",
    name="average_calibration_error",
    example="0.3755",
)


def reliability_curve(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    n_bins: int = 15,
    ignore_index: int | None = -100,
    mask: torch.Tensor | None = None,
    pixel_subset: str = "all",
    input_kind: str = "logits",
) -> ReliabilityCurve:
    """Top-label reliability curve: per-bin count, mean confidence and accuracy.

    Same bins and arguments as :func:`expected_calibration_error`; empty bins have NaN means.

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
    bins = _top_label_bins(
        logits,
        target,
        n_bins=n_bins,
        ignore_index=ignore_index,
        mask=mask,
        input_kind=input_kind,
        pixel_subset=pixel_subset,
    )
    return K.curve_from_bins(bins)


def adaptive_calibration_error(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    n_bins: int = 15,
    ignore_index: int | None = -100,
    mask: torch.Tensor | None = None,
    pixel_subset: str = "all",
    input_kind: str = "logits",
) -> torch.Tensor:
    r"""Adaptive (equal-mass) top-label ECE, exact (sort-based).

    Edges are the sorted confidences interpolated at ``linspace(0, M, n+1)`` (as the research
    code's ``AdaptiveECELoss``); bins are ``(e_b, e_{b+1}]`` except that the first bin is closed,
    so the smallest confidence is **included** (the research code drops it, METHODS E6).

    .. math::
        \mathrm{AdaECE} = \sum_b \frac{n_b}{M} |\mathrm{acc}_b - \mathrm{conf}_b|

    This one-shot form keeps every valid confidence (5 bytes per element); for streaming use
    :class:`AdaptiveCalibrationError` (fine histogram with an error bound).

    Args:
        logits: ``(B, C, *spatial)``; see :func:`expected_calibration_error` for the others.
        target: ``(B, *spatial)``.
        n_bins: number of equal-mass bins.
        ignore_index: ignored label.
        mask: optional bool subset.
        pixel_subset: ``"all"`` or ``"gt_fg"``.
        input_kind: ``"logits"`` or ``"probs"``.

    Returns:
        float64 scalar (NaN with no valid element).

    Example:
        >>> logits = torch.tensor([[4.0, 0.0], [0.0, 1.0], [2.0, 2.5], [1.0, 0.0]])
        >>> round(float(adaptive_calibration_error(logits, torch.tensor([0, 0, 1, 1]),
        ...                                        n_bins=2)), 4)
        0.2756

    Reference:
        Nixon et al., Measuring Calibration in Deep Learning, CVPR Workshops 2019.
    """
    K.check_n_bins(n_bins)
    _, conf, acc = _top_label_bins(
        logits,
        target,
        n_bins=1,
        ignore_index=ignore_index,
        mask=mask,
        input_kind=input_kind,
        pixel_subset=pixel_subset,
        keep=True,
    )
    return K.reduce_bins(K.adaptive_exact(conf, acc, n_bins, "interp"), "l1")


# ----------------------------------------------------------------------------------------------
# Class-wise and TACE
# ----------------------------------------------------------------------------------------------


def classwise_calibration_error(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    num_classes: int,
    n_bins: int = 15,
    class_range: str = "all",
    include_background: bool = True,
    threshold: float = 0.0,
    ignore_index: int | None = -100,
    mask: torch.Tensor | None = None,
    pixel_subset: str = "all",
    input_kind: str = "logits",
) -> torch.Tensor:
    r"""Class-wise ECE (SCE): the mean over classes of each class's equal-width ECE.

    .. math::
        \mathrm{CECE} = \frac{1}{|\mathcal C|} \sum_{c\in\mathcal C} \sum_b
        \frac{n_{cb}}{M_c} \Big|\frac{1}{n_{cb}}\sum_{i\in b} 1[y_i=c] - s_{ic}\Big|

    Bin ``b`` of class ``c`` holds the valid elements with ``min(floor(n s_ic), n-1) = b``;
    ``M_c`` is the number of valid elements (with ``threshold > 0``: those with
    ``s_ic > threshold``; a class left with none contributes 0).

    Args:
        logits: ``(B, C, *spatial)``.
        target: ``(B, *spatial)``.
        num_classes: ``C`` (explicit; must match ``logits.shape[1]``).
        n_bins: equal-width bins.
        class_range: ``"all"`` (classes ``0..C-1``) or ``"present"`` (the research code:
            ``0..max(target)`` over the evaluated elements).
        include_background: keep class 0 in the mean.
        threshold: keep only ``s_ic > threshold`` per class (0: keep all).
        ignore_index: ignored label.
        mask: optional bool subset.
        pixel_subset: ``"all"`` or ``"gt_fg"``.
        input_kind: ``"logits"`` or ``"probs"``.

    Returns:
        float64 scalar (NaN with no valid element).

    Example:
        >>> logits = torch.tensor([[4.0, 0.0], [0.0, 1.0], [2.0, 2.5]])
        >>> round(float(classwise_calibration_error(logits, torch.tensor([0, 0, 1]),
        ...                                         num_classes=2, n_bins=10)), 4)
        0.3755

    Reference:
        Kull et al., Beyond temperature scaling, NeurIPS 2019.
    """
    K.check_n_bins(n_bins)
    _check_class_args(class_range, include_background)
    _check_threshold(threshold)
    bins, labels = _classwise_bins(
        logits,
        target,
        n_bins=n_bins,
        threshold=threshold,
        ignore_index=ignore_index,
        mask=mask,
        input_kind=input_kind,
        pixel_subset=pixel_subset,
        num_classes=num_classes,
    )
    return _classwise_value(
        bins, labels, class_range=class_range, include_background=include_background
    )


def _tace_settings(mode, n_bins, include_background, class_range):
    check_choice("mode", mode, tuple(TACE_MODES))
    scheme, nb, bg, cr, divide = TACE_MODES[mode]
    n_bins = nb if n_bins is None else n_bins
    include_background = bg if include_background is None else include_background
    class_range = cr if class_range is None else class_range
    K.check_n_bins(n_bins)
    _check_class_args(class_range, include_background)
    return scheme, n_bins, include_background, class_range, divide


def tace(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    num_classes: int,
    mode: str = "crac",
    n_bins: int | None = None,
    threshold: float = 1e-3,
    include_background: bool | None = None,
    class_range: str | None = None,
    ignore_index: int | None = -100,
    mask: torch.Tensor | None = None,
    pixel_subset: str = "all",
    input_kind: str = "logits",
) -> torch.Tensor:
    r"""Thresholded adaptive calibration error (TACE) in one of the literature's three forms.

    Per class ``c``, keep the elements with ``s_ic > threshold`` and bin them; the value is the
    mean over the selected classes of

    * ``mode="nixon"``: equal-mass bins (exact, as :func:`adaptive_calibration_error`),
      :math:`\sum_b \frac{n_b}{M_c}|\mathrm{freq}_b-\mathrm{conf}_b|`, 15 bins, background
      excluded by default (Nixon et al.).
    * ``mode="crac"``: equal-width bins, same weighted sum, 15 bins, background column included,
      classes ``0..max(target)`` (CRaC code's ``ThreshClasswiseECELoss``).
    * ``mode="svls"``: 10 rank-based equal-mass bins (``M_c // 10`` each, the last takes the
      remainder), background excluded, and the weighted sum **divided by the number of bins**
      (the SVLS code's scaling quirk).

    Args:
        logits: ``(B, C, *spatial)``.
        target: ``(B, *spatial)``.
        num_classes: ``C``.
        mode: ``"nixon" | "crac" | "svls"``.
        n_bins: bins (default by mode: 15, 15, 10).
        threshold: probability threshold (default 1e-3; BWCR's copy of SVLS uses 1e-2).
        include_background: override the mode's default.
        class_range: ``"all"`` or ``"present"``; default by mode (crac: ``"present"``).
        ignore_index: ignored label.
        mask: optional bool subset.
        pixel_subset: ``"all"`` or ``"gt_fg"`` (CRaC's protocol evaluates ``"gt_fg"``).
        input_kind: ``"logits"`` or ``"probs"``.

    Returns:
        float64 scalar (NaN with no valid element or no selected class).

    Example:
        >>> logits = torch.tensor([[4.0, 0.0, 0.0], [0.0, 1.0, 0.0], [2.0, 2.5, 0.0]])
        >>> t = torch.tensor([0, 2, 1])
        >>> [round(float(tace(logits, t, num_classes=3, mode=m, n_bins=2)), 4)
        ...  for m in ("nixon", "crac", "svls")]
        [0.3093, 0.1682, 0.0786]

    Reference:
        Nixon et al., Measuring Calibration in Deep Learning, CVPR-W 2019; Islam & Glocker,
        Spatially Varying Label Smoothing, IPMI 2021; CRaC (MICCAI 2024) code.
    """
    scheme, n_bins, include_background, class_range, divide = _tace_settings(
        mode, n_bins, include_background, class_range
    )
    _check_threshold(threshold)
    if scheme == "uniform":
        bins, labels = _classwise_bins(
            logits,
            target,
            n_bins=n_bins,
            threshold=threshold,
            ignore_index=ignore_index,
            mask=mask,
            input_kind=input_kind,
            pixel_subset=pixel_subset,
            num_classes=num_classes,
        )
    else:
        _, labels, p, t = _classwise_bins(
            logits,
            target,
            n_bins=1,
            threshold=threshold,
            ignore_index=ignore_index,
            mask=mask,
            input_kind=input_kind,
            pixel_subset=pixel_subset,
            num_classes=num_classes,
            keep=True,
        )
        per = [
            K.adaptive_exact(p[c][p[c] > threshold], t[p[c] > threshold] == c, n_bins, scheme)
            for c in range(p.shape[0])
        ]
        bins = K.Bins(*(torch.stack(v) for v in zip(*per, strict=True)))
    return _classwise_value(
        bins,
        labels,
        class_range=class_range,
        include_background=include_background,
        divide_by_bins=divide,
    )


# ----------------------------------------------------------------------------------------------
# Streaming classes
# ----------------------------------------------------------------------------------------------


class _CalMetric(Metric):
    """Base: fixed-size sum states; ``_value()`` computes from local state without syncing.

    Also the base of the scores in :mod:`calibrant.metrics.scores`, so :class:`PerVolumeMean`
    wraps any of them.
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def _add_bins(self, prefix: str, shape: tuple[int, ...]) -> None:
        self.add_state(f"{prefix}count", torch.zeros(shape, dtype=torch.int64), "sum")
        self.add_state(f"{prefix}conf", torch.zeros(shape, dtype=torch.float64), "sum")
        self.add_state(f"{prefix}acc", torch.zeros(shape, dtype=torch.float64), "sum")

    def _bins(self, prefix: str = "") -> K.Bins:
        return K.Bins(
            getattr(self, f"{prefix}count"),
            getattr(self, f"{prefix}conf"),
            getattr(self, f"{prefix}acc"),
        )

    def _add_to(self, prefix: str, new: K.Bins) -> None:
        for name, v in zip(("count", "conf", "acc"), new, strict=True):
            getattr(self, f"{prefix}{name}").add_(v)

    def compute(self) -> torch.Tensor:
        """Metric value over everything seen (synchronised across ranks by torchmetrics)."""
        return self._value()

    def _value(self) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


class CalibrationError(_CalMetric):
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
        super().__init__(**kwargs)
        K.check_n_bins(n_bins)
        check_choice("norm", norm, K.NORMS)
        check_choice("pixel_subset", pixel_subset, K.PIXEL_SUBSETS)
        check_choice("input_kind", input_kind, K.INPUT_KINDS)
        self.n_bins, self.norm = n_bins, norm
        self.ignore_index, self.pixel_subset, self.input_kind = (
            ignore_index,
            pixel_subset,
            input_kind,
        )
        self._add_bins("", (n_bins,))

    def update(
        self, logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None
    ) -> None:
        """Add a batch ``(B, C, *spatial)`` / ``(B, *spatial)``."""
        self._add_to(
            "",
            _top_label_bins(
                logits,
                target,
                n_bins=self.n_bins,
                ignore_index=self.ignore_index,
                mask=mask,
                input_kind=self.input_kind,
                pixel_subset=self.pixel_subset,
            ),
        )

    def _value(self) -> torch.Tensor:
        return K.reduce_bins(self._bins(), self.norm)

    def curve(self) -> ReliabilityCurve:
        """Reliability curve of the accumulated state."""
        return K.curve_from_bins(self._bins())


class AdaptiveCalibrationError(_CalMetric):
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
        super().__init__(**kwargs)
        K.check_n_bins(n_bins)
        K.check_n_bins(fine_bins, "fine_bins")
        check_choice("pixel_subset", pixel_subset, K.PIXEL_SUBSETS)
        check_choice("input_kind", input_kind, K.INPUT_KINDS)
        self.n_bins, self.fine_bins = n_bins, fine_bins
        self.ignore_index, self.pixel_subset, self.input_kind = (
            ignore_index,
            pixel_subset,
            input_kind,
        )
        self._add_bins("", (fine_bins,))

    def update(
        self, logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None
    ) -> None:
        """Add a batch."""
        self._add_to(
            "",
            _top_label_bins(
                logits,
                target,
                n_bins=self.fine_bins,
                ignore_index=self.ignore_index,
                mask=mask,
                input_kind=self.input_kind,
                pixel_subset=self.pixel_subset,
            ),
        )

    def _value(self) -> torch.Tensor:
        bins, _ = K.adaptive_from_fine(self._bins(), self.n_bins, "interp")
        return K.reduce_bins(bins, "l1")

    def error_bound(self) -> torch.Tensor:
        """Upper bound on ``|compute() - adaptive_calibration_error(all data)|``."""
        return K.adaptive_from_fine(self._bins(), self.n_bins, "interp")[1]


class ClasswiseCalibrationError(_CalMetric):
    """Streaming class-wise ECE; equals :func:`classwise_calibration_error` on all the data.

    States: per (class, bin) count/conf/acc sums ``(C, n_bins)`` and per-class label counts
    ``(C,)`` (for ``class_range="present"``).

    Args:
        num_classes: ``C``.
        n_bins: equal-width bins.
        class_range: ``"all"`` or ``"present"`` (``0..max(target)``).
        include_background: keep class 0.
        threshold: keep only ``s_ic > threshold``.
        ignore_index: ignored label.
        pixel_subset: ``"all"`` or ``"gt_fg"``.
        input_kind: ``"logits"`` or ``"probs"``.
        **kwargs: forwarded to :class:`torchmetrics.Metric`.

    Example:
        >>> m = ClasswiseCalibrationError(num_classes=2, n_bins=10)
        >>> m.update(torch.tensor([[4.0, 0.0], [0.0, 1.0], [2.0, 2.5]]), torch.tensor([0, 0, 1]))
        >>> round(float(m.compute()), 4)
        0.3755
    """

    def __init__(
        self,
        num_classes: int,
        n_bins: int = 15,
        *,
        class_range: str = "all",
        include_background: bool = True,
        threshold: float = 0.0,
        ignore_index: int | None = -100,
        pixel_subset: str = "all",
        input_kind: str = "logits",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        K.check_n_bins(num_classes, "num_classes")
        K.check_n_bins(n_bins)
        _check_class_args(class_range, include_background)
        _check_threshold(threshold)
        check_choice("pixel_subset", pixel_subset, K.PIXEL_SUBSETS)
        check_choice("input_kind", input_kind, K.INPUT_KINDS)
        self.num_classes, self.n_bins = num_classes, n_bins
        self.class_range, self.include_background = class_range, include_background
        self.threshold, self.ignore_index = threshold, ignore_index
        self.pixel_subset, self.input_kind = pixel_subset, input_kind
        self._add_bins("", (num_classes, n_bins))
        self.add_state("labels", torch.zeros(num_classes, dtype=torch.int64), "sum")

    def update(
        self, logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None
    ) -> None:
        """Add a batch."""
        bins, labels = _classwise_bins(
            logits,
            target,
            n_bins=self.n_bins,
            threshold=self.threshold,
            ignore_index=self.ignore_index,
            mask=mask,
            input_kind=self.input_kind,
            pixel_subset=self.pixel_subset,
            num_classes=self.num_classes,
        )
        self._add_to("", bins)
        self.labels += labels

    def _value(self) -> torch.Tensor:
        return _classwise_value(
            self._bins(),
            self.labels,
            class_range=self.class_range,
            include_background=self.include_background,
        )

    def curves(self) -> list[ReliabilityCurve]:
        """Per-class reliability curves: class k's probability against the frequency of label k.

        Example:
            >>> m = ClasswiseCalibrationError(num_classes=2, n_bins=2)
            >>> m.update(torch.tensor([[4.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 1]))
            >>> [c.count.tolist() for c in m.curves()]
            [[1, 1], [1, 1]]
        """
        bins = self._bins()
        return [
            K.curve_from_bins(K.Bins(*(part[k] for part in bins))) for k in range(self.num_classes)
        ]


class TACE(_CalMetric):
    """Streaming TACE (see :func:`tace` for the three modes).

    ``mode="crac"`` (equal-width) is exact. ``nixon``/``svls`` (equal-mass) keep a fine
    per-class histogram ``(C, fine_bins)`` and equal :func:`tace` up to :meth:`error_bound`
    (the class mean of the per-class bounds, divided by ``n_bins`` for ``svls``).

    Args:
        num_classes: ``C``.
        mode: ``"nixon" | "crac" | "svls"``.
        n_bins: bins (default by mode).
        threshold: probability threshold.
        include_background: override the mode default.
        class_range: override the mode default.
        fine_bins: sub-bins per class for the equal-mass modes (default ``2**12``).
        ignore_index: ignored label.
        pixel_subset: ``"all"`` or ``"gt_fg"``.
        input_kind: ``"logits"`` or ``"probs"``.
        **kwargs: forwarded to :class:`torchmetrics.Metric`.

    Example:
        >>> m = TACE(num_classes=3, mode="crac", n_bins=2)
        >>> m.update(torch.tensor([[4.0, 0.0, 0.0], [0.0, 1.0, 0.0], [2.0, 2.5, 0.0]]),
        ...          torch.tensor([0, 2, 1]))
        >>> round(float(m.compute()), 4)
        0.1682
    """

    def __init__(
        self,
        num_classes: int,
        mode: str = "crac",
        n_bins: int | None = None,
        *,
        threshold: float = 1e-3,
        include_background: bool | None = None,
        class_range: str | None = None,
        fine_bins: int = FINE_BINS_CLASSWISE,
        ignore_index: int | None = -100,
        pixel_subset: str = "all",
        input_kind: str = "logits",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        K.check_n_bins(num_classes, "num_classes")
        K.check_n_bins(fine_bins, "fine_bins")
        _check_threshold(threshold)
        check_choice("pixel_subset", pixel_subset, K.PIXEL_SUBSETS)
        check_choice("input_kind", input_kind, K.INPUT_KINDS)
        (self.scheme, self.n_bins, self.include_background, self.class_range, self.divide) = (
            _tace_settings(mode, n_bins, include_background, class_range)
        )
        self.mode, self.num_classes, self.threshold = mode, num_classes, threshold
        self.ignore_index, self.pixel_subset, self.input_kind = (
            ignore_index,
            pixel_subset,
            input_kind,
        )
        self.hist_bins = self.n_bins if self.scheme == "uniform" else fine_bins
        self._add_bins("", (num_classes, self.hist_bins))
        self.add_state("labels", torch.zeros(num_classes, dtype=torch.int64), "sum")

    def update(
        self, logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None
    ) -> None:
        """Add a batch."""
        bins, labels = _classwise_bins(
            logits,
            target,
            n_bins=self.hist_bins,
            threshold=self.threshold,
            ignore_index=self.ignore_index,
            mask=mask,
            input_kind=self.input_kind,
            pixel_subset=self.pixel_subset,
            num_classes=self.num_classes,
        )
        self._add_to("", bins)
        self.labels += labels

    def _coarse(self) -> tuple[K.Bins, torch.Tensor]:
        if self.scheme == "uniform":
            return self._bins(), self.conf.new_zeros(self.num_classes)
        return K.adaptive_from_fine(self._bins(), self.n_bins, self.scheme)

    def _value(self) -> torch.Tensor:
        bins, _ = self._coarse()
        return _classwise_value(
            bins,
            self.labels,
            class_range=self.class_range,
            include_background=self.include_background,
            divide_by_bins=self.divide,
        )

    def error_bound(self) -> torch.Tensor:
        """Upper bound on ``|compute() - tace(all data)|`` (0 for ``mode="crac"``)."""
        _, bound = self._coarse()
        sel = _class_selection(self.labels, self.class_range, self.include_background)
        if sel is None or not bool(sel.any()):
            return self.conf.new_zeros(())
        b = bound[sel].mean()
        return b / self.n_bins if self.divide else b


class PerVolumeMean(Metric):
    """Mean over volumes of a metric computed on each volume (the papers' test protocol).

    Each :meth:`update` call is **one volume** (e.g. its slices stacked as a ``(S, C, H, W)``
    batch): the wrapped metric is reset, updated with that volume and its value added to a
    float64 sum. Volumes whose value is NaN (for example no ground-truth foreground under
    ``pixel_subset="gt_fg"``) are skipped and counted in ``skipped``. States are sums, so DDP
    is exact.

    Args:
        metric: a calibrant calibration metric instance (its own sync is never used).
        **kwargs: forwarded to :class:`torchmetrics.Metric`.

    Example:
        >>> pv = PerVolumeMean(CalibrationError(n_bins=10, pixel_subset="gt_fg"))
        >>> pv.update(torch.tensor([[[4.0], [0.0]], [[0.0], [1.0]]]), torch.tensor([[1], [1]]))
        >>> pv.update(torch.tensor([[[0.0], [3.0]]]), torch.tensor([[0]]))  # no foreground: skipped
        >>> round(float(pv.compute()), 4), int(pv.skipped)
        (0.6255, 1)
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(self, metric: _CalMetric, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not isinstance(metric, _CalMetric):
            raise ValueError(f"PerVolumeMean wraps a calibrant calibration metric, got {metric!r}")
        self.metric = metric
        self.add_state("total", torch.zeros((), dtype=torch.float64), "sum")
        self.add_state("volumes", torch.zeros((), dtype=torch.int64), "sum")
        self.add_state("skipped", torch.zeros((), dtype=torch.int64), "sum")

    def update(self, *args: Any, **kwargs: Any) -> None:
        """Add one volume."""
        self.metric.reset()
        self.metric.update(*args, **kwargs)
        v = self.metric._value()
        self.metric.reset()
        if math.isnan(float(v)):
            self.skipped += 1
        else:
            self.total += v.double()
            self.volumes += 1

    def compute(self) -> torch.Tensor:
        """Unweighted mean over the volumes seen (NaN if none)."""
        if int(self.volumes) == 0:
            return self.total.new_tensor(float("nan"))
        return self.total / self.volumes


# ----------------------------------------------------------------------------------------------
# Registry (the CLI's names)
# ----------------------------------------------------------------------------------------------


def _reg(name: str, factory, **meta) -> None:
    METRICS.register(name, task="multiclass", **meta)(factory)


_reg("ece", lambda **kw: CalibrationError(norm="l1", **kw))
_reg("rmsce", lambda **kw: CalibrationError(norm="l2", **kw))
_reg("mce", lambda **kw: CalibrationError(norm="max", **kw))
_reg("average_ce", lambda **kw: CalibrationError(norm="avg", **kw))
_reg("adaptive_ece", AdaptiveCalibrationError)
_reg("classwise_ece", ClasswiseCalibrationError)
_reg("tace", TACE)
# The segmentation papers' protocol: GT-foreground pixels, mean of per-volume values.
_reg(
    "paper_ece",
    lambda **kw: PerVolumeMean(CalibrationError(pixel_subset="gt_fg", **kw)),
    protocol="per_volume",
)
_reg(
    "paper_classwise_ece",
    lambda num_classes, **kw: PerVolumeMean(
        ClasswiseCalibrationError(num_classes, class_range="present", pixel_subset="gt_fg", **kw)
    ),
    protocol="per_volume",
)
_reg(
    "paper_tace",
    lambda num_classes, mode="crac", **kw: PerVolumeMean(
        TACE(num_classes, mode, pixel_subset="gt_fg", **kw)
    ),
    protocol="per_volume",
)
