"""The ALM objectives with the published defaults (METHODS.md §3.3 to §3.5, §8, B7, F1).

They register in :data:`calibrant.registry.LOSSES`, the one registry of everything a config can
name as ``loss``, with the metadata ``alm=True`` (they need ``num_classes``; the training engine
observes and steps their multipliers).

Every preset returns the full training criterion ``WeightedSum({"ce": CE, "alm": ALMPenalty})``
(or only the :class:`~calibrant.alm.term.ALMPenalty` with ``with_ce=False``); the engine finds the
term with :func:`calibrant.alm.term.alm_terms` to call ``observe``/``step``. Keyword overrides go
to :class:`~calibrant.alm.term.ALMPenalty` (and the constraint arguments to the constraint).

============  =============================================================================
preset        defaults
============  =============================================================================
cals_alm      margin 10 (README; config 20), normalize, class slots, PHR, λ ∈ [1e-6, 1e6],
              λ₀ = 1e-6, ρ₀ = 1, ρ_max = 10, ρ every 10 epochs, γ = 1.2, μ = 0.9
cals_hr       margin 10 unnormalised, class slots, ReLU, λ₀ = 0.1, heuristic rule γ = μ = 1.1
crac          3×3 neighbourhood, inner target scale 5, (region, class) slots, PHR,
              λ₀ = 1e-6, ρ₀ = 0.1 (README), ρ_max = 10, ρ every 10 epochs, γ = 1.2, μ = 0.9
crac_global   ``crac`` with one multiplier
crac_class    ``crac`` with one multiplier per class
crac_region   ``crac`` with one multiplier per region (inner, boundary)
============  =============================================================================

NACL (one fixed λ on the same neighbourhood constraint, no updates) is the loss ``nacl`` of
:mod:`calibrant.losses.spatial`; as an ``ALMPenalty`` it would be ``layout="global"``,
``rule="fixed"``, ``penalty="relu"``, ``lambda_init=0.1`` (the same value, tested).

Example:
    >>> from calibrant.registry import LOSSES
    >>> loss = LOSSES.build("crac", num_classes=4)
    >>> alm = loss.parts["alm"]
    >>> tuple(alm.lam.shape), alm.rho.unique().item(), alm.constraint.inner_target_scale
    ((2, 4), 0.1, 5.0)
"""

from __future__ import annotations

from typing import Any

from torch import nn

from calibrant.alm.constraints import MarginConstraint, NeighborConstraint
from calibrant.alm.term import ALMPenalty
from calibrant.losses.classification import CrossEntropyLoss
from calibrant.losses.combine import WeightedSum
from calibrant.registry import LOSSES

__all__ = ["cals_alm", "cals_hr", "crac", "crac_global", "crac_class", "crac_region"]

#: Registry metadata of every ALM objective: a multi-class criterion (``CE + penalty``) whose
#: value is a batch mean, holding multipliers that ``observe``/``step`` update (``alm=True``).
_ALM_META = {"task": "multiclass", "granularity": "batch", "alm": True}

_ALM = dict(rule="alm", penalty="phr", lambda_min=1e-6, lambda_max=1e6, lambda_step=1)
_ALM.update(rho_max=10.0, rho_step=10, gamma=1.2, mu=0.9)


def _split(kwargs: dict[str, Any], constraint_keys: tuple[str, ...]) -> dict[str, Any]:
    return {k: kwargs.pop(k) for k in constraint_keys if k in kwargs}


def _finish(term: ALMPenalty, with_ce: bool) -> nn.Module:
    if not with_ce:
        return term
    return WeightedSum({"ce": CrossEntropyLoss(ignore_index=term.ignore_index), "alm": term})


def _margin_preset(num_classes, with_ce, defaults, constraint_defaults, overrides):
    kw = {**defaults, **overrides}
    ckw = {**constraint_defaults, **_split(kw, ("margin", "normalize"))}
    return _finish(ALMPenalty(num_classes, MarginConstraint(**ckw), **kw), with_ce)


def _neighbor_preset(num_classes, with_ce, defaults, constraint_defaults, overrides):
    kw = {**defaults, **overrides}
    keys = ("kernel_size", "inner_target_scale", "padding")
    ckw = {**constraint_defaults, **_split(kw, keys)}
    return _finish(ALMPenalty(num_classes, NeighborConstraint(**ckw), **kw), with_ce)


@LOSSES.register("cals_alm", paper="CALS", label="CALS-ALM", **_ALM_META)
def cals_alm(num_classes: int, *, with_ce: bool = True, **overrides: Any) -> nn.Module:
    """CALS-ALM: per-class multipliers on the normalised logit-margin constraint.

    Args:
        num_classes: number of classes.
        with_ce: return ``CE + penalty`` (True) or the penalty alone.
        **overrides: ``margin``, ``normalize`` or any :class:`ALMPenalty` argument.
    """
    defaults = {**_ALM, "layout": "class", "rho_init": 1.0}
    return _margin_preset(
        num_classes, with_ce, defaults, {"margin": 10.0, "normalize": True}, overrides
    )


@LOSSES.register("cals_hr", paper="CALS", label="CALS-HR", **_ALM_META)
def cals_hr(num_classes: int, *, with_ce: bool = True, **overrides: Any) -> nn.Module:
    """CALS-HR: per-class λ on the unnormalised margin hinge, heuristic ×γ / ÷γ rule.

    Args:
        num_classes: number of classes.
        with_ce: return ``CE + penalty`` (True) or the penalty alone.
        **overrides: ``margin``, ``normalize`` or any :class:`ALMPenalty` argument.
    """
    defaults = dict(
        layout="class",
        rule="heuristic",
        penalty="relu",
        lambda_init=0.1,
        lambda_min=1e-6,
        lambda_max=1e6,
        lambda_step=1,
        rho_step=0,
        gamma=1.1,
        mu=1.1,
    )
    return _margin_preset(
        num_classes, with_ce, defaults, {"margin": 10.0, "normalize": False}, overrides
    )


def _crac(layout: str, num_classes: int, with_ce: bool, overrides: dict[str, Any]) -> nn.Module:
    defaults = {**_ALM, "layout": layout, "rho_init": 0.1}
    constraint = {"kernel_size": 3, "inner_target_scale": 5.0, "padding": "label0"}
    return _neighbor_preset(num_classes, with_ce, defaults, constraint, overrides)


@LOSSES.register("crac", paper="CRaC", label="CRaC", **_ALM_META, spatial=True)
def crac(num_classes: int, *, with_ce: bool = True, **overrides: Any) -> nn.Module:
    """CRaC: one multiplier per (region, class) on the neighbourhood constraint.

    Args:
        num_classes: number of classes.
        with_ce: return ``CE + penalty`` (True) or the penalty alone.
        **overrides: ``kernel_size``, ``inner_target_scale``, ``padding`` or any
            :class:`ALMPenalty` argument.
    """
    return _crac("region_class", num_classes, with_ce, overrides)


@LOSSES.register(
    "crac_global", paper="CRaC", label="CRaC (global λ)", ablation=True, **_ALM_META, spatial=True
)
def crac_global(num_classes: int, *, with_ce: bool = True, **overrides: Any) -> nn.Module:
    """CRaC ablation with one global multiplier (NACL + ALM); arguments as :func:`crac`."""
    return _crac("global", num_classes, with_ce, overrides)


@LOSSES.register(
    "crac_class", paper="CRaC", label="CRaC (class λ)", ablation=True, **_ALM_META, spatial=True
)
def crac_class(num_classes: int, *, with_ce: bool = True, **overrides: Any) -> nn.Module:
    """CRaC ablation with one multiplier per class; arguments as :func:`crac`."""
    return _crac("class", num_classes, with_ce, overrides)


@LOSSES.register(
    "crac_region", paper="CRaC", label="CRaC (region λ)", ablation=True, **_ALM_META, spatial=True
)
def crac_region(num_classes: int, *, with_ce: bool = True, **overrides: Any) -> nn.Module:
    """CRaC ablation with one multiplier per region (inner, boundary); arguments as :func:`crac`."""
    return _crac("region", num_classes, with_ce, overrides)
