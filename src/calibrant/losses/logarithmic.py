r"""ALL: the adaptive logarithmic loss wrapped around Dice (or any loss; METHODS §5.2).

``ALL(L) = ω ln(1 + |L|/ε)`` below the switch point γ and ``|L| − C`` above it, so small
errors (a nearly right segmentation) still get a large gradient. Registered as ``all`` (around
the batch-global binary Dice of :mod:`calibrant.losses.overlap`, the ALL paper's setting) and
``all_softmax`` (around the multi-class ``Σ_c (1 − DI_c)``).

Example:
    >>> import torch
    >>> from calibrant.losses.overlap import dice_loss
    >>> logits, target = torch.zeros(2, 1, 4, 4), torch.ones(2, 1, 4, 4)
    >>> dl = dice_loss(logits, target)
    >>> round(float(dl), 4), round(float(adaptive_log(dl)), 4)
    (0.3265, 2.0497)

Reference:
    Kaul, Pears & Manandhar, "Penalizing small errors using an adaptive logarithmic loss",
    ICPR workshops 2021.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from calibrant._checks import check_choice, check_positive
from calibrant._tensor import REDUCTIONS
from calibrant.losses.overlap import DiceLoss, dice_loss
from calibrant.registry import LOSSES

__all__ = ["adaptive_log", "AdaptiveLogLoss", "adaptive_log_dice_loss"]


def _check_all(gamma: float, omega: float, epsilon: float) -> None:
    for name, value in (("gamma", gamma), ("omega", omega), ("epsilon", epsilon)):
        check_positive(name, value)


def adaptive_log(
    value: torch.Tensor, *, gamma: float = 0.1, omega: float = 10.0, epsilon: float = 0.5
) -> torch.Tensor:
    r"""Adaptive logarithmic transform of a loss value (ALL; METHODS §5.2).

    .. math::
        ALL(L) = \begin{cases} \omega \ln(1 + |L|/\epsilon) & |L| < \gamma \\
                 |L| - C & \text{otherwise} \end{cases},\qquad
        C = \gamma - \omega \ln(1 + \gamma/\epsilon)

    Continuous at ``|L| = γ`` (value ``ω ln(1 + γ/ε)``, 1.8232 at the defaults, C = −1.7232) but
    **not differentiable there**: the slope is ``ω/(ε + γ)`` on the left (16.67 at the defaults;
    ``ω/ε`` = 20 at L = 0) and 1 on the right. The paper's "smooth at γ" claim is wrong; this is
    the published formula, as is. Applied element-wise, so a per-sample loss vector gives
    per-sample ALL values.

    Args:
        value: loss values, any shape (typically the batch-global Dice loss, a scalar).
        gamma: switch point γ (0.1, ALL paper).
        omega: log scale ω (10).
        epsilon: log curvature ε (0.5).

    Returns:
        Tensor of the same shape.

    Example:
        >>> adaptive_log(torch.tensor([0.0, 0.1, 0.5]))
        tensor([0.0000, 1.8232, 2.2232])

    Reference:
        Kaul, Pears & Manandhar, "Penalizing small errors using an adaptive logarithmic loss",
        ICPR workshops 2021 (ALL paper).
    """
    _check_all(gamma, omega, epsilon)
    c = gamma - omega * math.log1p(gamma / epsilon)
    a = value.abs()
    return torch.where(a < gamma, omega * torch.log1p(a / epsilon), a - c)


class AdaptiveLogLoss(nn.Module):
    r"""ALL wrapper around any loss module: ``adaptive_log(base(logits, target))``.

    The transform is applied to whatever ``base`` returns (one scalar for the batch-global Dice;
    a vector when ``base`` has ``reduction="none"``). ``reduction`` then optionally combines a
    vector of ALL values (plain mean/sum over its entries); ``None`` leaves the output as is.

    Args:
        base: any loss module called as ``base(logits, target)``.
        gamma: switch point γ (0.1).
        omega: log scale ω (10).
        epsilon: log curvature ε (0.5).
        reduction: ``None`` (default), ``"none"``, ``"mean"`` or ``"sum"``, applied after the
            transform.

    Example:
        >>> loss = AdaptiveLogLoss(DiceLoss())
        >>> logits, target = torch.zeros(2, 1, 4, 4), torch.ones(2, 1, 4, 4)
        >>> round(float(loss(logits, target)), 4)
        2.0497
    """

    def __init__(
        self,
        base: nn.Module,
        *,
        gamma: float = 0.1,
        omega: float = 10.0,
        epsilon: float = 0.5,
        reduction: str | None = None,
    ) -> None:
        super().__init__()
        _check_all(gamma, omega, epsilon)
        if reduction is not None:
            check_choice("reduction", reduction, REDUCTIONS)
        self.base = base
        self.gamma, self.omega, self.epsilon, self.reduction = gamma, omega, epsilon, reduction

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """ALL of the base loss value."""
        value = adaptive_log(
            self.base(logits, target), gamma=self.gamma, omega=self.omega, epsilon=self.epsilon
        )
        if self.reduction is None or self.reduction == "none":
            return value
        return value.mean() if self.reduction == "mean" else value.sum()

    def extra_repr(self) -> str:
        """Hyper-parameters shown in the module repr."""
        return f"gamma={self.gamma}, omega={self.omega}, epsilon={self.epsilon}"


def adaptive_log_dice_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    gamma: float = 0.1,
    omega: float = 10.0,
    epsilon: float = 0.5,
    **dice_kwargs: Any,
) -> torch.Tensor:
    r"""ALL on the Dice loss: ``adaptive_log(dice_loss(logits, target, **dice_kwargs))``.

    Batch-global binary Dice with s = 1 by default (METHODS §10.D1); with softmax the argument is
    the multi-class ``Σ_c (1 − DI_c)``.

    Args:
        logits: ``(B, C, *spatial)``.
        target: see :func:`dice_loss`.
        gamma: switch point γ (0.1).
        omega: log scale ω (10).
        epsilon: log curvature ε (0.5).
        **dice_kwargs: keyword arguments of :func:`dice_loss`.

    Example:
        >>> logits, target = torch.zeros(2, 1, 4, 4), torch.ones(2, 1, 4, 4)
        >>> round(float(adaptive_log_dice_loss(logits, target)), 4)
        2.0497
    """
    dl = dice_loss(logits, target, **dice_kwargs)
    return adaptive_log(dl, gamma=gamma, omega=omega, epsilon=epsilon)


@LOSSES.register("all", task="multilabel", granularity="batch", spatial=False)
def _build_all(
    *, gamma: float = 0.1, omega: float = 10.0, epsilon: float = 0.5, **dice: Any
) -> AdaptiveLogLoss:
    """ALL around the batch-global binary Dice (s = 1): the ALL paper's setting."""
    return AdaptiveLogLoss(DiceLoss(**dice), gamma=gamma, omega=omega, epsilon=epsilon)


@LOSSES.register("all_softmax", task="multiclass", granularity="batch", spatial=False)
def _build_all_softmax(
    *, gamma: float = 0.1, omega: float = 10.0, epsilon: float = 0.5, **dice: Any
) -> AdaptiveLogLoss:
    """ALL around the multi-class ``Σ_c (1 − DI_c)`` softmax Dice (METHODS §10.D1)."""
    return AdaptiveLogLoss(
        DiceLoss(**{"activation": "softmax", **dice}), gamma=gamma, omega=omega, epsilon=epsilon
    )
