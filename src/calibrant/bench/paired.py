r"""Claims decided on paired differences with bootstrap intervals, from the records alone.

Every method of a suite is tested on the same test items (volumes or samples) with the same
seeds, so a comparison is made on **paired** differences. A :class:`PairedClaim` names a
metric, the method it is about and the methods it is compared with; its verdict comes from
:mod:`calibrant.stats`:

1. For each seed, the metric of each method is recomputed on every bootstrap resample of the
   test items (the same resample for every method and seed): a per-volume metric is the
   mean of the resampled per-volume values the record keeps; a pooled metric (ECE, ACE, MCE,
   accuracy, mAP@y) is recomputed from the per-sample predictions stored beside the record
   (:mod:`calibrant.metrics.resampled`).
2. The difference (method − other, mean over seeds) gives a percentile interval per other
   method, and :func:`calibrant.stats.decide` a verdict against the claim's threshold.
3. The claim ``holds`` when it holds against every other method, ``fails`` when it fails against
   at least one, and is ``inconclusive`` otherwise.

Only seeds present for every method in the comparison are used (a row with fewer seeds is
never compared with a mean over more seeds).

Example:
    >>> claim = PairedClaim("CRaC has the best DSC", "crac", ("ce", "ls"), "dice", "above")
    >>> claim.side, claim.threshold
    ('above', 0.0)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from calibrant.bench.records import load_predictions
from calibrant.metrics.resampled import LOOPED_METRICS, RESAMPLED_METRICS, resampled_metric
from calibrant.stats import Interval, bootstrap_indices, decide, percentile_interval

__all__ = ["PairedClaim", "PairedVerdict", "item_statistic", "evaluate_claim"]

N_RESAMPLES = 2000
N_RESAMPLES_LOOPED = 200  # metrics recomputed one resample at a time (mAP)
LEVEL = 0.95


@dataclass(frozen=True)
class PairedClaim:
    """A claim "``method``'s ``metric`` minus each other's is ``side`` ``threshold``".

    Args:
        text: the claim as the paper states it.
        method: the method the claim is about.
        others: the methods it is compared with; an entry may also be a weighted mix
            ``(("asy", 0.5), ("bce", 0.5))`` ("half-way between ASY and BCE").
        metric: a test-metric key of the records (``dice``, ``ece_paper``, ``ece``, ``ace``).
        side: ``"below"`` (lower is claimed) or ``"above"``.
        threshold: the claim's margin (0 for "better than"; e.g. 0.005 for "within half a
            point", with the difference taken the other way round).
        source: where the claim comes from (``"paper"`` or ``"ours"``).
        tasks: the tasks it is checked on (``None``: every task of the profile).
    """

    text: str
    method: str
    others: tuple[str | tuple[tuple[str, float], ...], ...]
    metric: str
    side: str
    threshold: float = 0.0
    source: str = "paper"
    tasks: tuple[str, ...] | None = None


@dataclass(frozen=True)
class PairedVerdict:
    """The verdict of a claim on one task, with each comparison's interval."""

    verdict: str  # holds | fails | inconclusive | not yet run
    seeds: int
    comparisons: tuple[tuple[str, Interval, str], ...]  # (other, interval of the diff, verdict)
    missing: tuple[str, ...] = ()


# --------------------------------------------------------------------- per-item statistics


def item_statistic(record: Mapping[str, Any], metric: str, record_file: Path | None = None):
    """``(n_items, f, looped)``: ``f(idx)`` is the record's ``metric`` on each row of ``idx``.

    ``idx`` is ``(R, n_items)`` item indices (one resample per row); ``f`` returns ``(R,)``.
    Per-volume values (``record["items"]``) give the mean over the drawn volumes (volumes whose
    value is NaN, e.g. no foreground, are skipped as the papers' mean skips them); per-sample
    predictions (stored beside ``record_file``) give the pooled metric recomputed. ``looped``
    says the metric is recomputed one resample at a time (mAP).

    Raises:
        KeyError: when the record keeps no per-item data for ``metric``.
    """
    items = (record.get("items") or {}).get(metric)
    if items is not None:
        values = np.asarray(items, dtype=np.float64)
        return len(values), lambda idx: np.nanmean(values[idx], axis=1), False
    if record.get("predictions") and record_file is not None and metric in RESAMPLED_METRICS:
        predictions = load_predictions(record_file)
        if predictions is not None:
            n = len(next(iter(predictions.values())))
            return (
                n,
                lambda idx: resampled_metric(predictions, metric, idx),
                metric in LOOPED_METRICS,
            )
    raise KeyError(f"record keeps no per-item values of {metric!r}")


# ------------------------------------------------------------------------------ the verdicts


def evaluate_claim(
    claim: PairedClaim,
    runs: Mapping[tuple[str, int], tuple[Mapping[str, Any], Path | None]],
    *,
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
) -> PairedVerdict:
    """Decide ``claim`` on one task from its records ``runs[(method, seed)] = (record, file)``.

    Example:
        >>> recs = {("a", 1): ({"items": {"m": [0.1, 0.2, 0.1, 0.2]}}, None),
        ...         ("b", 1): ({"items": {"m": [0.3, 0.4, 0.3, 0.4]}}, None)}
        >>> v = evaluate_claim(PairedClaim("a lower", "a", ("b",), "m", "below"), recs,
        ...                    n_resamples=200)
        >>> v.verdict, round(v.comparisons[0][1].estimate, 2)
        ('holds', -0.2)
    """
    names = (claim.method, *(n for o in claim.others for n, _ in _mix(o)))
    seeds = sorted(set.intersection(*({s for (m, s) in runs if m == name} for name in names)))
    missing = tuple(m for m in names if not any(k[0] == m for k in runs))
    if missing or not seeds:
        return PairedVerdict("not yet run", 0, (), missing or names)
    stats, n_items, looped = {}, None, False
    try:
        for m in names:
            for s in seeds:
                record, path = runs[(m, s)]
                n, f, slow = item_statistic(record, claim.metric, path)
                if n_items not in (None, n):
                    raise ValueError(f"{m} seed {s} has {n} test items, others {n_items}")
                n_items, looped = n, looped or slow
                stats[(m, s)] = f
    except KeyError:
        return PairedVerdict("not yet run", len(seeds), (), ("per-item data",))
    resamples = min(n_resamples, N_RESAMPLES_LOOPED) if looped else n_resamples
    idx = bootstrap_indices(n_items, resamples, seed)
    everything = np.arange(n_items)[None, :]
    observed = {k: float(f(everything)[0]) for k, f in stats.items()}
    resampled = {k: np.asarray(f(idx), dtype=np.float64) for k, f in stats.items()}
    comparisons = []

    def value(table, other, s):
        return sum(w * table[(name, s)] for name, w in _mix(other))

    for other in claim.others:
        diff = np.mean(
            [resampled[(claim.method, s)] - value(resampled, other, s) for s in seeds], 0
        )
        point = float(
            np.mean([observed[(claim.method, s)] - value(observed, other, s) for s in seeds])
        )
        low, high = percentile_interval(diff, LEVEL)
        interval = Interval(point, low, high, LEVEL, resamples, n_items)
        comparisons.append((other, interval, decide(interval, claim.side, claim.threshold)))
    verdicts = [v for _, _, v in comparisons]
    if all(v == "holds" for v in verdicts):
        overall = "holds"
    elif any(v == "fails" for v in verdicts):
        overall = "fails"
    else:
        overall = "inconclusive"
    return PairedVerdict(overall, len(seeds), tuple(comparisons))


def _mix(other) -> tuple[tuple[str, float], ...]:
    """``"ce"`` -> ``(("ce", 1.0),)``; a weighted mix is returned as it is."""
    return ((other, 1.0),) if isinstance(other, str) else tuple(other)


def _label(other, labels: Mapping[str, str]) -> str:
    return " + ".join(
        labels.get(n, n) if w == 1.0 else f"{w:g}·{labels.get(n, n)}" for n, w in _mix(other)
    )


def claims_lines(
    claims: Sequence[PairedClaim],
    tasks: Sequence[str],
    runs_by_task: Mapping[str, Mapping[tuple[str, int], tuple[Mapping[str, Any], Path | None]]],
    labels: Mapping[str, str],
) -> list[str]:
    """Markdown: one row per (claim, task) and one sub-row per comparison with its interval."""
    lines = [
        "Each difference is the claim's method minus the other, mean over the seeds both have "
        f"(paired by seed and test item), with its {LEVEL:.0%} bootstrap interval over test "
        f"items ({N_RESAMPLES} resamples; {N_RESAMPLES_LOOPED} for mAP, recomputed one resample "
        "at a time). `holds` when every comparison's interval is on the "
        "claimed side of the threshold, `fails` when one is wholly on the other side, "
        "`inconclusive` otherwise.",
        "",
        "| claim | task | verdict | seeds | comparison: difference [95 % interval] → verdict |",
        "|---|---|---|---|---|",
    ]
    for claim in claims:
        for task in claim.tasks or tasks:
            if task not in tasks:
                continue
            v = evaluate_claim(claim, runs_by_task.get(task, {}))
            mark = {"holds": "holds", "fails": "**fails**"}.get(v.verdict, v.verdict)
            detail = "; ".join(
                f"{labels.get(claim.method, claim.method)} − ({_label(o, labels)}): {iv} → {d}"
                for o, iv, d in v.comparisons
            ) or ("missing: " + ", ".join(v.missing))
            rule = f"{claim.metric}, {claim.side} {claim.threshold:+g}"
            lines.append(f"| {claim.text} ({rule}) | {task} | {mark} | {v.seeds} | {detail} |")
    return [*lines, ""]
