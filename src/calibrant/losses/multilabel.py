r"""Multi-label losses: BCE, focal, ASY, TWL, the strictly proper SPA loss and the LPR regulariser.

Every loss takes logits ``v`` of shape ``(B, T, *spatial)`` and a target of the same shape with
values in {0, 1} (binary problems are ``T = 1``). Entries equal to ``ignore_index`` are ignored:
they get zero loss and zero gradient, and the value does not depend on their logits.

Reduction (METHODS §10.C3): ``"mean"`` averages over every valid (sample, label) entry, i.e. the
per-example label mean of the SPA paper's eq. 21 averaged over the batch. The reference ASL code
sums over batch and labels; that is ``reduction="sum"`` (ASL's published γ and margin were tuned
under the sum, which only rescales the effective learning rate).

Example:
    >>> import torch
    >>> from calibrant.losses.multilabel import spa_probs, spa_loss
    >>> v = torch.tensor([[-2.0, 0.0, 3.0]])
    >>> spa_probs(v).shape
    torch.Size([1, 3])
    >>> float(spa_loss(v, torch.tensor([[0, 1, 1]]))) > 0
    True
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from calibrant._checks import check_choice, check_finite, check_positive
from calibrant._tensor import REDUCTIONS, float32, reduce
from calibrant.losses.combine import WeightedSum
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
    "spa_logit",
    "spa_probs",
    "spa_loss",
    "SPALoss",
    "lpr_loss",
    "LPRLoss",
    "phi_correct",
    "SampleMean",
]

SPA_DEFAULTS: dict[str, float] = {
    "zeta_pos": 1.0,
    "k_pos": 1.0,
    "b_pos": 0.0,
    "zeta_neg": 5.0,
    "k_neg": 3.0,
    "b_neg": 1.0,
}


# ----------------------------------------------------------------------------------------------
# shared plumbing for multi-label inputs
# ----------------------------------------------------------------------------------------------


def _upcast(x: torch.Tensor) -> torch.Tensor:
    """At least float32 (float64 stays float64 so gradcheck sees double precision)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _multilabel_inputs(
    logits: torch.Tensor, target: torch.Tensor, ignore_index: int | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Validate a multi-label pair; return float logits, safe {0,1} target and the validity mask.

    Raises:
        ValueError: non-floating or non-finite logits, a shape mismatch, fewer than 2 dims, or
            target values other than 0, 1 and ``ignore_index``.
    """
    if not torch.is_floating_point(logits):
        raise ValueError(f"logits must be a floating-point tensor, got dtype {logits.dtype}")
    if logits.dim() < 2:
        raise ValueError(
            f"multi-label logits must have shape (B, T, *spatial), got {tuple(logits.shape)}"
        )
    if logits.shape != target.shape:
        raise ValueError(
            f"multi-label target shape {tuple(target.shape)} must equal logits shape "
            f"{tuple(logits.shape)}"
        )
    check_finite("logits", logits)
    if ignore_index is None:
        valid = torch.ones_like(target, dtype=torch.bool)
    else:
        valid = target != ignore_index
    if bool((valid & (target != 0) & (target != 1)).any()):
        raise ValueError(
            f"multi-label target must hold only 0, 1 (or ignore_index={ignore_index}); got "
            f"{torch.unique(target[valid & (target != 0) & (target != 1)])[:5].tolist()}"
        )
    x = _upcast(logits)
    y = torch.where(valid, target, torch.zeros_like(target)).to(x.dtype)
    return x, y, valid


def _per_sample_mean(
    values: torch.Tensor, valid: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean of element values over each sample's valid entries -> ``(B,)`` and ``(B,)`` bool."""
    values = torch.where(valid, values, values.new_zeros(()))
    dims = tuple(range(1, values.dim()))
    count = valid.sum(dims)
    return values.sum(dims) / count.clamp(min=1), count > 0


class _Loss(nn.Module):
    """Thin module base: stores hyper-parameters; subclasses call their function in forward."""

    def __init__(self, **hparams: Any) -> None:
        super().__init__()
        check_choice("reduction", hparams.get("reduction", "mean"), REDUCTIONS)
        self.hparams = hparams

    def extra_repr(self) -> str:
        """Hyper-parameters shown in the module repr."""
        return ", ".join(f"{k}={v!r}" for k, v in self.hparams.items())


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
        x, y, valid = _multilabel_inputs(logits, target, ignore_index)
        values = F.binary_cross_entropy_with_logits(x, y, reduction="none")
        return reduce(values, valid, reduction)


class BCELoss(_Loss):
    """Module form of :func:`bce_loss` (logits in, not probabilities)."""

    def __init__(self, *, ignore_index: int | None = -100, reduction: str = "mean") -> None:
        super().__init__(ignore_index=ignore_index, reduction=reduction)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """See :func:`bce_loss`."""
        return bce_loss(logits, target, **self.hparams)


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
    check_positive("gamma_pos", gamma_pos, strict=False)
    check_positive("gamma_neg", gamma_neg, strict=False)
    with float32(logits):
        x, y, valid = _multilabel_inputs(logits, target, ignore_index)
        pos, neg = _focal_terms(x, gamma_pos, gamma_neg)
        return reduce(y * pos + (1 - y) * neg, valid, reduction)


class AsymmetricFocalLoss(_Loss):
    """Module form of :func:`asymmetric_focal_loss`."""

    def __init__(
        self,
        *,
        gamma_pos: float = 2.0,
        gamma_neg: float = 2.0,
        ignore_index: int | None = -100,
        reduction: str = "mean",
    ) -> None:
        check_positive("gamma_pos", gamma_pos, strict=False)
        check_positive("gamma_neg", gamma_neg, strict=False)
        super().__init__(
            gamma_pos=gamma_pos, gamma_neg=gamma_neg, ignore_index=ignore_index, reduction=reduction
        )

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """See :func:`asymmetric_focal_loss`."""
        return asymmetric_focal_loss(logits, target, **self.hparams)


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
    check_positive("gamma", gamma, strict=False)
    if alpha is not None and not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1] or be None, got {alpha!r}")
    with float32(logits):
        x, y, valid = _multilabel_inputs(logits, target, ignore_index)
        pos, neg = _focal_terms(x, gamma, gamma)
        if alpha is not None:
            pos, neg = alpha * pos, (1.0 - alpha) * neg
        return reduce(y * pos + (1 - y) * neg, valid, reduction)


class BinaryFocalLoss(_Loss):
    """Module form of :func:`binary_focal_loss`."""

    def __init__(
        self,
        *,
        gamma: float = 2.0,
        alpha: float | None = None,
        ignore_index: int | None = -100,
        reduction: str = "mean",
    ) -> None:
        check_positive("gamma", gamma, strict=False)
        super().__init__(gamma=gamma, alpha=alpha, ignore_index=ignore_index, reduction=reduction)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """See :func:`binary_focal_loss`."""
        return binary_focal_loss(logits, target, **self.hparams)


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
    check_positive("gamma_pos", gamma_pos, strict=False)
    check_positive("gamma_neg", gamma_neg, strict=False)
    if not 0.0 <= margin < 1.0:
        raise ValueError(f"margin must lie in [0, 1), got {margin!r}")
    with float32(logits):
        x, y, valid = _multilabel_inputs(logits, target, ignore_index)
        p, q = torch.sigmoid(x), torch.sigmoid(-x)
        p_m = (p - margin).clamp(min=0.0)  # shifted probability of negatives
        one_minus_pm = (q + margin).clamp(max=1.0)  # 1 - p_m
        w_pos, w_neg = q.pow(gamma_pos), p_m.pow(gamma_neg)
        if detach_focal_weight:
            w_pos, w_neg = w_pos.detach(), w_neg.detach()
        pos = -w_pos * torch.log(p.clamp(min=clip_eps))
        neg = -w_neg * torch.log(one_minus_pm.clamp(min=clip_eps))
        return reduce(y * pos + (1 - y) * neg, valid, reduction)


class ASLLoss(_Loss):
    """Module form of :func:`asl_loss` (ASY)."""

    def __init__(
        self,
        *,
        gamma_pos: float = 0.0,
        gamma_neg: float = 4.0,
        margin: float = 0.05,
        clip_eps: float = 1e-8,
        detach_focal_weight: bool = False,
        ignore_index: int | None = -100,
        reduction: str = "mean",
    ) -> None:
        if not 0.0 <= margin < 1.0:
            raise ValueError(f"margin must lie in [0, 1), got {margin!r}")
        super().__init__(
            gamma_pos=gamma_pos,
            gamma_neg=gamma_neg,
            margin=margin,
            clip_eps=clip_eps,
            detach_focal_weight=detach_focal_weight,
            ignore_index=ignore_index,
            reduction=reduction,
        )

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """See :func:`asl_loss`."""
        return asl_loss(logits, target, **self.hparams)


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
    check_positive("gamma_neg", gamma_neg, strict=False)
    check_positive("gamma_pos", gamma_pos, strict=False)
    if not 0.0 <= margin < 1.0:
        raise ValueError(f"margin must lie in [0, 1), got {margin!r}")
    check_finite("probs", probs)
    with float32(probs):
        z = _upcast(probs).clamp(eps, 1.0 - eps)
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
    check_positive("t_pos", t_pos)
    check_positive("t_neg", t_neg)
    with float32(logits):
        x, y, valid = _multilabel_inputs(logits, target, ignore_index)
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


class TwoWayLoss(_Loss):
    """Module form of :func:`twl_loss`."""

    def __init__(
        self,
        *,
        t_pos: float = 4.0,
        t_neg: float = 1.0,
        ignore_index: int | None = -100,
        reduction: str = "mean",
    ) -> None:
        check_positive("t_pos", t_pos)
        check_positive("t_neg", t_neg)
        super().__init__(t_pos=t_pos, t_neg=t_neg, ignore_index=ignore_index, reduction=reduction)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """See :func:`twl_loss`."""
        return twl_loss(logits, target, **self.hparams)


# ----------------------------------------------------------------------------------------------
# SPA: strictly proper asymmetric loss and its inverse link
# ----------------------------------------------------------------------------------------------


def _check_spa(zeta_pos: float, k_pos: float, zeta_neg: float, k_neg: float) -> None:
    for name, value in (("zeta_pos", zeta_pos), ("k_pos", k_pos)):
        check_positive(name, value)
    for name, value in (("zeta_neg", zeta_neg), ("k_neg", k_neg)):
        check_positive(name, value)


def spa_logit(
    logits: torch.Tensor,
    *,
    zeta_pos: float = 1.0,
    k_pos: float = 1.0,
    b_pos: float = 0.0,
    zeta_neg: float = 5.0,
    k_neg: float = 3.0,
    b_neg: float = 1.0,
) -> torch.Tensor:
    r"""Calibrated log-odds ``z = logit(η̂)`` of the SPA inverse link (METHODS §4.6, §10.C2).

    .. math::
        z = \log\frac{k_-}{\zeta_-} - \log\frac{k_+}{\zeta_+}
            + \log\sigma(k_-(v - b_-)) - \log\sigma(-k_+(v - b_+))

    i.e. ``η̂ = σ(z) = A / (A + B)`` with ``A = (k−/ζ−) σ(k−(v−b−))`` and
    ``B = (k+/ζ+) σ(−k+(v−b+))``: the unique stationary point of the conditional risk
    ``η ℓ+(v) + (1−η) ℓ−(v)`` of :func:`spa_loss`. It is strictly increasing in v and equals v
    when all parameters are (1, 1, 0). The poster's printed eq. 17 has the σ signs swapped and is
    decreasing; this is the corrected form.

    Args:
        logits: ``v``, any shape.
        zeta_pos: ζ+ > 0, default 1 ((ζ+, k+, b+) = (1, 1, 0) makes the positive loss BCE).
        k_pos: k+ > 0, default 1.
        b_pos: b+, default 0.
        zeta_neg: ζ− > 0, default 5 ((5, 3, 1) is the paper's illustrated example; per-dataset
            values are not published [unverified], tune on validation).
        k_neg: k− > 0, default 3.
        b_neg: b−, default 1.

    Returns:
        ``z``, same shape as ``logits``, at least float32.

    Example:
        >>> v = torch.tensor([-1.0, 0.0, 2.0])
        >>> spa_logit(v, zeta_neg=1.0, k_neg=1.0, b_neg=0.0)
        tensor([-1.,  0.,  2.])

    Reference:
        Cheng & Vasconcelos, "Towards calibrated multi-label deep neural networks", CVPR 2024,
        eqs. 16–17, Theorem 3.
    """
    _check_spa(zeta_pos, k_pos, zeta_neg, k_neg)
    with float32(logits):
        v = _upcast(logits)
        offset = math.log(k_neg / zeta_neg) - math.log(k_pos / zeta_pos)
        return offset + F.logsigmoid(k_neg * (v - b_neg)) - F.logsigmoid(-k_pos * (v - b_pos))


def spa_probs(logits: torch.Tensor, **params: float) -> torch.Tensor:
    r"""Calibrated probabilities ``η̂ = σ(spa_logit(v))`` of a model trained with SPA.

    Args:
        logits: ``v``, any shape.
        **params: the SPA parameters of :func:`spa_logit` used in training.

    Returns:
        Probabilities in (0, 1), same shape as ``logits``.

    Example:
        >>> spa_probs(torch.tensor([0.0]), zeta_neg=1.0, k_neg=1.0, b_neg=0.0)
        tensor([0.5000])
    """
    return torch.sigmoid(spa_logit(logits, **params))


def spa_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    zeta_pos: float = 1.0,
    k_pos: float = 1.0,
    b_pos: float = 0.0,
    zeta_neg: float = 5.0,
    k_neg: float = 3.0,
    b_neg: float = 1.0,
    ignore_index: int | None = -100,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""Strictly proper asymmetric (SPA) loss on the logit v (SPA paper eq. 16; METHODS §4.6).

    .. math::
        \ell_{+1}(v) = -\tfrac{1}{\zeta_+}\log\sigma(k_+(v - b_+)),\qquad
        \ell_{-1}(v) = -\tfrac{1}{\zeta_-}\log\sigma(-k_-(v - b_-))

    The losses act on v, not on a probability (the third-party ``mlcpl`` applies them to the
    link output, which contradicts eq. 16). Read calibrated probabilities with
    :func:`spa_probs` using the same parameters. Strictly proper for any ζ±, k± > 0, b± ∈ R.

    Args:
        logits: ``(B, T, *spatial)``.
        target: same shape, values in {0, 1} or ``ignore_index``.
        zeta_pos: ζ+ > 0, default 1 ((ζ+, k+, b+) = (1, 1, 0) makes the positive loss BCE).
        k_pos: k+ > 0, default 1.
        b_pos: b+, default 0.
        zeta_neg: ζ− > 0, default 5 ((5, 3, 1) is the paper's illustrated example; per-dataset
            values are not published [unverified], tune on validation).
        k_neg: k− > 0, default 3.
        b_neg: b−, default 1.
        ignore_index: target value to ignore, or ``None``.
        reduction: ``"none" | "mean" | "sum"``; mean is eq. 21's label mean averaged over the
            batch.

    Shape:
        ``"none"`` returns the target shape; otherwise a scalar.

    Example:
        >>> v, y = torch.zeros(1, 2), torch.tensor([[1, 0]])
        >>> spa_loss(v, y, zeta_neg=1.0, k_neg=1.0, b_neg=0.0)
        tensor(0.6931)

    Reference:
        Cheng & Vasconcelos, "Towards calibrated multi-label deep neural networks", CVPR 2024.
    """
    _check_spa(zeta_pos, k_pos, zeta_neg, k_neg)
    with float32(logits):
        x, y, valid = _multilabel_inputs(logits, target, ignore_index)
        pos = -F.logsigmoid(k_pos * (x - b_pos)) / zeta_pos
        neg = -F.logsigmoid(-k_neg * (x - b_neg)) / zeta_neg
        return reduce(y * pos + (1 - y) * neg, valid, reduction)


class SPALoss(_Loss):
    """Module form of :func:`spa_loss`; :meth:`probs` gives the calibrated probabilities."""

    def __init__(
        self,
        *,
        zeta_pos: float = 1.0,
        k_pos: float = 1.0,
        b_pos: float = 0.0,
        zeta_neg: float = 5.0,
        k_neg: float = 3.0,
        b_neg: float = 1.0,
        ignore_index: int | None = -100,
        reduction: str = "mean",
    ) -> None:
        _check_spa(zeta_pos, k_pos, zeta_neg, k_neg)
        super().__init__(ignore_index=ignore_index, reduction=reduction)
        self.link_params = {
            "zeta_pos": zeta_pos,
            "k_pos": k_pos,
            "b_pos": b_pos,
            "zeta_neg": zeta_neg,
            "k_neg": k_neg,
            "b_neg": b_neg,
        }

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """See :func:`spa_loss`."""
        return spa_loss(logits, target, **self.link_params, **self.hparams)

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        """Calibrated probabilities through the inverse link (:func:`spa_probs`)."""
        return spa_probs(logits, **self.link_params)

    def extra_repr(self) -> str:
        """Link parameters and reduction settings."""
        return ", ".join(f"{k}={v!r}" for k, v in {**self.link_params, **self.hparams}.items())


# ----------------------------------------------------------------------------------------------
# LPR
# ----------------------------------------------------------------------------------------------

Link = str | Callable[[torch.Tensor], torch.Tensor]


def _link_logit(x: torch.Tensor, link: Link, link_params: Mapping[str, float] | None):
    if callable(link):
        return link(x)
    check_choice("link", link, ("sigmoid", "spa"))
    if link == "sigmoid":
        if link_params:
            raise ValueError("link='sigmoid' takes no link_params")
        return x
    return spa_logit(x, **dict(link_params or {}))


def lpr_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    link: Link = "sigmoid",
    link_params: Mapping[str, float] | None = None,
    ignore_index: int | None = -100,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""Label pair regulariser (LPR; SPA paper eqs. 19–21; METHODS §4.7), stable softplus form.

    With ``z_t = logit(η̂_t)`` the calibrated log-odds of the link, the plug-in pairwise posterior
    is ``β̂^{tt'} = σ(z_t − z_{t'})`` and

    .. math::
        L_{LPR} = \frac{2}{T(T-1)} \sum_{t \ne t'} \mathbb{1}[y_t = 1, y_{t'} = 0]\,
                  \operatorname{softplus}(z_{t'} - z_t)

    per example. The normaliser depends only on the number T of (valid) labels, not on how many
    positive/negative pairs the example has. With the sigmoid link ``z = v`` and LPR is the
    pairwise logistic ranking loss. Gradients flow through the link.

    Ignored labels are removed from the example (T counts valid labels only). Each position of
    ``(B, *spatial)`` is an example; examples with fewer than 2 valid labels contribute nothing.

    Args:
        logits: ``(B, T, *spatial)``.
        target: same shape, values in {0, 1} or ``ignore_index``.
        link: ``"sigmoid"``, ``"spa"`` (with ``link_params`` for :func:`spa_logit`) or a callable
            mapping logits to log-odds z.
        link_params: parameters of the SPA link.
        ignore_index: target value to ignore, or ``None``.
        reduction: ``"none"`` gives one value per sample ``(B,)`` (the mean over its valid
            examples when there are spatial dims); ``"mean"`` averages over samples with a valid
            example; ``"sum"`` sums over samples.

    Shape:
        ``"none"`` returns ``(B,)``; otherwise a scalar.

    Example:
        >>> v, y = torch.tensor([[2.0, -1.0, 0.0]]), torch.tensor([[1, 0, 0]])
        >>> lpr_loss(v, y, reduction="none").shape
        torch.Size([1])

    Reference:
        Cheng & Vasconcelos, "Towards calibrated multi-label deep neural networks", CVPR 2024.
    """
    check_choice("reduction", reduction, REDUCTIONS)
    with float32(logits):
        x, y, valid = _multilabel_inputs(logits, target, ignore_index)
        z = _link_logit(x, link, link_params)
        pos = (valid & (y > 0.5)).to(z.dtype)
        neg = (valid & (y < 0.5)).to(z.dtype)
        # pair[b, t, t', *] = softplus(z_t' - z_t) for positive t, negative t'
        diff = z.unsqueeze(1) - z.unsqueeze(2)
        weight = pos.unsqueeze(2) * neg.unsqueeze(1)
        pairs = torch.where(weight > 0, F.softplus(diff), torch.zeros_like(diff))
        total = (pairs * weight).sum((1, 2))  # (B, *spatial)
        n_valid = valid.sum(1).to(z.dtype)
        example_ok = n_valid >= 2
        per_example = 2.0 * total / (n_valid * (n_valid - 1.0)).clamp(min=1.0)
        per_sample, sample_ok = _per_sample_mean(per_example.unsqueeze(1), example_ok.unsqueeze(1))
        return reduce(per_sample, sample_ok, reduction)


class LPRLoss(_Loss):
    """Module form of :func:`lpr_loss`."""

    def __init__(
        self,
        *,
        link: Link = "sigmoid",
        link_params: Mapping[str, float] | None = None,
        ignore_index: int | None = -100,
        reduction: str = "mean",
    ) -> None:
        if not callable(link):
            check_choice("link", link, ("sigmoid", "spa"))
        super().__init__(
            link=link,
            link_params=dict(link_params) if link_params else None,
            ignore_index=ignore_index,
            reduction=reduction,
        )

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """See :func:`lpr_loss`."""
        return lpr_loss(logits, target, **self.hparams)


class SampleMean(nn.Module):
    r"""Turn an element-wise multi-label loss into one value per sample, then reduce.

    .. math::
        L_b = \frac{1}{|V_b|}\sum_{(t, s) \in V_b} \ell_{b t s}

    over the valid entries ``V_b`` of sample b (eq. 21's ``(1/T)Σ_t``). Used to add per-sample
    terms such as LPR to an element-wise loss in a :class:`WeightedSum`.

    Args:
        base: an element-wise loss module built with ``reduction="none"``.
        ignore_index: the target value ``base`` ignores.
        reduction: ``"none"`` gives ``(B,)``; ``"mean"`` averages over samples with a valid
            entry; ``"sum"`` sums over samples.

    Example:
        >>> loss = SampleMean(BCELoss(reduction="none"))
        >>> loss(torch.zeros(2, 3), torch.ones(2, 3))
        tensor(0.6931)
    """

    def __init__(
        self, base: nn.Module, *, ignore_index: int | None = -100, reduction: str = "mean"
    ) -> None:
        super().__init__()
        check_choice("reduction", reduction, REDUCTIONS)
        self.base, self.ignore_index, self.reduction = base, ignore_index, reduction

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per-sample mean of ``base(logits, target)`` over valid entries, then reduced."""
        values = self.base(logits, target)
        if values.shape != target.shape:
            raise ValueError(
                f"SampleMean needs an element-wise base loss with reduction='none'; got values "
                f"of shape {tuple(values.shape)} for target {tuple(target.shape)}"
            )
        if self.ignore_index is None:
            valid = torch.ones_like(target, dtype=torch.bool)
        else:
            valid = target != self.ignore_index
        per_sample, ok = _per_sample_mean(values, valid)
        return reduce(per_sample, ok, self.reduction)


# ----------------------------------------------------------------------------------------------
# registry
# ----------------------------------------------------------------------------------------------


@LOSSES.register("bce", task="multilabel", granularity="element", spatial=False)
def _build_bce(**kwargs: Any) -> BCELoss:
    return BCELoss(**kwargs)


@LOSSES.register("focal_binary", task="multilabel", granularity="element", spatial=False)
def _build_focal_binary(**kwargs: Any) -> BinaryFocalLoss:
    return BinaryFocalLoss(**kwargs)


@LOSSES.register("asymmetric_focal", task="multilabel", granularity="element", spatial=False)
def _build_asymmetric_focal(**kwargs: Any) -> AsymmetricFocalLoss:
    return AsymmetricFocalLoss(**kwargs)


@LOSSES.register("asl", task="multilabel", granularity="element", spatial=False)
def _build_asl(**kwargs: Any) -> ASLLoss:
    return ASLLoss(**kwargs)


@LOSSES.register("twl", task="multilabel", granularity="batch", spatial=False)
def _build_twl(**kwargs: Any) -> TwoWayLoss:
    return TwoWayLoss(**kwargs)


@LOSSES.register("spa", task="multilabel", granularity="element", spatial=False)
def _build_spa(**kwargs: Any) -> SPALoss:
    return SPALoss(**kwargs)


@LOSSES.register("lpr", task="multilabel", granularity="sample", spatial=False)
def _build_lpr(**kwargs: Any) -> LPRLoss:
    return LPRLoss(**kwargs)


def _with_lpr(
    base: nn.Module, link: str, link_params: Mapping[str, float] | None, lam: float, **kw: Any
) -> WeightedSum:
    ignore_index, reduction = kw.get("ignore_index", -100), kw.get("reduction", "mean")
    return WeightedSum(
        {
            "task": SampleMean(base, ignore_index=ignore_index, reduction=reduction),
            "lpr": LPRLoss(
                link=link, link_params=link_params, ignore_index=ignore_index, reduction=reduction
            ),
        },
        weights={"lpr": lam},
    )


@LOSSES.register("spa_lpr", task="multilabel", granularity="sample", spatial=False)
def _build_spa_lpr(
    *, lam: float = 1.0, ignore_index: int | None = -100, reduction: str = "mean", **spa: float
) -> WeightedSum:
    """SPA + λ·LPR through the SPA link (eq. 21); λ = 1 is a placeholder (METHODS §10.C5)."""
    params = {**SPA_DEFAULTS, **spa}
    base = SPALoss(**params, ignore_index=ignore_index, reduction="none")
    return _with_lpr(base, "spa", params, lam, ignore_index=ignore_index, reduction=reduction)


@LOSSES.register("bce_lpr", task="multilabel", granularity="sample", spatial=False)
def _build_bce_lpr(
    *, lam: float = 1.0, ignore_index: int | None = -100, reduction: str = "mean"
) -> WeightedSum:
    """BCE + λ·LPR with the sigmoid link (Table 4's BCE+LPR)."""
    base = BCELoss(ignore_index=ignore_index, reduction="none")
    return _with_lpr(base, "sigmoid", None, lam, ignore_index=ignore_index, reduction=reduction)
