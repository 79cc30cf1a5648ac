"""Builders for the papers' claims, tested on the mean-over-seeds table of each task.

Every builder returns a ``check(table, task) -> Verdict`` for :class:`~calibrant.bench.suite.Claim`.
A check answers ``holds=None`` when a result it needs is missing, so a partial benchmark never
reports a claim as tested.

Example:
    >>> from calibrant.bench.tables import Table
    >>> table = Table({("t", "ce"): {"ece": [0.10, 0.12]}, ("t", "crac"): {"ece": [0.05]}})
    >>> lowest("crac", ["ece"])(table, "t").holds
    True
    >>> beats_baseline("ce", "ece")(table, "t")
    Verdict(holds=True, detail='crac 0.0500 < ce 0.1100')
"""

from __future__ import annotations

from collections.abc import Sequence

from calibrant.bench.suite import Verdict

__all__ = ["beats", "beats_baseline", "lowest", "not_worse", "repairs", "within_best"]


def _means(table, task: str, key: str, methods: Sequence[str] | None = None) -> dict[str, float]:
    names = methods if methods is not None else table.methods(task)
    return {m: table.mean(task, m, key) for m in names}


def _missing(values: dict[str, float]) -> list[str]:
    return [m for m, v in values.items() if v is None]


def lowest(method: str, keys: Sequence[str], among: Sequence[str] | None = None):
    """``method`` has the lowest mean of every metric in ``keys`` (among ``among`` or all)."""

    def check(table, task: str) -> Verdict:
        parts, holds = [], True
        for key in keys:
            values = _means(table, task, key, among)
            if method not in values:
                values[method] = table.mean(task, method, key)
            if _missing(values):
                return Verdict(None, f"missing {key} of {', '.join(_missing(values))}")
            best = min(values, key=values.get)
            holds &= values[method] <= values[best]
            parts.append(f"{key}: lowest {best} {values[best]:.4f}, {method} {values[method]:.4f}")
        return Verdict(holds, "; ".join(parts))

    return check


def within_best(method: str, key: str, tolerance: float, among: Sequence[str] | None = None):
    """``method``'s mean of ``key`` (higher is better) is within ``tolerance`` of the best."""

    def check(table, task: str) -> Verdict:
        values = _means(table, task, key, among)
        values.setdefault(method, table.mean(task, method, key))
        if _missing(values):
            return Verdict(None, f"missing {key} of {', '.join(_missing(values))}")
        best = max(values, key=values.get)
        gap = values[best] - values[method]
        return Verdict(
            gap <= tolerance,
            f"{key}: best {best} {values[best]:.4f}, {method} {values[method]:.4f}",
        )

    return check


def beats(method: str, others: Sequence[str], key: str):
    """``method``'s mean of ``key`` (lower is better) is below each of ``others``'."""

    def check(table, task: str) -> Verdict:
        values = _means(table, task, key, [method, *others])
        if _missing(values):
            return Verdict(None, f"missing {key} of {', '.join(_missing(values))}")
        worse = [o for o in others if values[method] >= values[o]]
        detail = ", ".join(f"{m} {v:.4f}" for m, v in values.items())
        return Verdict(not worse, f"{key}: {detail}")

    return check


def beats_baseline(baseline: str, key: str, exclude: Sequence[str] = ()):
    """Every method other than ``baseline`` (and ``exclude``) has a lower mean ``key``."""

    def check(table, task: str) -> Verdict:
        values = _means(table, task, key)
        if baseline not in values or values[baseline] is None:
            return Verdict(None, f"missing {key} of {baseline}")
        others = {m: v for m, v in values.items() if m not in (baseline, *exclude)}
        if not others or _missing(others):
            return Verdict(None, f"missing {key} of {', '.join(_missing(others)) or 'all'}")
        failing = [m for m, v in others.items() if v >= values[baseline]]
        if failing:
            detail = ", ".join(f"{m} {others[m]:.4f}" for m in failing)
            return Verdict(False, f"not below {baseline} {values[baseline]:.4f}: {detail}")
        detail = ", ".join(f"{m} {v:.4f}" for m, v in others.items())
        return Verdict(True, f"{detail} < {baseline} {values[baseline]:.4f}")

    return check


def not_worse(method: str, reference: str, key: str, tolerance: float = 0.0):
    """``method``'s mean ``key`` (higher is better) ≥ ``reference``'s − ``tolerance``."""

    def check(table, task: str) -> Verdict:
        values = _means(table, task, key, [method, reference])
        if _missing(values):
            return Verdict(None, f"missing {key} of {', '.join(_missing(values))}")
        return Verdict(
            values[method] >= values[reference] - tolerance,
            f"{key}: {method} {values[method]:.4f}, {reference} {values[reference]:.4f}",
        )

    return check


def repairs(corrected: str, base: str, reference: str, key: str, fraction: float = 0.5):
    """``base`` is worse than ``reference`` on ``key`` (lower is better); ``corrected`` repairs it.

    Holds when ``corrected`` removes at least ``fraction`` of the gap.
    """

    def check(table, task: str) -> Verdict:
        values = _means(table, task, key, [corrected, base, reference])
        if _missing(values):
            return Verdict(None, f"missing {key} of {', '.join(_missing(values))}")
        gap = values[base] - values[reference]
        detail = ", ".join(f"{m} {v:.4f}" for m, v in values.items())
        if gap <= 0:
            return Verdict(False, f"{key}: {base} is not worse than {reference} ({detail})")
        removed = (values[base] - values[corrected]) / gap
        return Verdict(removed >= fraction, f"{key}: {detail}; gap removed {removed:.0%}")

    return check
