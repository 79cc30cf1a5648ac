"""Augmented-Lagrangian machinery: constraints, penalties, update rules and multiplier state.

Four small parts (STYLE.md §1.6 and §1.7): a pure constraint (:mod:`.constraints`), a pure
penalty with its derivative (:mod:`.penalties`), pure update rules (:mod:`.rules`) and one
stateful module, :class:`ALMPenalty` (:mod:`.term`); slot layouts are objects
(:mod:`.layouts`). Named presets (CALS-ALM, CALS-HR, CRaC and
its ablations) are registered in :data:`calibrant.registry.LOSSES` with ``alm=True``
(:mod:`.presets`).
"""

from calibrant.alm.constraints import (
    MarginConstraint,
    NeighborConstraint,
    Violations,
    margin_violation,
    neighbor_violation,
)
from calibrant.alm.layouts import LAYOUTS, Layout, make_layout
from calibrant.alm.penalties import PENALTIES, get_penalty, p2, p3, phr, relu
from calibrant.alm.presets import (
    cals_alm,
    cals_hr,
    crac,
    crac_class,
    crac_global,
    crac_region,
)
from calibrant.alm.rules import ALMState, RuleConfig, Statistics, update
from calibrant.alm.term import ALMPenalty, alm_terms

__all__ = [
    "ALMPenalty",
    "ALMState",
    "LAYOUTS",
    "Layout",
    "MarginConstraint",
    "NeighborConstraint",
    "PENALTIES",
    "RuleConfig",
    "Statistics",
    "Violations",
    "alm_terms",
    "cals_alm",
    "cals_hr",
    "crac",
    "crac_class",
    "crac_global",
    "crac_region",
    "get_penalty",
    "make_layout",
    "margin_violation",
    "neighbor_violation",
    "p2",
    "p3",
    "phr",
    "relu",
    "update",
]
