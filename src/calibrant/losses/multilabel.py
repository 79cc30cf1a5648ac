r"""Multi-label losses: BCE, the focal family (binary focal, asymmetric focal, ASY), TWL and φ.

Every loss takes logits ``v`` of shape ``(B, T, *spatial)`` and a target of the same shape with
values in {0, 1} (binary problems are ``T = 1``). Entries equal to ``ignore_index`` are ignored:
they get zero loss and zero gradient, and the value does not depend on their logits. With
``p = σ(v)`` the focal family weights the two partial BCE losses,

.. math::
    \ell_{+1} = -(1-p)^{\gamma_+}\log p, \qquad \ell_{-1} = -p^{\gamma_-}\log(1-p),

which leaves ``σ(v)`` miscalibrated for γ > 0; :func:`phi_correct` maps it back to the
posterior. The strictly proper SPA loss and the LPR regulariser are in
:mod:`calibrant.losses.spa`; the input plumbing shared with it and with
:mod:`calibrant.losses.overlap` is :func:`calibrant.losses._base.multilabel_inputs`.

Reduction (METHODS §10.C3): ``"mean"`` averages over every valid (sample, label) entry, i.e. the
per-example label mean of the SPA paper's eq. 21 averaged over the batch. The reference ASL code
sums over batch and labels; that is ``reduction="sum"`` (ASL's published γ and margin were tuned
under the sum, which only rescales the effective learning rate).

Example:
    >>> import torch
    >>> from calibrant.losses.multilabel import asl_loss, bce_loss, phi_correct
    >>> v, y = torch.tensor([[-2.0, 0.0, 3.0]]), torch.tensor([[0, 1, 1]])
    >>> bool(asl_loss(v, y) < bce_loss(v, y))
    True
    >>> phi_correct(torch.sigmoid(v), gamma_neg=0.0, gamma_pos=0.0).shape
    torch.Size([1, 3])

Reference:
    Cheng & Vasconcelos, "Towards calibrated multi-label deep neural networks", CVPR 2024
    (eqs. 7–8, Theorem 2); Ridnik et al., ICCV 2021 (ASL); Kobayashi, CVPR 2023 (TWL).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from calibrant._checks import check_choice, check_finite, check_positive
from calibrant._tensor import REDUCTIONS, float32, reduce
from calibrant.losses._base import ThinLoss, as_float, multilabel_inputs, partial_losses
from calibrant.registry import LOSSES

__all__ = [
    "bce_loss",
    "BCELoss",
    "binary_focal_loss",
    "BinaryFocalLoss",
    "asymmetric_focal_loss",
    "AsymmetricFocalLoss",
    "asl_loss",
    "ASLLoss",
    "twl_loss",
    "TwoWayLoss",
    "phi_correct",
]

_ML = {"task": "multilabel", "spatial": False}  # registry metadata of every loss here


# ----------------------------------------------------------------------------------------------
# BCE and the focal family (sigmoid link)
# ----------------------------------------------------------------------------------------------


def bce_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    ignore_index: int | None = -100,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""Binary cross-entropy on logits (METHODS §4.1), the stable ``softplus`` form.

    .. math::
        \ell(v, y) = -y \log \sigma(v) - (1 - y) \log(1 - \sigma(v))

    Args:
        logits: ``(B, T, *spatial)``.
        target: same shape, values in {0, 1} or ``ignore_index``.
        ignore_index: target value to ignore, or ``None``.
        reduction: ``"none"`` (per element), ``"mean"`` (over valid entries) or ``"sum"``.

    Shape:
        ``"none"`` returns the target shape; otherwise a scalar.

    Example:
        >>> bce_loss(torch.zeros(2, 3), torch.ones(2, 3))
        tensor(0.6931)

    Reference:
        Equals ``torch.nn.functional.binary_cross_entropy_with_logits`` on valid entries.
    """
    with float32(logits):
        x, y, valid = multilabel_inputs(logits, target, ignore_index)
        values = F.binary_cross_entropy_with_logits(x, y, reduction="none")
        return reduce(values, valid, reduction)


@LOSSES.register("bce", granularity="element", **_ML)
class BCELoss(ThinLoss, fn=bce_loss):
    """Module form of :func:`bce_loss` (logits in, not probabilities)."""


def _check_focal(gamma_pos: float, gamma_neg: float, margin: float = 0.0, **_: Any) -> None:
    """Focusing exponents γ± ≥ 0 and the ASY probability margin m ∈ [0, 1)."""
    check_positive("gamma_pos", gamma_pos, strict=False)
    check_positive("gamma_neg", gamma_neg, strict=False)
    if not 0.0 <= margin < 1.0:
        raise ValueError(f"margin must lie in [0, 1), got {margin!r}")


def _check_gamma(gamma: float, **_: Any) -> None:
    check_positive("gamma", gamma, strict=False)


def _check_temperatures(t_pos: float, t_neg: float, **_: Any) -> None:
    check_positive("t_pos", t_pos)
    check_positive("t_neg", t_neg)


def _focal_terms(
    x: torch.Tensor, gamma_pos: float, gamma_neg: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Positive and negative partial focal losses on logits, ``(1-p)^g+ (-log p)`` etc."""
    p, q = torch.sigmoid(x), torch.sigmoid(-x)  # q = 1 - p without cancellation
    pos = -q.pow(gamma_pos) * F.logsigmoid(x)
    neg = -p.pow(gamma_neg) * F.logsigmoid(-x)
    return pos, neg


def asymmetric_focal_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    gamma_pos: float = 2.0,
    gamma_neg: float = 2.0,
    ignore_index: int | None = -100,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""Asymmetric focal loss (SPA paper eq. 7; METHODS §4.2), with ``p = σ(v)``.

    .. math::
        \ell_{+1} = -(1-p)^{\gamma_+}\log p, \qquad \ell_{-1} = -p^{\gamma_-}\log(1-p)

    With ``gamma_pos = gamma_neg = 0`` it is BCE. Its outputs are not calibrated for γ > 0; use
    :func:`phi_correct` on ``σ(v)`` to recover the posterior.

    Args:
        logits: ``(B, T, *spatial)``.
        target: same shape, values in {0, 1} or ``ignore_index``.
        gamma_pos: focusing exponent of positives (γ+ ≥ 0). Default 2 [unverified for SPA runs].
        gamma_neg: focusing exponent of negatives (γ− ≥ 0). Default 2.
        ignore_index: target value to ignore, or ``None``.
        reduction: ``"none" | "mean" | "sum"``.

    Shape:
        ``"none"`` returns the target shape; otherwise a scalar.

    Example:
        >>> v, y = torch.tensor([[2.0, -1.0]]), torch.tensor([[1, 0]])
        >>> bool(asymmetric_focal_loss(v, y) < bce_loss(v, y))
        True

    Reference:
        Lin et al., "Focal loss for dense object detection", ICCV 2017; Cheng & Vasconcelos,
        "Towards calibrated multi-label deep neural networks", CVPR 2024 (eq. 7).
    """
    _check_focal(gamma_pos, gamma_neg)
    return partial_losses(
        logits,
        target,
        lambda x: _focal_terms(x, gamma_pos, gamma_neg),
        ignore_index=ignore_index,
        reduction=reduction,
    )


@LOSSES.register("asymmetric_focal", granularity="element", **_ML)
class AsymmetricFocalLoss(ThinLoss, fn=asymmetric_focal_loss, check=_check_focal):
    """Module form of :func:`asymmetric_focal_loss`."""


def binary_focal_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    gamma: float = 2.0,
    alpha: float | None = None,
    ignore_index: int | None = -100,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""Binary (sigmoid) focal loss, the ALL paper's FL baseline (METHODS §5.1, §10.D3).

    .. math::
        \ell = -\alpha_t (1 - p_t)^{\gamma} \log p_t,\quad
        p_t = y p + (1-y)(1-p),\quad \alpha_t = y\alpha + (1-y)(1-\alpha)

    With ``alpha=None`` there is no class weight (α_t = 1); with ``gamma=0, alpha=None`` it is BCE.

    Args:
        logits: ``(B, T, *spatial)``.
        target: same shape, values in {0, 1} or ``ignore_index``.
        gamma: focusing exponent, default 2 (the paper does not give it [unverified]).
        alpha: optional positive-class weight in [0, 1].
        ignore_index: target value to ignore, or ``None``.
        reduction: ``"none" | "mean" | "sum"``.

    Shape:
        ``"none"`` returns the target shape; otherwise a scalar.

    Example:
        >>> v, y = torch.zeros(1, 2), torch.tensor([[1, 0]])
        >>> binary_focal_loss(v, y, gamma=0.0)
        tensor(0.6931)

    Reference:
        Lin et al., "Focal loss for dense object detection", ICCV 2017.
    """
    _check_gamma(gamma)
    if alpha is not None and not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1] or be None, got {alpha!r}")

    def partials(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pos, neg = _focal_terms(x, gamma, gamma)
        return (pos, neg) if alpha is None else (alpha * pos, (1.0 - alpha) * neg)

    return partial_losses(logits, target, partials, ignore_index=ignore_index, reduction=reduction)


@LOSSES.register("focal_binary", granularity="element", **_ML)
class BinaryFocalLoss(ThinLoss, fn=binary_focal_loss, check=_check_gamma):
    """Module form of :func:`binary_focal_loss`."""


def asl_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    gamma_pos: float = 0.0,
    gamma_neg: float = 4.0,
    margin: float = 0.05,
    clip_eps: float = 1e-8,
    detach_focal_weight: bool = False,
    ignore_index: int | None = -100,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""ASY, the asymmetric loss of Ridnik et al. (SPA paper eq. 8; METHODS §4.3).

    .. math::
        p_m = \max(p - m, 0),\quad
        \ell_{+1} = -(1-p)^{\gamma_+}\log p,\quad
        \ell_{-1} = -p_m^{\gamma_-}\log(1 - p_m)

    Both logs are clamped at ``clip_eps`` (1e-8, as in the ASL code). ``1 - p`` is computed as
    ``σ(-v)`` so the negative branch loses no precision. With ``m = 0`` and ``γ± = 0`` it is BCE
    (up to the clamp, which only acts where ``p < 1e-8``).

    Args:
        logits: ``(B, T, *spatial)``.
        target: same shape, values in {0, 1} or ``ignore_index``.
        gamma_pos: γ+ (ASL default 0; some releases use 1).
        gamma_neg: γ− (ASL default 4).
        margin: probability margin m ∈ [0, 1) (ASL default 0.05).
        clip_eps: clamp of the probabilities inside the logs.
        detach_focal_weight: compute the focusing weights without gradient (an ASL option;
            default off, gradient flows through them).
        ignore_index: target value to ignore, or ``None``.
        reduction: ``"mean"`` (eq. 21, default) or ``"sum"`` (the ASL code's convention) or
            ``"none"``.

    Shape:
        ``"none"`` returns the target shape; otherwise a scalar.

    Example:
        >>> v, y = torch.tensor([[3.0, -3.0]]), torch.tensor([[1, 0]])
        >>> asl_loss(v, y, reduction="none").shape
        torch.Size([1, 2])

    Reference:
        Ridnik et al., "Asymmetric loss for multi-label classification", ICCV 2021.
    """
    _check_focal(gamma_pos, gamma_neg, margin)

    def partials(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        p, q = torch.sigmoid(x), torch.sigmoid(-x)
        p_m = (p - margin).clamp(min=0.0)  # shifted probability of negatives
        one_minus_pm = (q + margin).clamp(max=1.0)  # 1 - p_m
        w_pos, w_neg = q.pow(gamma_pos), p_m.pow(gamma_neg)
        if detach_focal_weight:
            w_pos, w_neg = w_pos.detach(), w_neg.detach()
        pos = -w_pos * torch.log(p.clamp(min=clip_eps))
        neg = -w_neg * torch.log(one_minus_pm.clamp(min=clip_eps))
        return pos, neg

    return partial_losses(logits, target, partials, ignore_index=ignore_index, reduction=reduction)


@LOSSES.register("asl", granularity="element", **_ML)
class ASLLoss(ThinLoss, fn=asl_loss, check=_check_focal):
    """Module form of :func:`asl_loss` (ASY)."""


def _h(z: torch.Tensor, gamma: float) -> torch.Tensor:
    """``h(z; γ) = (z^γ − γ z^{γ−1}(1−z) log(1−z)) / (1−z)``; the γ-term is 0 at γ = 0 or z = 0."""
    if gamma == 0:
        return 1.0 / (1.0 - z)
    safe = z.clamp(min=torch.finfo(z.dtype).tiny)
    second = gamma * safe.pow(gamma - 1.0) * (1.0 - z) * torch.log1p(-z)
    second = torch.where(z > 0, second, torch.zeros_like(z))
    return (z.pow(gamma) - second) / (1.0 - z)


def phi_correct(
    probs: torch.Tensor,
    gamma_neg: float,
    gamma_pos: float,
    margin: float = 0.0,
    *,
    eps: float = 1e-6,
) -> torch.Tensor:
    r"""Post-hoc correction φ of focal/ASY outputs (SPA paper Theorem 2; METHODS §4.5).

    .. math::
        \phi(z) = \frac{h((z-m)_+;\gamma_-)}{h((z-m)_+;\gamma_-) + h(1-z;\gamma_+)},\qquad
        h(z;\gamma) = \frac{z^\gamma - \gamma z^{\gamma-1}(1-z)\log(1-z)}{1-z}

    ``h(·;γ−)`` is the derivative of the negative partial loss and ``h(1−z;γ+)`` minus that of
    the positive one, so φ maps the minimiser of the focal/ASY conditional risk back to the true
    posterior η. For ``γ± = 0, m = 0`` it is the identity. With ``m > 0`` every ``z ≤ m`` maps
    to 0 (φ is not injective there, which creates ranking ties).

    This is the one function in calibrant that takes probabilities: it is a post-hoc map applied
    to ``σ(v)`` of a model trained with :func:`asymmetric_focal_loss` or :func:`asl_loss`.

    Args:
        probs: predicted probabilities ``σ(v)``, any shape; clamped to ``[eps, 1 − eps]``.
        gamma_neg: γ− used in training.
        gamma_pos: γ+ used in training.
        margin: ASY probability margin m (0 for focal).
        eps: clamp keeping the logs finite.

    Returns:
        Corrected probabilities, same shape as ``probs``.

    Example:
        >>> z = torch.tensor([0.1, 0.5, 0.9])
        >>> phi_correct(z, gamma_neg=0.0, gamma_pos=0.0)
        tensor([0.1000, 0.5000, 0.9000])
        >>> phi_correct(z, 4.0, 0.0, 0.05)  # ASL defaults: raw outputs overstate positives
        tensor([3.2225e-06, 1.2758e-01, 8.7990e-01])

    Reference:
        Cheng & Vasconcelos, "Towards calibrated multi-label deep neural networks", CVPR 2024,
        Theorem 2.
    """
    _check_focal(gamma_pos, gamma_neg, margin)
    check_finite("probs", probs)
    with float32(probs):
        z = as_float(probs).clamp(eps, 1.0 - eps)
        u = (z - margin).clamp(min=0.0)
        h_neg = torch.where(u > 0, _h(u, gamma_neg), torch.zeros_like(u))
        h_pos = _h(1.0 - z, gamma_pos)
        return h_neg / (h_neg + h_pos)


# ----------------------------------------------------------------------------------------------
# TWL
# ----------------------------------------------------------------------------------------------

_TWL_MASK = -100.0  # the official code's additive mask inside the log-sum-exp


def twl_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    t_pos: float = 4.0,
    t_neg: float = 1.0,
    ignore_index: int | None = -100,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""Two-Way multi-label loss (Kobayashi, CVPR 2023; METHODS §4.4).

    For every class t with at least one positive in the batch,

    .. math::
        P_t = T_p \log\sum_{i:y_{it}=1} e^{-x_{it}/T_p},\quad
        N_t = T_n \log\sum_{i:y_{it}=0} e^{x_{it}/T_n},\quad
        \text{term}_t = \operatorname{softplus}(N_t + P_t),

    averaged over such classes; the same over the labels of every sample with at least one
    positive, averaged over such samples; the loss is the sum of both averages. Entries outside a
    sum are masked by adding −100 inside the log-sum-exp, as in the official code (so a class
    without negatives contributes ≈ 0 with finite gradients). Ignored entries enter neither sum
    and their logits are replaced by 0 first, so the value does not depend on them. Extra spatial
    dims are folded into the batch: every ``(b, *spatial)`` position is one sample.

    TWL is not a class-probability-estimation loss; for calibration metrics read ``σ(x)``
    [assumption].

    Args:
        logits: ``(B, T, *spatial)``.
        target: same shape, values in {0, 1} or ``ignore_index``.
        t_pos: temperature T_p of positives (default 4).
        t_neg: temperature T_n of negatives (default 1).
        ignore_index: target value to ignore, or ``None``.
        reduction: accepted for the common signature; TWL is a batch-level loss and always
            returns a scalar.

    Shape:
        A scalar for every reduction.

    Example:
        >>> v = torch.tensor([[2.0, -1.0], [0.5, 1.0]])
        >>> y = torch.tensor([[1, 0], [0, 1]])
        >>> twl_loss(v, y).shape
        torch.Size([])

    Reference:
        Kobayashi, "Two-way multi-label loss", CVPR 2023.
    """
    check_choice("reduction", reduction, REDUCTIONS)
    _check_temperatures(t_pos, t_neg)
    with float32(logits):
        x, y, valid = multilabel_inputs(logits, target, ignore_index)
        x = x.movedim(1, -1).reshape(-1, x.shape[1])  # (N, T)
        y = y.movedim(1, -1).reshape(-1, y.shape[1])
        valid = valid.movedim(1, -1).reshape(-1, valid.shape[1])
        x = torch.where(valid, x, torch.zeros_like(x))
        pos, neg = valid & (y > 0.5), valid & (y < 0.5)
        pos_in = torch.where(pos, -x / t_pos, -x / t_pos + _TWL_MASK)
        neg_in = torch.where(neg, x / t_neg, x / t_neg + _TWL_MASK)

        def term(dim: int) -> torch.Tensor:
            has_pos = pos.any(dim)
            p = t_pos * torch.logsumexp(pos_in, dim)
            n = t_neg * torch.logsumexp(neg_in, dim)
            values = torch.where(has_pos, F.softplus(n + p), torch.zeros_like(p))
            return values.sum() / has_pos.sum().clamp(min=1)

        return term(0) + term(1)


@LOSSES.register("twl", granularity="batch", **_ML)
class TwoWayLoss(ThinLoss, fn=twl_loss, check=_check_temperatures):
    """Module form of :func:`twl_loss`."""
