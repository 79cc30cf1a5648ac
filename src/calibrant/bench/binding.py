r"""Does a method's constraint bind? The ALM multipliers and violations of its runs, from records.

A constraint that never binds leaves its method equal to the base loss: CALS's margin
constraint with logit gaps below the margin keeps every λ at its floor ``lambda_min`` and the
method re-runs CE. :func:`binding_section` reads each run's last validation pass of every
ALM term (``history[-1]["alm"]``: λ and ρ per slot, the mean validation violation per slot)
and writes one row per seed:

- λ mean and max over slots, and how many slots sit at the floor (``λ ≤ 10·lambda_min``);
- the largest ρ;
- the mean and the largest slot violation (the constraint's mean over validation items; a
  hinge constraint can have a negative mean and still bind on some items, so the floor count,
  not the sign, says whether it binds);
- the penalty's share of the last epoch's training loss (``train["alm"] / train["loss"]``): how
  much the constraint weighs against the base loss;
- whether any slot's λ is above the floor (``no``: the constraint never bound on validation).

``lambda_min`` comes from the method's registered loss built with the record's config, so the
page needs no extra field in the record; what a record does not hold is shown as ``–``.

Example:
    >>> last = {"train": {"loss": 0.5, "alm": 1e-7}, "alm": {"alm0": {
    ...     "lambda": [1e-6, 1e-6], "rho": [1.0, 1.0], "violation": [-0.5, -0.2]}}}
    >>> run = {"seed": 1, "config": {"loss": {"name": "cals_alm"}}, "history": [last]}
    >>> print(binding_rows([run])[0])
    | 1 | 1e-06 | 1e-06 | 2 of 2 | 1 | -0.35 | -0.2 | 2e-05 % | no |
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from calibrant.alm import alm_terms
from calibrant.registry import LOSSES

__all__ = ["binding_rows", "binding_section"]

_HEADER = [
    "| seed | λ mean | λ max | slots at the λ floor | ρ max | violation mean | violation max "
    "| penalty share of the training loss | any λ above the floor |",
    "|---|---|---|---|---|---|---|---|---|",
]


def _floor(loss_cfg: Mapping[str, Any], num_classes: int) -> float:
    """``lambda_min`` of the first ALM term of the registered loss ``loss_cfg`` (NaN: none)."""
    if not LOSSES.get(loss_cfg["name"]).meta.get("alm"):
        return math.nan  # not a registered ALM objective
    kw = {k: v for k, v in loss_cfg.items() if k != "name"}
    terms = alm_terms(LOSSES.build(loss_cfg["name"], num_classes=num_classes, **kw))
    return float(terms[0].cfg.lambda_min)


def _cell(value: float, fmt: str) -> str:
    return "–" if math.isnan(value) else format(value, fmt)


def binding_rows(runs: Sequence[Mapping[str, Any]]) -> list[str]:
    """One Markdown row per run (sorted by seed): its last logged multipliers and violations."""
    rows = []
    for run in sorted(runs, key=lambda r: r["seed"]):
        logged = [h["alm"] for h in run.get("history", []) if h.get("alm")]
        if not logged:
            continue
        term = next(iter(logged[-1].values()))  # the first ALM term
        train = run["history"][-1].get("train", {})
        share = train["alm"] / train["loss"] if train.get("loss") and "alm" in train else math.nan
        lam = np.asarray(term["lambda"], dtype=float)
        rho = np.asarray(term["rho"], dtype=float)
        viol = np.asarray(term.get("violation", [math.nan]), dtype=float)
        floor = _floor(run["config"]["loss"], lam.shape[-1])
        at_floor = int((lam <= 10 * floor).sum())
        above = "–" if math.isnan(floor) else "no" if at_floor == lam.size else "yes"
        floored = "–" if math.isnan(floor) else f"{at_floor} of {lam.size}"
        rows.append(
            f"| {run['seed']} | {lam.mean():.2g} | {lam.max():.2g} | {floored} "
            f"| {rho.max():.3g} | {_cell(viol.mean(), '.3g')} | {_cell(viol.max(), '.3g')} "
            f"| {_cell(100 * share, '.2g')} % | {above} |"
        )
    return rows


def binding_section(records: Sequence[Mapping[str, Any]], task: str, labels: Mapping) -> list[str]:
    """Per ALM method of ``task``, the table of :func:`binding_rows` (nothing without ALM runs)."""
    by_method: dict[str, list] = {}
    for r in records:
        if r["task"] == task and any(h.get("alm") for h in r.get("history", [])):
            by_method.setdefault(r["method"], []).append(r)
    if not by_method:
        return []
    lines = [
        "Constraints at the last validation pass (λ floor = 10 × `lambda_min`). A method whose "
        "λ all sit at the floor, or whose penalty is a negligible share of the training loss, "
        "trains as its base loss:",
        "",
    ]
    for method in sorted(by_method):
        lines += [f"*{labels.get(method, method)}*", "", *_HEADER]
        lines += [*binding_rows(by_method[method]), ""]
    return lines
