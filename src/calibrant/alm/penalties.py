r"""Penalty functions ``P(z; λ, ρ)`` of the augmented Lagrangian, each with its derivative.

``z`` is a constraint value with ``z <= 0`` meaning *satisfied*. Every function is pure and
element-wise; ``lam`` and ``rho`` broadcast against ``z``. Each returns ``(P, dP/dz)``: the value
enters the training loss, the derivative is the multiplier estimate of the dual step
(:func:`calibrant.alm.rules.lambda_update`).

=========  ============================================  ===================================
name       P(z)                                          P'(z)
=========  ============================================  ===================================
``phr``    (max(0, λ + ρz)² − λ²) / (2ρ)                 max(0, λ + ρz)
``p2``     λz + λρz² + ρ²z³/6 (z ≥ 0); λz/(1 − ρz)       λ + 2λρz + ρ²z²/2; λ/(1 − ρz)²
``p3``     λz + λρz² (z ≥ 0); λz/(1 − ρz)                λ + 2λρz; λ/(1 − ρz)²
``relu``   λ max(0, z)                                   λ [z ≥ 0]
=========  ============================================  ===================================

All four give ``P(0) = 0``. With PHR the derivative clips at 0, so a constraint satisfied with
slack (``λ + ρz < 0``) contributes no gradient; P2 and P3 reward satisfied constraints (negative
values, positive derivative), so λ never reaches 0 with them.

Example:
    >>> import torch
    >>> from calibrant.alm.penalties import get_penalty
    >>> value, grad = get_penalty("phr")(torch.tensor([-2.0, 0.0, 1.0]), 0.5, 1.0)
    >>> value, grad
    (tensor([-0.1250,  0.0000,  1.0000]), tensor([0.0000, 0.5000, 1.5000]))

Reference:
    Birgin, Castillo & Martínez, "Numerical comparison of augmented Lagrangian algorithms for
    nonconvex problems", Comput. Optim. Appl. 2005 (PHR, P2, P3). Liu et al., "Class Adaptive
    Network Calibration", CVPR 2023 (their use for calibration; METHODS.md §3.1).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["PENALTIES", "PenaltyFn", "get_penalty", "phr", "p2", "p3", "relu"]

Scalar = torch.Tensor | float
PenaltyFn = Callable[[torch.Tensor, Scalar, Scalar], tuple[torch.Tensor, torch.Tensor]]


def phr(z: torch.Tensor, lam: Scalar, rho: Scalar) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Powell-Hestenes-Rockafellar penalty (the default of CALS and CRaC).

    .. math::
        P(z) = \frac{\max(0, \lambda + \rho z)^2 - \lambda^2}{2\rho}, \qquad
        P'(z) = \max(0, \lambda + \rho z)

    Args:
        z: constraint values, any shape.
        lam: multipliers ``λ >= 0``, broadcastable to ``z``.
        rho: penalty coefficients ``ρ > 0``, broadcastable to ``z``.

    Returns:
        ``(P, P')``, both shaped like the broadcast of the inputs.

    Example:
        >>> phr(torch.tensor([1.0]), 0.0, 2.0)
        (tensor([1.]), tensor([2.]))
    """
    t = torch.clamp_min(lam + rho * z, 0.0)
    return (t * t - lam * lam) / (2.0 * rho), t


def _rational_interior(
    z: torch.Tensor, lam: Scalar, rho: Scalar, *, cubic: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """P3 (``cubic=False``) or P2 (``cubic=True``) and its derivative: one body for both.

    The exterior is ``λz + λρz²``, plus ``ρ²z³/6`` for P2; the interior ``λz/(1−ρz)`` is
    evaluated at ``min(z, 0)``.
    """
    zp = torch.clamp_min(z, 0.0)
    if cubic:
        pos_v = lam * zp + lam * rho * zp * zp + rho * rho * zp * zp * zp / 6.0
        pos_g = lam + 2.0 * lam * rho * zp + rho * rho * zp * zp / 2.0
    else:
        pos_v = lam * zp + lam * rho * zp * zp
        pos_g = lam + 2.0 * lam * rho * zp
    zn = torch.clamp_max(z, 0.0)
    d = 1.0 - rho * zn
    neg_v, neg_g = lam * zn / d, lam / (d * d)
    pos = z >= 0
    return torch.where(pos, pos_v, neg_v), torch.where(pos, pos_g, neg_g)


def p2(z: torch.Tensor, lam: Scalar, rho: Scalar) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Cubic-exterior / rational-interior penalty P2.

    .. math::
        P(z) = \begin{cases} \lambda z + \lambda\rho z^2 + \rho^2 z^3/6 & z \ge 0 \\
        \lambda z / (1 - \rho z) & z < 0 \end{cases}

    Args:
        z: constraint values.
        lam: multipliers, broadcastable to ``z``.
        rho: penalty coefficients ``> 0``, broadcastable to ``z``.

    Returns:
        ``(P, P')``.

    Example:
        >>> p2(torch.tensor([1.0, -1.0]), 1.0, 1.0)
        (tensor([ 2.1667, -0.5000]), tensor([3.5000, 0.2500]))
    """
    return _rational_interior(z, lam, rho, cubic=True)


def p3(z: torch.Tensor, lam: Scalar, rho: Scalar) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Quadratic-exterior / rational-interior penalty P3: :func:`p2` without the cubic term.

    .. math::
        P(z) = \begin{cases} \lambda z + \lambda\rho z^2 & z \ge 0 \\
        \lambda z / (1 - \rho z) & z < 0 \end{cases}

    Arguments and result are those of :func:`p2`: ``(P, P')`` for constraint values ``z``,
    with multipliers ``lam`` and coefficients ``rho > 0`` broadcastable to ``z``.

    Example:
        >>> p3(torch.tensor([1.0, -1.0]), 1.0, 1.0)
        (tensor([ 2.0000, -0.5000]), tensor([3.0000, 0.2500]))
    """
    return _rational_interior(z, lam, rho, cubic=False)


def relu(z: torch.Tensor, lam: Scalar, rho: Scalar) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Linear hinge penalty (the fixed-weight NACL/MbLS term); ``ρ`` is unused.

    .. math::
        P(z) = \lambda \max(0, z), \qquad P'(z) = \lambda\,[z \ge 0]

    The research code asserts this name but never registers it (METHODS.md F4); it is
    registered here.

    Args:
        z: constraint values.
        lam: multipliers, broadcastable to ``z``.
        rho: ignored (kept for a uniform signature).

    Returns:
        ``(P, P')``.

    Example:
        >>> relu(torch.tensor([-1.0, 2.0]), 0.5, 1.0)
        (tensor([0., 1.]), tensor([0.0000, 0.5000]))
    """
    del rho
    active = (z >= 0).to(z.dtype)
    return lam * torch.clamp_min(z, 0.0), lam * active


PENALTIES: dict[str, PenaltyFn] = {"phr": phr, "p2": p2, "p3": p3, "relu": relu}


def get_penalty(name: str) -> PenaltyFn:
    """Penalty function by name.

    Args:
        name: one of ``"phr"``, ``"p2"``, ``"p3"``, ``"relu"``.

    Raises:
        ValueError: for an unknown name, listing the known ones.

    Example:
        >>> get_penalty("p4")
        Traceback (most recent call last):
        ...
        ValueError: unknown penalty 'p4'; known penalties: p2, p3, phr, relu
    """
    try:
        return PENALTIES[name]
    except (KeyError, TypeError):
        known = ", ".join(sorted(PENALTIES))
        raise ValueError(f"unknown penalty {name!r}; known penalties: {known}") from None
