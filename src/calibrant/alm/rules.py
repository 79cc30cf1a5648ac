r"""Pure update rules of the multipliers: ``(state, validation statistics) -> state``.

One *outer iteration* is one epoch: the model trains with λ and ρ frozen, then the validation set
is observed and the rules below run once (METHODS.md §3.2). Everything here is a pure function of
tensors, so it is unit-testable without a training loop; :class:`calibrant.alm.term.ALMPenalty`
holds the state in buffers and calls :func:`update`.

**ALM rule** (CALS-ALM, CRaC). With ``g = clamp(P'(h; λ, ρ), λ_min, λ_max)`` per entry, every
``lambda_step`` epochs

.. math::
    \lambda_s \leftarrow \operatorname{clamp}\Big(\frac{1}{D_s}\sum_{e \in s} g_e
    + \frac{D_s - C_s}{D_s}\operatorname{clamp}(P'(0)), \lambda_{\min}, \lambda_{\max}\Big)

where ``C_s`` counts the valid entries of slot ``s`` and ``D_s = N · columns_per_slot`` counts
all valid pixels' columns: the research code averages over *all* validation pixels, so entries of
the other region contribute ``P'(0) = λ`` (METHODS.md B5). With ``per_region_mean=True`` the mean
runs over the slot's own entries (``D_s = C_s``). With PHR and ``h >= 0`` this is the closed form
``λ + ρ Σ_{e∈s} h_e / D_s``. Then, every ``rho_step`` epochs (and only once a previous epoch
exists),

.. math::
    \rho_s \leftarrow \operatorname{clamp}\big(\gamma\rho_s\ \text{if}\
    \bar h_s > \mu \max(\bar h_s^{prev}, 0)\ \text{else}\ \rho_s,\ \rho_{init}, \rho_{\max}\big),

with ``h̄_s = Σ_{e∈s} h_e / D_s``; ``h̄^{prev}`` is refreshed every epoch, so the comparison is
with the previous epoch, as in the code.

**Heuristic rule** (CALS-HR, METHODS.md §3.5). With the validation score
``S_s = Σ_{e∈s} P(h_e) / D_s`` (it includes the current λ), every ``lambda_step`` epochs and
when the previous score is not all zero: ``λ ← γλ`` where ``S > μ S^{prev}``, *then*
``λ ← λ/γ`` where ``S < S^{prev}/μ``, then clamp. The two steps run in sequence, as in the
research code: with ``μ > 1`` (the CALS setting, 1.1) at most one fires; with ``μ < 1`` both fire
in the band ``μ S^{prev} < S < S^{prev}/μ`` and λ is left as it was (``(γλ)/γ``).

**Fixed rule** (NACL): nothing changes.

Example:
    >>> import torch
    >>> from calibrant.alm.rules import ALMState, RuleConfig, Statistics, update
    >>> cfg = RuleConfig(rho_step=1)
    >>> state = ALMState.init((2,), lambda_init=1e-6, rho_init=1.0)
    >>> stats = Statistics(grad_sum=torch.tensor([4.0, 0.0], dtype=torch.float64),
    ...                    viol_sum=torch.tensor([4.0, 0.0], dtype=torch.float64),
    ...                    value_sum=torch.zeros(2, dtype=torch.float64),
    ...                    count=torch.tensor([2.0, 2.0], dtype=torch.float64),
    ...                    rows=torch.tensor([2.0, 2.0], dtype=torch.float64))
    >>> new = update(state, stats, cfg)
    >>> new.lam.tolist(), new.prev.tolist(), int(new.epoch)
    ([2.0, 1e-06], [2.0, 0.0], 1)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch

from calibrant._checks import check_choice, check_positive
from calibrant.alm.penalties import get_penalty

__all__ = [
    "RULES",
    "RuleConfig",
    "ALMState",
    "Statistics",
    "is_due",
    "lambda_update",
    "mean_violation",
    "rho_update",
    "heuristic_update",
    "update",
]


@dataclass(frozen=True)
class RuleConfig:
    """Hyper-parameters of the update rules (validated on construction).

    Args:
        rule: ``"alm"`` (CALS/CRaC), ``"heuristic"`` (CALS-HR) or ``"fixed"`` (NACL).
        penalty: penalty name (:mod:`calibrant.alm.penalties`).
        lambda_min: lower clamp of λ (1e-6).
        lambda_max: upper clamp of λ (1e6).
        lambda_step: update λ every this many epochs (1).
        rho_init: initial ρ, also its lower clamp (CRaC runs 0.1, CALS 1).
        rho_max: upper clamp of ρ (10).
        rho_step: test ρ growth every this many epochs; 0 disables it (10).
        gamma: growth factor γ of ρ (ALM, 1.2) or of λ (heuristic, 1.1).
        mu: tolerance μ (the code's ``tao``): 0.9 for the ALM ρ rule, 1.1 for the heuristic rule.
        per_region_mean: average ``P'`` over the slot's own entries instead of over all
            validation pixels (METHODS.md B5 option).

    Raises:
        ValueError: on an unknown rule or penalty, ``lambda_min > lambda_max``, a non-positive
            ``rho_init``, ``rho_max < rho_init``, non-positive ``gamma``/``mu`` or negative steps.
    """

    rule: str = "alm"
    penalty: str = "phr"
    lambda_min: float = 1e-6
    lambda_max: float = 1e6
    lambda_step: int = 1
    rho_init: float = 1.0
    rho_max: float = 10.0
    rho_step: int = 10
    gamma: float = 1.2
    mu: float = 0.9
    per_region_mean: bool = False

    def __post_init__(self) -> None:
        check_choice("rule", self.rule, RULES)
        get_penalty(self.penalty)
        check_positive("lambda_min", self.lambda_min, strict=False)
        if self.lambda_min > self.lambda_max:
            raise ValueError(
                f"lambda_min ({self.lambda_min}) must not exceed lambda_max ({self.lambda_max})"
            )
        check_positive("rho_init", self.rho_init)
        if self.rho_max < self.rho_init:
            raise ValueError(f"rho_max ({self.rho_max}) must be >= rho_init ({self.rho_init})")
        check_positive("gamma", self.gamma)
        check_positive("mu", self.mu)
        for name in ("lambda_step", "rho_step"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")


class ALMState(NamedTuple):
    """Multiplier state (all float64 except ``epoch``, int64 scalar).

    Attributes:
        lam: multipliers λ, slot-shaped.
        rho: penalty coefficients ρ, slot-shaped.
        prev: previous epoch's mean violation (ALM) or score (heuristic).
        has_prev: bool scalar, whether ``prev`` was set.
        epoch: number of completed steps.
    """

    lam: torch.Tensor
    rho: torch.Tensor
    prev: torch.Tensor
    has_prev: torch.Tensor
    epoch: torch.Tensor

    @classmethod
    def init(cls, shape: tuple[int, ...], *, lambda_init: float, rho_init: float) -> ALMState:
        """Fresh state: ``λ = lambda_init``, ``ρ = rho_init``, no previous violation."""
        f64 = torch.float64
        return cls(
            torch.full(shape, float(lambda_init), dtype=f64),
            torch.full(shape, float(rho_init), dtype=f64),
            torch.zeros(shape, dtype=f64),
            torch.tensor(False),
            torch.tensor(0, dtype=torch.int64),
        )


class Statistics(NamedTuple):
    """Validation sums per slot (float64, slot-shaped), after the all-reduce.

    Attributes:
        grad_sum: ``Σ clamp(P'(h), λ_min, λ_max)`` over the slot's valid entries.
        viol_sum: ``Σ h`` over the slot's valid entries.
        value_sum: ``Σ P(h)`` over the slot's valid entries.
        count: number of the slot's valid entries ``C_s``.
        rows: ``D_s``, valid pixels times the slot's columns per pixel.
    """

    grad_sum: torch.Tensor
    viol_sum: torch.Tensor
    value_sum: torch.Tensor
    count: torch.Tensor
    rows: torch.Tensor


def is_due(epoch: int, every: int) -> bool:
    """Whether a rule scheduled ``every`` epochs fires after epoch ``epoch`` (0-based)."""
    return every > 0 and (epoch + 1) % every == 0


def _mean(total: torch.Tensor, n: torch.Tensor, fallback: torch.Tensor) -> torch.Tensor:
    return torch.where(n > 0, total / n.clamp_min(1), fallback)


def lambda_update(
    lam: torch.Tensor, rho: torch.Tensor, stats: Statistics, cfg: RuleConfig
) -> torch.Tensor:
    """ALM multiplier update: clamped mean of the clamped ``P'`` (see the module docstring).

    Slots without any validation entry keep their λ.

    Args:
        lam: current λ (float64).
        rho: current ρ (float64).
        stats: validation sums.
        cfg: rule configuration.

    Returns:
        The new λ.
    """
    if cfg.per_region_mean:
        mean = _mean(stats.grad_sum, stats.count, lam)
    else:
        _, g0 = get_penalty(cfg.penalty)(torch.zeros_like(lam), lam, rho)
        fill = g0.clamp(cfg.lambda_min, cfg.lambda_max)
        mean = _mean(stats.grad_sum + (stats.rows - stats.count) * fill, stats.rows, lam)
    return mean.clamp(cfg.lambda_min, cfg.lambda_max)


def mean_violation(stats: Statistics, cfg: RuleConfig) -> torch.Tensor:
    """Mean signed violation per slot: ``Σh / D_s`` (or ``/ C_s`` with ``per_region_mean``)."""
    n = stats.count if cfg.per_region_mean else stats.rows
    return _mean(stats.viol_sum, n, torch.zeros_like(stats.viol_sum))


def rho_update(
    rho: torch.Tensor, curr: torch.Tensor, prev: torch.Tensor, cfg: RuleConfig
) -> torch.Tensor:
    """Grow ρ by γ where the violation did not fall below ``μ · max(prev, 0)``; clamp."""
    grow = curr > cfg.mu * prev.clamp_min(0.0)
    return torch.where(grow, rho * cfg.gamma, rho).clamp(cfg.rho_init, cfg.rho_max)


def heuristic_update(
    lam: torch.Tensor, score: torch.Tensor, prev: torch.Tensor, cfg: RuleConfig
) -> torch.Tensor:
    """CALS-HR: ``λ·γ`` where ``score > μ·prev``, then ``λ/γ`` where ``score < prev/μ``; clamp.

    The two tests both read the unchanged ``score`` and ``prev`` and are applied one after the
    other (the research code's ``set_lambd``), so where both hold (possible only for ``μ < 1``)
    λ goes up and back down.
    """
    lam = torch.where(score > cfg.mu * prev, lam * cfg.gamma, lam)
    lam = torch.where(score < prev / cfg.mu, lam / cfg.gamma, lam)
    return lam.clamp(cfg.lambda_min, cfg.lambda_max)


def update(state: ALMState, stats: Statistics, cfg: RuleConfig) -> ALMState:
    """One dual step after a validation pass (the whole schedule of METHODS.md §3.2).

    Order as in the research code: λ first (with the old ρ), then ρ; ``prev`` is refreshed
    every epoch; ``epoch`` counts the steps.

    Args:
        state: current state.
        stats: validation sums of this epoch.
        cfg: rule configuration.

    Returns:
        The new state.
    """
    return _RULES[cfg.rule](state, stats, cfg)


def _fixed_step(state: ALMState, stats: Statistics, cfg: RuleConfig) -> ALMState:
    """NACL: λ and ρ never change; only the epoch counts."""
    return state._replace(epoch=state.epoch + 1)


def _heuristic_step(state: ALMState, stats: Statistics, cfg: RuleConfig) -> ALMState:
    """CALS-HR: λ ×γ or ÷γ from this epoch's mean penalty against the last one."""
    lam, prev = state.lam, state.prev
    n = stats.count if cfg.per_region_mean else stats.rows
    score = _mean(stats.value_sum, n, torch.zeros_like(stats.value_sum))
    if is_due(int(state.epoch), cfg.lambda_step) and bool(prev.ne(0).any()):
        lam = heuristic_update(lam, score, prev, cfg)
    return ALMState(lam, state.rho, score, torch.tensor(True), state.epoch + 1)


def _alm_step(state: ALMState, stats: Statistics, cfg: RuleConfig) -> ALMState:
    """CALS-ALM and CRaC: the λ update with the old ρ, then the ρ growth test."""
    epoch, lam, rho = int(state.epoch), state.lam, state.rho
    curr = mean_violation(stats, cfg)
    if is_due(epoch, cfg.lambda_step):
        lam = lambda_update(lam, rho, stats, cfg)
    if cfg.rho_step > 0 and is_due(epoch, cfg.rho_step) and bool(state.has_prev):
        rho = rho_update(rho, curr, state.prev, cfg)
    return ALMState(lam, rho, curr, torch.tensor(True), state.epoch + 1)


_RULES: dict[str, Callable[[ALMState, Statistics, RuleConfig], ALMState]] = {
    "alm": _alm_step,
    "heuristic": _heuristic_step,
    "fixed": _fixed_step,
}
#: The rule names a configuration may give.
RULES = tuple(_RULES)
