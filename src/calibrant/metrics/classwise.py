r"""Class-wise calibration errors: class-wise ECE (SCE) and TACE in the literature's three forms.

Same conventions as :mod:`calibrant.metrics.calibration` (input, equal-width bins
``[b/n, (b+1)/n)``, ``pixel_subset``, NaN with no valid element); the per-class statistics are
fixed-size ``(C, n_bins)`` sums, so the classes stream exactly over batches and DDP ranks, except
the equal-mass TACE modes, which stream from a fine per-class histogram with an error bound.

Example:
    >>> import torch
    >>> from calibrant.metrics import classwise_calibration_error, TACE
    >>> logits = torch.tensor([[4.0, 0.0, 0.0], [0.0, 1.0, 0.0], [2.0, 2.5, 0.0]])
    >>> target = torch.tensor([0, 2, 1])
    >>> round(float(classwise_calibration_error(logits, target, num_classes=3, n_bins=2)), 4)
    0.1682
    >>> m = TACE(num_classes=3, mode="crac", n_bins=2)
    >>> m.update(logits[:2], target[:2]); m.update(logits[2:], target[2:])
    >>> round(float(m.compute()), 4)
    0.1682

Reference:
    Kull et al., Beyond temperature scaling, NeurIPS 2019 (class-wise ECE).
    Nixon et al., Measuring Calibration in Deep Learning, CVPR-W 2019 (TACE).
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from calibrant._checks import check_choice
from calibrant._tensor import float32
from calibrant.metrics import _binning as K
from calibrant.metrics._base import CalMetric, Inputs
from calibrant.metrics._curve import ReliabilityCurve
from calibrant.metrics.per_volume import _POOLED
from calibrant.registry import METRICS

__all__ = [
    "classwise_calibration_error",
    "tace",
    "ClasswiseCalibrationError",
    "TACE",
    "TACE_MODES",
    "CLASS_RANGES",
]

# the registry metadata that this module's metrics share
_register = functools.partial(METRICS.register, task="multiclass", better="lower")

CLASS_RANGES = ("all", "present")
#: TACE modes -> (binning scheme, default n_bins, default include_background, default class
#: range, divide by n_bins).
TACE_MODES: dict[str, tuple[str, int, bool, str, bool]] = {
    "nixon": ("interp", 15, False, "all", False),
    "crac": ("uniform", 15, True, "present", False),
    "svls": ("rank", 10, False, "all", True),
}
#: Default number of fine bins per class for streamed equal-mass binning.
FINE_BINS_CLASSWISE = 1 << 12


# ----------------------------------------------------------------------------------------------
# Private accumulation over chunks (shared by functions and classes)
# ----------------------------------------------------------------------------------------------


def _classwise_bins(logits, target, mask, inputs: Inputs, n_bins, threshold, *, keep=False):
    """Per-class binned sums ``(C, n_bins)``, label counts ``(C,)``; with ``keep`` raw values."""
    chunks = inputs.chunks(logits, target, mask)
    C = logits.shape[1]
    bins = K.empty_bins((C, n_bins), logits.device)
    labels = torch.zeros(C, dtype=torch.int64, device=logits.device)
    kept_p, kept_t = [], []
    with torch.no_grad(), float32(logits):
        for ch in chunks:
            p = K.class_probs(ch.z, inputs.input_kind)
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
# Functions
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
        ignore_index: ignored label (its elements count for no class).
        mask: optional bool ``(B, *spatial)``; only True elements count, for every class.
        pixel_subset: ``"all"`` or ``"gt_fg"`` (label 0 then never occurs, so class 0 measures
            only the background probability given to foreground elements).
        input_kind: ``"logits"`` or ``"probs"`` (per-class probabilities, used as given).

    Returns:
        float64 scalar, the mean over the selected classes (NaN with no valid element).

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
    inputs = Inputs(ignore_index, pixel_subset, input_kind, num_classes)
    bins, labels = _classwise_bins(logits, target, mask, inputs, n_bins, threshold)
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
    inputs = Inputs(ignore_index, pixel_subset, input_kind, num_classes)
    if scheme == "uniform":
        bins, labels = _classwise_bins(logits, target, mask, inputs, n_bins, threshold)
    else:
        _, labels, p, t = _classwise_bins(logits, target, mask, inputs, 1, threshold, keep=True)
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


class _PerClassHistogram(CalMetric):
    """Shared state and update of the class-wise metrics (private).

    States: per (class, bin) count/conf/acc sums ``(C, hist_bins)`` and per-class label counts
    ``(C,)``.
    """

    def __init__(
        self,
        num_classes: int,
        hist_bins: int,
        threshold: float,
        ignore_index: int | None,
        pixel_subset: str,
        input_kind: str,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        K.check_n_bins(num_classes, "num_classes")
        _check_threshold(threshold)
        self._set_inputs(ignore_index, pixel_subset, input_kind, num_classes)
        self.num_classes, self.hist_bins, self.threshold = num_classes, hist_bins, threshold
        self._add_bins((num_classes, hist_bins))
        self._add_sum("labels", num_classes, torch.int64)

    def update(
        self, logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None
    ) -> None:
        """Add a batch."""
        bins, labels = _classwise_bins(
            logits, target, mask, self.inputs, self.hist_bins, self.threshold
        )
        self._add_to_bins(bins)
        self.labels += labels


@_register(
    "classwise_ece",
    legend="class-wise ECE: each class's probability against that label's frequency (15 bins), "
    f"mean over classes, {_POOLED}",
)
class ClasswiseCalibrationError(_PerClassHistogram):
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
        K.check_n_bins(n_bins)
        _check_class_args(class_range, include_background)
        super().__init__(
            num_classes, n_bins, threshold, ignore_index, pixel_subset, input_kind, **kwargs
        )
        self.n_bins = n_bins
        self.class_range, self.include_background = class_range, include_background

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


@_register(
    "tace",
    legend=f"thresholded adaptive calibration error (class-wise; binning by mode), {_POOLED}",
)
class TACE(_PerClassHistogram):
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
        settings = _tace_settings(mode, n_bins, include_background, class_range)
        K.check_n_bins(fine_bins, "fine_bins")
        hist_bins = settings[1] if settings[0] == "uniform" else fine_bins
        super().__init__(
            num_classes, hist_bins, threshold, ignore_index, pixel_subset, input_kind, **kwargs
        )
        self.scheme, self.n_bins, self.include_background, self.class_range, self.divide = settings
        self.mode = mode

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
