r"""Overlap losses: Dice, Jaccard, Tversky, focal-Tversky and Combo.

The ALL wrapper around them is in :mod:`calibrant.losses.logarithmic`. This file is long (about 520
lines) because its five losses share one body: the soft counts and options of :func:`_overlap`.

Two activations, chosen explicitly (never guessed from the target):

- ``activation="sigmoid"`` (binary / multi-label): logits ``(B, C, *spatial)``, target of the same
  shape in {0, 1} or ``ignore_index``; each channel is its own binary problem (``C = 1`` is the
  binary case of the ALL paper).
- ``activation="softmax"`` (multi-class): logits ``(B, C, *spatial)``, integer target
  ``(B, *spatial)``; ``include_background=False`` drops channel 0.

Soft counts per class ``c`` with ``g`` the (one-hot) target, ``p`` the probability and ``w`` the
validity mask: ``TP = Σ w g p``, ``FP = Σ w (1−g) p``, ``FN = Σ w g (1−p)``. The sum runs over the
whole batch and all positions (``per_sample=False``, the ALL authors' code: one overlap per batch)
or over the positions of each sample (``per_sample=True``). The multi-class loss is the paper's
``Σ_c (1 − M_c)`` (``class_reduction="sum"``) or its mean over classes (``"mean"``).

Every loss here takes ``(logits, target)``, its own parameters, and these keyword options:

- ``activation``: ``"sigmoid"`` (default; target like the logits, in {0, 1}) or ``"softmax"``
  (integer target ``(B, *spatial)``).
- ``smooth``: additive smoothing s in numerator and denominator (1, the authors' code).
- ``per_sample``: one overlap per sample instead of one per batch (``False``: batch-global).
- ``include_background``: keep channel 0 (``True``; ``False`` is for softmax only).
- ``class_reduction``: ``"sum"`` over classes (default, the paper's ``Σ_c (1 − M_c)``) or
  ``"mean"``.
- ``ignore_index``: target value to ignore (its entries leave every count; ``-100``), or ``None``.
- ``reduction``: with ``per_sample=True``, ``"none"`` gives ``(B,)``, ``"mean"`` (default)
  averages over samples with a valid entry, ``"sum"`` sums; a batch-global loss is one scalar for
  every reduction.

Shape: logits ``(B, C, *spatial)``; the loss is a scalar (batch-global) or ``(B,)``
(``per_sample=True, reduction="none"``).

Example:
    >>> import torch
    >>> from calibrant.losses.overlap import dice_loss, jaccard_loss
    >>> logits, target = torch.zeros(2, 1, 4, 4), torch.ones(2, 1, 4, 4)
    >>> round(float(dice_loss(logits, target)), 4), round(float(jaccard_loss(logits, target)), 4)
    (0.3265, 0.4848)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

from calibrant._checks import check_choice, check_positive
from calibrant._tensor import REDUCTIONS, float32, one_hot, reduce
from calibrant.losses._base import ThinLoss, multilabel_inputs, prepare
from calibrant.registry import LOSSES

__all__ = [
    "dice_loss",
    "DiceLoss",
    "jaccard_loss",
    "JaccardLoss",
    "tversky_loss",
    "TverskyLoss",
    "focal_tversky_loss",
    "FocalTverskyLoss",
    "combo_loss",
    "ComboLoss",
]

ACTIVATIONS = ("sigmoid", "softmax")
CLASS_REDUCTIONS = ("sum", "mean")
_LOG_EPS = 1e-7  # clamp of 1 - softmax inside the log (Combo, softmax only)


# ----------------------------------------------------------------------------------------------
# shared soft counts
# ----------------------------------------------------------------------------------------------


def _probs_target_weight(
    logits: torch.Tensor,
    target: torch.Tensor,
    activation: str,
    include_background: bool,
    ignore_index: int | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Validated ``(x, p, g, w, log_p_pair)``: logits, probs, {0,1} target, weights, logs.

    ``log_p_pair`` stacks ``log p`` and ``log(1 − p)`` on a new leading dim (used by Combo).
    All tensors are ``(B, C', *spatial)`` (``C'`` drops the background when asked).
    """
    if activation == "sigmoid":
        if not include_background:
            raise ValueError(
                "include_background=False applies to activation='softmax' only; with sigmoid "
                "every channel is a label (drop channels from logits and target instead)"
            )
        x, g, valid = multilabel_inputs(logits, target, ignore_index)
        p = torch.sigmoid(x)
        logs = torch.stack((F.logsigmoid(x), F.logsigmoid(-x)))
        w = valid.to(x.dtype)
    else:
        x, safe, mask = prepare(logits, target, ignore_index)
        num_classes = x.shape[1]
        if not include_background and num_classes < 2:
            raise ValueError("include_background=False needs at least 2 classes")
        g = one_hot(safe, num_classes).to(x.dtype)
        p = torch.softmax(x, dim=1)
        logs = torch.stack((torch.log_softmax(x, dim=1), torch.log((1.0 - p).clamp(min=_LOG_EPS))))
        w = (x.new_ones(()) if mask is None else mask.unsqueeze(1).to(x.dtype)).expand_as(p)
        if not include_background:
            x, p, g, w, logs = x[:, 1:], p[:, 1:], g[:, 1:], w[:, 1:], logs[:, :, 1:]
    return x, p, g, w, logs


def _counts(
    p: torch.Tensor, g: torch.Tensor, w: torch.Tensor, per_sample: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Soft ``TP, FP, FN`` per class ``(C',)`` or per sample and class ``(B, C')``."""
    dims = tuple(range(2, p.dim())) if per_sample else (0, *range(2, p.dim()))
    pw = torch.where(w > 0, p, torch.zeros_like(p))  # ignored entries: no value, no gradient
    gw = g * w
    if not dims:  # per_sample on (B, C) inputs: each entry is its own set
        tp, p_sum, g_sum = gw * pw, pw, gw
    else:
        tp, p_sum, g_sum = (gw * pw).sum(dims), pw.sum(dims), gw.sum(dims)
    return tp, p_sum - tp, g_sum - tp


class _Soft(NamedTuple):
    """What a term of :func:`_overlap` reads: the masked inputs, the soft counts, the options."""

    p: torch.Tensor
    g: torch.Tensor
    w: torch.Tensor
    logs: torch.Tensor
    tp: torch.Tensor
    fp: torch.Tensor
    fn: torch.Tensor
    smooth: float
    per_sample: bool
    class_reduction: str


def _over_classes(per_class: torch.Tensor, class_reduction: str) -> torch.Tensor:
    """Sum or mean of ``(…, C')`` per-class values over the classes."""
    return per_class.sum(-1) if class_reduction == "sum" else per_class.mean(-1)


def _check_options(activation: str, smooth: float, class_reduction: str, reduction: str) -> None:
    check_choice("activation", activation, ACTIVATIONS)
    check_positive("smooth", smooth, strict=False)
    check_choice("class_reduction", class_reduction, CLASS_REDUCTIONS)
    check_choice("reduction", reduction, REDUCTIONS)


def _overlap(
    logits: torch.Tensor,
    target: torch.Tensor,
    term: Callable[[_Soft], torch.Tensor],
    *,
    activation: str = "sigmoid",
    smooth: float = 1.0,
    per_sample: bool = False,
    include_background: bool = True,
    class_reduction: str = "sum",
    ignore_index: int | None = -100,
    reduction: str = "mean",
) -> torch.Tensor:
    """Every overlap loss: the options of the module docstring around ``term``.

    ``term`` maps the soft counts to the loss per batch ``()`` or per sample ``(B,)``; per-sample
    values are then reduced over the samples that have a valid entry.
    """
    _check_options(activation, smooth, class_reduction, reduction)
    with float32(logits):
        _, p, g, w, logs = _probs_target_weight(
            logits, target, activation, include_background, ignore_index
        )
        tp, fp, fn = _counts(p, g, w, per_sample)
        values = term(_Soft(p, g, w, logs, tp, fp, fn, smooth, per_sample, class_reduction))
        if not per_sample:
            return values
        return reduce(values, w.flatten(1).sum(1) > 0, reduction)


def _dice_index(tp, fp, fn, s):
    return (2.0 * tp + s) / (2.0 * tp + fp + fn + s)


def _jaccard_index(tp, fp, fn, s):
    return (tp + s) / (tp + fp + fn + s)


def _tversky_index(alpha: float, beta: float):
    def index(tp, fp, fn, s):
        return (tp + s) / (tp + alpha * fn + beta * fp + s)

    return index


def _one_minus(index, exponent: float = 1.0) -> Callable[[_Soft], torch.Tensor]:
    """The term ``class_reduce((1 − M_c)^exponent)`` with ``M_c = index(TP, FP, FN, s)``."""

    def term(soft: _Soft) -> torch.Tensor:
        loss = 1.0 - index(soft.tp, soft.fp, soft.fn, soft.smooth)
        if exponent != 1.0:
            loss = loss.clamp(min=0.0).pow(exponent)
        return _over_classes(loss, soft.class_reduction)

    return term


def _check_alpha(alpha: float, beta: float | None) -> float:
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha!r}")
    beta = 1.0 - alpha if beta is None else beta
    check_positive("beta", beta, strict=False)
    return beta


# ----------------------------------------------------------------------------------------------
# Dice, Jaccard, Tversky, focal-Tversky
# ----------------------------------------------------------------------------------------------


def dice_loss(logits: torch.Tensor, target: torch.Tensor, **options: Any) -> torch.Tensor:
    r"""Soft Dice loss (METHODS §5.1).

    .. math::
        DL = \sum_c \left(1 - \frac{2\,TP_c + s}{2\,TP_c + FP_c + FN_c + s}\right)

    Args:
        logits: ``(B, C, *spatial)``.
        target: as ``activation`` says (module docstring).
        **options: ``activation``, ``smooth``, ``per_sample``, ``include_background``,
            ``class_reduction``, ``ignore_index``, ``reduction`` (module docstring).

    Shape:
        A scalar (batch-global) or ``(B,)`` (``per_sample=True, reduction="none"``).

    Example:
        >>> logits = torch.tensor([[[4.0, -4.0, 4.0]]])
        >>> round(float(dice_loss(logits, torch.tensor([[[1, 0, 1]]]))), 4)
        0.0108

    Reference:
        Milletari et al., "V-Net", 3DV 2016; Kaul et al. (ALL paper) baselines.
    """
    return _overlap(logits, target, _one_minus(_dice_index), **options)


def jaccard_loss(logits: torch.Tensor, target: torch.Tensor, **options: Any) -> torch.Tensor:
    r"""Soft Jaccard (IoU) loss (METHODS §5.1; the ALL tables' "JI" row).

    .. math::
        JL = \sum_c \left(1 - \frac{TP_c + s}{TP_c + FP_c + FN_c + s}\right)

    Args:
        logits: ``(B, C, *spatial)``.
        target: as ``activation`` says.
        **options: the overlap options of the module docstring (as for :func:`dice_loss`).

    Shape:
        Per batch ``()``, or per sample ``(B,)`` with ``per_sample=True, reduction="none"``.

    Example:
        >>> v, y = torch.tensor([[[4.0, -4.0, 4.0]]]), torch.tensor([[[1, 0, 1]]])
        >>> round(float(jaccard_loss(v, y)), 4), jaccard_loss(v, y, per_sample=True).shape
        (0.0179, torch.Size([]))

    Reference:
        Rahman & Wang, "Optimizing intersection-over-union in deep neural networks", 2016.
    """
    return _overlap(logits, target, _one_minus(_jaccard_index), **options)


def tversky_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    alpha: float = 0.7,
    beta: float | None = None,
    **options: Any,
) -> torch.Tensor:
    r"""Tversky loss (Salehi et al.; METHODS §5.1).

    .. math::
        TL = \sum_c \left(1 - \frac{TP_c + s}{TP_c + \alpha FN_c + \beta FP_c + s}\right),
        \quad \beta = 1 - \alpha \text{ by default}

    Args:
        logits: ``(B, C, *spatial)``.
        target: as ``activation`` says.
        alpha: weight of false negatives (0.7, FocusNetSeries code).
        beta: weight of false positives (default ``1 − alpha`` = 0.3).
        **options: the overlap options of the module docstring.

    Shape:
        A scalar, or ``(B,)`` for ``per_sample=True, reduction="none"``.

    Example:
        >>> logits = torch.tensor([[[4.0, -4.0, 4.0]]])
        >>> round(float(tversky_loss(logits, torch.tensor([[[1, 0, 1]]]))), 4)
        0.0102

    Reference:
        Salehi et al., "Tversky loss function for image segmentation", MLMI 2017.
    """
    beta = _check_alpha(alpha, beta)
    return _overlap(logits, target, _one_minus(_tversky_index(alpha, beta)), **options)


def focal_tversky_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    alpha: float = 0.7,
    beta: float | None = None,
    exponent: float = 0.75,
    **options: Any,
) -> torch.Tensor:
    r"""Focal Tversky loss (Abraham & Khan; METHODS §5.1).

    .. math::
        FTL = \sum_c (1 - TI_c)^{1/\gamma}, \qquad 1/\gamma = 0.75

    Args:
        logits: ``(B, C, *spatial)``.
        target: as ``activation`` says.
        alpha: weight of false negatives (0.7).
        beta: weight of false positives (default ``1 − alpha``).
        exponent: ``1/γ`` (0.75, FocusNetSeries code).
        **options: the overlap options of the module docstring.

    Shape:
        As :func:`tversky_loss`.

    Example:
        >>> logits = torch.tensor([[[4.0, -4.0, 4.0]]])
        >>> round(float(focal_tversky_loss(logits, torch.tensor([[[1, 0, 1]]]))), 4)
        0.0321

    Reference:
        Abraham & Khan, "A novel focal Tversky loss function ...", ISBI 2019.
    """
    beta = _check_alpha(alpha, beta)
    check_positive("exponent", exponent)
    term = _one_minus(_tversky_index(alpha, beta), exponent)
    return _overlap(logits, target, term, **options)


# ----------------------------------------------------------------------------------------------
# Combo
# ----------------------------------------------------------------------------------------------


def _check_combo(alpha: float, beta: float) -> None:
    for name, value in (("alpha", alpha), ("beta", beta)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must lie in [0, 1], got {value!r}")


def combo_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    alpha: float = 0.5,
    beta: float = 0.5,
    **options: Any,
) -> torch.Tensor:
    r"""Combo loss (Taghanaki et al.; METHODS §5.1, §10.D3).

    .. math::
        CL = \alpha\, L_{wBCE} - (1 - \alpha) \sum_c DI_c,\qquad
        L_{wBCE} = -\frac{1}{N}\sum \left[\beta g \log p + (1-\beta)(1-g)\log(1-p)\right]

    The mean ``1/N`` runs over the valid entries of all kept channels (of each sample when
    ``per_sample``); ``DI_c`` is the smoothed Dice index of :func:`dice_loss`. The value can be
    negative. With softmax, ``log(1 − p)`` is clamped at 1e-7 [derived: the paper is binary].

    Args:
        logits: ``(B, C, *spatial)``.
        target: as ``activation`` says.
        alpha: weight of the BCE term (0.5; not given in the ALL paper [unverified]).
        beta: weight of positives inside the BCE (0.5 [unverified]).
        **options: the overlap options of the module docstring.

    Shape:
        As :func:`dice_loss`.

    Example:
        >>> logits, target = torch.zeros(1, 1, 2), torch.tensor([[[1, 0]]])
        >>> round(float(combo_loss(logits, target)), 4)
        -0.16

    Reference:
        Taghanaki et al., "Combo loss: handling input and output imbalance ...", CMIG 2019.
    """
    _check_combo(alpha, beta)

    def term(soft: _Soft) -> torch.Tensor:
        p, g, w, logs = soft.p, soft.g, soft.w, soft.logs
        di = _over_classes(
            _dice_index(soft.tp, soft.fp, soft.fn, soft.smooth), soft.class_reduction
        )
        bce = -(beta * g * logs[0] + (1.0 - beta) * (1.0 - g) * logs[1])
        bce = torch.where(w > 0, bce, torch.zeros_like(bce))
        dims = tuple(range(1, p.dim())) if soft.per_sample else tuple(range(p.dim()))
        wbce = bce.sum(dims) / w.sum(dims).clamp(min=1.0)
        return alpha * wbce - (1.0 - alpha) * di

    return _overlap(logits, target, term, **options)


# ----------------------------------------------------------------------------------------------
# modules
# ----------------------------------------------------------------------------------------------


class _OverlapLoss(ThinLoss):
    """The module base of the overlap losses: the options of the module docstring, checked."""

    _fn = staticmethod(dice_loss)

    def __init__(
        self,
        *,
        activation: str = "sigmoid",
        smooth: float = 1.0,
        per_sample: bool = False,
        include_background: bool = True,
        class_reduction: str = "sum",
        ignore_index: int | None = -100,
        reduction: str = "mean",
        **extra: Any,
    ) -> None:
        _check_options(activation, smooth, class_reduction, reduction)
        super().__init__()  # hparams: the loss's own (``**extra``), then the options


class DiceLoss(_OverlapLoss):
    """Module form of :func:`dice_loss` (same keyword arguments)."""

    _fn = staticmethod(dice_loss)


class JaccardLoss(_OverlapLoss):
    """Module form of :func:`jaccard_loss` (same keyword arguments)."""

    _fn = staticmethod(jaccard_loss)


class TverskyLoss(_OverlapLoss):
    """Module form of :func:`tversky_loss` (``alpha=0.7``, ``beta=None`` plus the common ones)."""

    _fn = staticmethod(tversky_loss)

    def __init__(self, *, alpha: float = 0.7, beta: float | None = None, **kwargs: Any) -> None:
        _check_alpha(alpha, beta)
        super().__init__(alpha=alpha, beta=beta, **kwargs)


class FocalTverskyLoss(_OverlapLoss):
    """Module form of :func:`focal_tversky_loss` (``alpha``, ``beta``, ``exponent=0.75``)."""

    _fn = staticmethod(focal_tversky_loss)

    def __init__(
        self,
        *,
        alpha: float = 0.7,
        beta: float | None = None,
        exponent: float = 0.75,
        **kwargs: Any,
    ) -> None:
        _check_alpha(alpha, beta)
        check_positive("exponent", exponent)
        super().__init__(alpha=alpha, beta=beta, exponent=exponent, **kwargs)


class ComboLoss(_OverlapLoss):
    """Module form of :func:`combo_loss` (``alpha=0.5``, ``beta=0.5`` plus the common ones)."""

    _fn = staticmethod(combo_loss)

    def __init__(self, *, alpha: float = 0.5, beta: float = 0.5, **kwargs: Any) -> None:
        _check_combo(alpha, beta)
        super().__init__(alpha=alpha, beta=beta, **kwargs)


# ----------------------------------------------------------------------------------------------
# registry
# ----------------------------------------------------------------------------------------------


def _register(name: str, cls: type[_OverlapLoss]) -> None:
    def sigmoid_factory(**kwargs: Any) -> _OverlapLoss:
        return cls(**kwargs)

    def softmax_factory(**kwargs: Any) -> _OverlapLoss:
        return cls(**{"activation": "softmax", **kwargs})

    LOSSES.register(name, task="multilabel", granularity="batch", spatial=False)(sigmoid_factory)
    LOSSES.register(f"{name}_softmax", task="multiclass", granularity="batch", spatial=False)(
        softmax_factory
    )


for _name, _cls in (
    ("dice", DiceLoss),
    ("jaccard", JaccardLoss),
    ("tversky", TverskyLoss),
    ("focal_tversky", FocalTverskyLoss),
    ("combo", ComboLoss),
):
    _register(_name, _cls)
