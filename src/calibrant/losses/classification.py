r"""Multi-class losses and logit penalties: CE, label smoothing, focal, ECP and the MbLS margin.

Every loss takes logits ``(B, C, *spatial)`` (0 to 3 spatial dims) and integer targets
``(B, *spatial)``; ``ignore_index`` elements get zero loss and zero gradient and the value does not
depend on their logits. ``reduction="none"`` returns the per-element values ``(B, *spatial)``,
``"mean"`` averages them over the *valid* elements. Everything is computed in float32 (float64
inputs stay float64), whatever autocast is doing.

Penalties (:func:`confidence_penalty`, :func:`logit_margin_penalty`) share the loss signature so
that a calibration loss is ``WeightedSum({"ce": CE, "term": Penalty}, weights={"term": λ})``. Their
``class_reduction`` is ``"mean"`` over classes (the published code, so published λ transfer) or
``"sum"`` (the papers' text); the two agree when ``λ_sum = λ_mean / K``. The margin's chunked
kernels are in :mod:`calibrant.losses._margin`.

Example:
    >>> import torch
    >>> from calibrant.registry import LOSSES
    >>> logits, target = torch.randn(2, 4, 8, 8), torch.randint(0, 4, (2, 8, 8))
    >>> mbls = LOSSES.build("mbls")
    >>> sorted(mbls.terms(logits, target))
    ['ce', 'margin']
    >>> bool(torch.isclose(LOSSES.build("mbls", weight=0.0)(logits, target),
    ...                    torch.nn.functional.cross_entropy(logits, target)))
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from calibrant._checks import check_choice, check_positive
from calibrant._tensor import float32, reduce
from calibrant.losses._base import (
    CLASS_REDUCTIONS,
    ThinLoss,
    fused_finish,
    fused_inputs,
    prepare,
    reduce_classes,
    reduce_total,
)
from calibrant.losses._margin import _MarginChunks, _MarginPenalty
from calibrant.losses.combine import WeightedSum
from calibrant.losses.fusion import FusedPlan, ce_plus
from calibrant.registry import LOSSES

__all__ = [
    "FLSD53",
    "cross_entropy_loss",
    "label_smoothing_loss",
    "focal_loss",
    "confidence_penalty",
    "logit_margin_penalty",
    "CrossEntropyLoss",
    "LabelSmoothingLoss",
    "FocalLoss",
    "ConfidencePenalty",
    "LogitMarginPenalty",
]

MARGIN_NORMS = ("l1", "l2", "legacy_l2")
#: The FLSD-53 schedule of Mukhoti et al. (2020): γ = 5 for p < 0.2, γ = 3 otherwise.
FLSD53: tuple[tuple[float, float], ...] = ((0.2, 5.0), (float("inf"), 3.0))
_MC = {"task": "multiclass", "granularity": "element", "spatial": False}  # registry metadata


def cross_entropy_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    ignore_index: int | None = -100,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""Softmax cross-entropy :math:`\ell_i = -\log s_{i, y_i}`, :math:`s = \mathrm{softmax}(l)`.

    Args:
        logits: class scores, class dim 1.
        target: integer labels.
        ignore_index: label whose elements are ignored, or ``None``.
        reduction: ``"mean"`` (over valid elements) | ``"sum"`` | ``"none"``.

    Shape:
        logits ``(B, C, *spatial)``, target ``(B, *spatial)``; ``"none"`` gives ``(B, *spatial)``.

    Example:
        >>> logits, target = torch.zeros(2, 4), torch.tensor([1, -100])
        >>> round(cross_entropy_loss(logits, target).item(), 4)  # log 4
        1.3863

    Reference:
        The stock ``F.cross_entropy``; calibrant only adds the shared masking and float32 policy.
    """
    with float32(logits):
        x, safe, mask = prepare(logits, target, ignore_index)
        if reduction == "none":
            return reduce(F.cross_entropy(x, safe, reduction="none"), mask, reduction)
        # One fused kernel; ``safe`` holds 0 at ignored elements, so mask them by ``ignore_index``.
        y = safe if mask is None else target.long()
        total = F.cross_entropy(
            x, y, ignore_index=-100 if mask is None else ignore_index, reduction="sum"
        )
        return reduce_total(total, reduction, mask=mask, numel=y.numel())


def label_smoothing_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    smoothing: float = 0.1,
    ignore_index: int | None = -100,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""Cross-entropy against the smoothed target :math:`q = (1-\alpha) e_y + \alpha/K`.

    .. math::
        \ell_i = (1-\alpha)(-\log s_{i,y_i}) + \frac{\alpha}{K} \sum_k (-\log s_{ik})

    Equals ``F.cross_entropy(..., label_smoothing=α)`` (tested).

    Args:
        logits: class scores, class dim 1.
        target: integer labels.
        smoothing: α in [0, 1]; 0.1 in the MarginLoss configs, 0.05 in CALS.
        ignore_index: label whose elements are ignored, or ``None``.
        reduction: ``"mean"`` | ``"sum"`` | ``"none"``.

    Shape:
        logits ``(B, C, *spatial)``, target ``(B, *spatial)``; ``"none"`` gives ``(B, *spatial)``.

    Example:
        >>> logits, target = torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 1])
        >>> smoothed = label_smoothing_loss(logits, target, smoothing=0.1)
        >>> bool(torch.isclose(smoothed, F.cross_entropy(logits, target, label_smoothing=0.1)))
        True

    Reference:
        Szegedy et al., "Rethinking the Inception architecture", CVPR 2016; METHODS §2.2.
    """
    if not 0.0 <= smoothing <= 1.0:
        raise ValueError(f"smoothing must be in [0, 1], got {smoothing!r}")
    with float32(logits):
        x, safe, mask = prepare(logits, target, ignore_index)
        logp = F.log_softmax(x, dim=1)
        nll = -logp.gather(1, safe.unsqueeze(1)).squeeze(1)
        values = (1.0 - smoothing) * nll - smoothing * logp.mean(1)
        return reduce(values, mask, reduction)


def _schedule_gamma(p: torch.Tensor, schedule: Sequence[tuple[float, float]]) -> torch.Tensor:
    """γ per element: the γ of the first ``(threshold, γ)`` pair with ``p < threshold``."""
    gamma = p.new_full(p.shape, float(schedule[-1][1]))
    for threshold, g in reversed(schedule[:-1]):
        gamma = torch.where(p < threshold, p.new_tensor(float(g)), gamma)
    return gamma


def focal_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    gamma: float = 3.0,
    gamma_schedule: Sequence[tuple[float, float]] | None = None,
    ignore_index: int | None = -100,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""Softmax focal loss :math:`\ell_i = -(1 - p_i)^\gamma \log p_i`, :math:`p_i = s_{i,y_i}`.

    No α-balancing term (as in the calibration papers). With ``gamma_schedule`` the exponent is
    chosen per element from the (detached) true-class probability: ``((0.2, 5.0), (inf, 3.0))``
    (:data:`FLSD53`) gives γ = 5 where p < 0.2 and γ = 3 elsewhere.

    Args:
        logits: class scores, class dim 1.
        target: integer labels.
        gamma: fixed focusing parameter γ >= 0 (3 in the MarginLoss and CALS configs).
        gamma_schedule: increasing ``(threshold, γ)`` pairs; overrides ``gamma`` when given.
        ignore_index: label whose elements are ignored, or ``None``.
        reduction: ``"mean"`` | ``"sum"`` | ``"none"``.

    Shape:
        logits ``(B, C, *spatial)``, target ``(B, *spatial)``; ``"none"`` gives ``(B, *spatial)``.

    Example:
        >>> logits, target = torch.tensor([[2.0, 0.0]]), torch.tensor([0])
        >>> round(focal_loss(logits, target, gamma=0.0).item(), 4)  # = CE
        0.1269

    Reference:
        Lin et al., "Focal loss for dense object detection", ICCV 2017; Mukhoti et al.,
        "Calibrating deep neural networks using focal loss", NeurIPS 2020 (FLSD-53); METHODS §2.3.
    """
    check_positive("gamma", gamma, strict=False)
    with float32(logits):
        x, safe, mask = prepare(logits, target, ignore_index)
        logp = F.log_softmax(x, dim=1).gather(1, safe.unsqueeze(1)).squeeze(1)
        p = logp.exp()
        if gamma_schedule is None:
            g = gamma
        else:
            g = _schedule_gamma(p.detach(), gamma_schedule)
        values = -((1.0 - p).clamp_min(0.0) ** g) * logp
        return reduce(values, mask, reduction)


def confidence_penalty(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    class_reduction: str = "mean",
    ignore_index: int | None = -100,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""Negative entropy, the ECP term: :math:`\ell_i = \frac{1}{K}\sum_k s_{ik}\log s_{ik}`.

    ECP is ``CE + α · confidence_penalty`` (= CE − α·H/K). ``class_reduction="mean"`` divides the
    entropy by K as the MarginLoss/CALS code does (α = 0.1 there); ``"sum"`` is Pereyra et al.'s
    β·H with β = α/K. The code clamps s to [1e-10, 1 − 1e-10] before the log; here the entropy is
    computed exactly from ``log_softmax`` (the two differ by less than K·2.3e-9).

    Args:
        logits: class scores, class dim 1.
        target: integer labels (used only for the ignore mask).
        class_reduction: ``"mean"`` | ``"sum"`` over classes.
        ignore_index: label whose elements are ignored, or ``None``.
        reduction: ``"mean"`` | ``"sum"`` | ``"none"``.

    Shape:
        logits ``(B, C, *spatial)``, target ``(B, *spatial)``; ``"none"`` gives ``(B, *spatial)``.

    Example:
        >>> round(confidence_penalty(torch.zeros(1, 4), torch.tensor([0])).item(), 4)  # -log(4)/4
        -0.3466

    Reference:
        Pereyra et al., "Regularizing neural networks by penalizing confident output
        distributions", ICLR-W 2017; METHODS §2.4.
    """
    with float32(logits):
        x, _, mask = prepare(logits, target, ignore_index)
        logp = F.log_softmax(x, dim=1)
        values = reduce_classes(logp.exp() * logp, class_reduction)
        return reduce(values, mask, reduction)


def _check_norm(norm: str, **_: Any) -> None:
    check_choice("norm", norm, MARGIN_NORMS)


def logit_margin_penalty(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    margin: float = 10.0,
    norm: str = "l1",
    class_reduction: str = "mean",
    ignore_index: int | None = -100,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""MbLS logit-margin penalty on :math:`d_{ik} = \max_j l_{ij} - l_{ik} \ge 0`.

    .. math::
        \ell_i = \frac{1}{K} \sum_k \phi(d_{ik} - m), \quad
        \phi(z) = \max(0, z) \;(\text{l1}), \; \max(0, z)^2 \;(\text{l2}),
        \; z^2 \;(\text{legacy\_l2})

    MbLS is ``CE + λ · logit_margin_penalty`` with λ = 0.1, m = 10 (MarginLoss config; the ACDC
    README example uses m = 5). The arg-max column contributes φ(−m) (0 for the hinges) and is
    counted in the 1/K mean, as in the code. ``"legacy_l2"`` is the research code's
    ``LogitMarginL2``: ``ReLU((d−m)²)`` is two-sided and also pushes small distances *up* towards
    m; it is offered only to reproduce that code.

    Args:
        logits: class scores, class dim 1.
        target: integer labels (used only for the ignore mask).
        margin: m >= 0.
        norm: ``"l1"`` | ``"l2"`` (one-sided hinges) | ``"legacy_l2"`` (two-sided).
        class_reduction: ``"mean"`` (code; λ = 0.1) | ``"sum"`` (paper; λ_sum = λ_mean / K).
        ignore_index: label whose elements are ignored, or ``None``.
        reduction: ``"mean"`` | ``"sum"`` | ``"none"``.

    Shape:
        logits ``(B, C, *spatial)``, target ``(B, *spatial)``; ``"none"`` gives ``(B, *spatial)``.

    Example:
        >>> logits = torch.tensor([[12.0, 0.0, 7.0]])
        >>> logit_margin_penalty(logits, torch.tensor([0]), margin=10.0)  # (0 + 2 + 0) / 3
        tensor(0.6667)

    Reference:
        Liu et al., "The devil is in the margin: margin-based label smoothing for network
        calibration", CVPR 2022; METHODS §2.5.
    """
    _check_norm(norm)
    check_choice("class_reduction", class_reduction, CLASS_REDUCTIONS)
    check_positive("margin", margin, strict=False)
    with float32(logits):
        x, _, mask = prepare(logits, target, ignore_index)
        values = _MarginPenalty.apply(x, float(margin), norm)
        if class_reduction == "mean":
            values = values / x.shape[1]
        return reduce(values, mask, reduction)


@LOSSES.register("ce", function=cross_entropy_loss, **_MC)
class CrossEntropyLoss(ThinLoss, fn=cross_entropy_loss):
    """Module form of :func:`cross_entropy_loss`."""

    def fused_with(
        self, other: nn.Module, logits: torch.Tensor, target: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(CE, other's value)`` from one pass, if ``other`` offers a chunk kernel.

        The hook :class:`~calibrant.losses.combine.WeightedSum` asks for: ``other`` may define
        ``ce_kernel(logits, target, ignore_index) -> FusedPlan | None``
        (:mod:`calibrant.losses.fusion`). Returns ``None`` (evaluate term by term) where either
        term declines.
        """
        offer = getattr(other, "ce_kernel", None)
        if offer is None or self.reduction not in ("mean", "sum"):
            return None
        if not (torch.is_tensor(logits) and logits.dim() >= 2 and logits.is_floating_point()):
            return None
        with float32(logits):
            plan = offer(logits, target, self.ignore_index)
            if plan is None:
                return None
            ce_sum, value = ce_plus(plan)
        n = plan.labels.numel()
        return (ce_sum if self.reduction == "sum" else ce_sum / max(n, 1)), value


@LOSSES.register("ls", function=label_smoothing_loss, **_MC)
class LabelSmoothingLoss(ThinLoss, fn=label_smoothing_loss, positional=True):
    """Module form of :func:`label_smoothing_loss`."""


@LOSSES.register("focal", function=focal_loss, **_MC)
class FocalLoss(ThinLoss, fn=focal_loss, positional=True):
    """Module form of :func:`focal_loss`."""


class ConfidencePenalty(ThinLoss, fn=confidence_penalty, positional=True):
    """Module form of :func:`confidence_penalty`."""


class LogitMarginPenalty(ThinLoss, fn=logit_margin_penalty, check=_check_norm, positional=True):
    """Module form of :func:`logit_margin_penalty`."""

    def ce_kernel(
        self, logits: torch.Tensor, target: torch.Tensor, ignore_index: int | None
    ) -> FusedPlan | None:
        """The fused-CE plan (:mod:`calibrant.losses.fusion`): every norm, nothing ignored."""
        if ignore_index != self.ignore_index or self.reduction not in ("mean", "sum"):
            return None
        inputs = fused_inputs(logits, target, self.ignore_index, min_dims=2)
        if inputs is None:
            return None
        x, safe = inputs
        finish = fused_finish(x.shape[1], safe.numel(), self.class_reduction, self.reduction)
        return FusedPlan(x, safe, _MarginChunks(float(self.margin), self.norm), finish)


# --- registered presets (published defaults, METHODS §8) -------------------------------------


@LOSSES.register("focal_adaptive", function=partial(focal_loss, gamma_schedule=FLSD53), **_MC)
def _focal_adaptive(gamma_schedule: Sequence[tuple[float, float]] = FLSD53, **kw) -> nn.Module:
    return FocalLoss(gamma_schedule=gamma_schedule, **kw)


@LOSSES.register("ecp", **_MC)
def _ecp(weight: float = 0.1, class_reduction: str = "mean", **kw) -> nn.Module:
    """CE + α·(negative entropy / K); α = 0.1 (MarginLoss config)."""
    return WeightedSum(
        {"ce": CrossEntropyLoss(**kw), "entropy": ConfidencePenalty(class_reduction, **kw)},
        weights={"entropy": weight},
    )


def _mbls_preset(weight: float, margin: float, norm: str, class_reduction: str, **kw) -> nn.Module:
    return WeightedSum(
        {
            "ce": CrossEntropyLoss(**kw),
            "margin": LogitMarginPenalty(margin, norm, class_reduction, **kw),
        },
        weights={"margin": weight},
    )


@LOSSES.register("mbls", **_MC)
def _mbls(
    weight: float = 0.1, margin: float = 10.0, class_reduction: str = "mean", **kw
) -> nn.Module:
    """MbLS = CE + λ·L1 margin penalty; λ = 0.1, m = 10 (MarginLoss config)."""
    return _mbls_preset(weight, margin, "l1", class_reduction, **kw)


@LOSSES.register("mbls_l2", **_MC)
def _mbls_l2(
    weight: float = 0.1, margin: float = 10.0, class_reduction: str = "mean", **kw
) -> nn.Module:
    """CE + λ·one-sided squared hinge."""
    return _mbls_preset(weight, margin, "l2", class_reduction, **kw)


@LOSSES.register("mbls_legacy_l2", **_MC)
def _mbls_legacy_l2(
    weight: float = 0.1, margin: float = 10.0, class_reduction: str = "mean", **kw
) -> nn.Module:
    """CE + λ·(d − m)²: the research code's two-sided ``LogitMarginL2`` (reproduction only)."""
    return _mbls_preset(weight, margin, "legacy_l2", class_reduction, **kw)
