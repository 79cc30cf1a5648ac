"""Turn a suite's per-run JSON files into its results page (never typed by hand).

:func:`load_records` reads ``<results>/<suite>/<profile>/<task>/<method>/seed<k>.json``;
:class:`Table` holds the per-seed values of every metric; :func:`render_suite` writes
``<results>/<suite>.md`` (``<suite>_<profile>.md`` for other profiles than ``cpu``) with, per
task, mean ± std over seeds, whether the ALM methods' constraints bind, the papers' numbers and
orderings where the dataset matches, the claims' verdicts, reliability diagrams and multiplier
trajectories, the hand-written investigation notes of ``<results>/<suite>/<profile>/notes.md``
when present, and the commands and commits that produced the runs.

Example:
    >>> table = Table({("acdc", "ce"): {"ece": [0.10, 0.12]}, ("acdc", "crac"): {"ece": [0.05]}})
    >>> round(table.mean("acdc", "ce", "ece"), 3), table.n("acdc", "crac")
    (0.11, 1)
    >>> kendall_tau([1.0, 2.0, 3.0], [10.0, 30.0, 20.0])
    0.3333333333333333
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from calibrant import plot
from calibrant._files import read_json
from calibrant.bench.binding import binding_section
from calibrant.bench.paired import claims_lines
from calibrant.bench.runner import is_current, record_path, search_path
from calibrant.bench.suite import Suite
from calibrant.metrics import ReliabilityCurve

__all__ = ["Table", "kendall_tau", "load_records", "render_suite", "results_page"]


def load_records(results: Path, suite: str, profile: str) -> list[dict[str, Any]]:
    """All finished run records of ``suite``/``profile`` under ``results`` (sorted by path)."""
    folder = Path(results) / suite / profile
    records = []
    for path in sorted(folder.glob("*/*/seed*.json")):
        record = read_json(path, what="corrupt benchmark record")
        if record.get("status") == "done":
            records.append(record)
    return records


class Table:
    """Per-seed metric values keyed by ``(task, method)``: ``{(task, method): {key: [v, ...]}}``."""

    def __init__(self, values: Mapping[tuple[str, str], Mapping[str, list[float]]]) -> None:
        self.values = {k: dict(v) for k, v in values.items()}

    @classmethod
    def from_records(cls, records: Sequence[Mapping[str, Any]]) -> Table:
        """Collect the flat test metrics of finished runs."""
        values: dict[tuple[str, str], dict[str, list[float]]] = defaultdict(
            lambda: defaultdict(list)
        )
        for r in sorted(records, key=lambda r: r["seed"]):
            for key, v in r["test"].items():
                if isinstance(v, (int, float)):
                    values[(r["task"], r["method"])][key].append(float(v))
        return cls(values)

    def methods(self, task: str) -> list[str]:
        """Methods with at least one result on ``task``."""
        return [m for t, m in self.values if t == task]

    def get(self, task: str, method: str, key: str) -> list[float]:
        """The per-seed values (empty when missing)."""
        return list(self.values.get((task, method), {}).get(key, []))

    def n(self, task: str, method: str) -> int:
        """Number of seeds with results."""
        seeds = self.values.get((task, method), {})
        return max((len(v) for v in seeds.values()), default=0)

    def mean(self, task: str, method: str, key: str) -> float | None:
        """Mean over seeds (NaN values are dropped), ``None`` when missing."""
        vals = [v for v in self.get(task, method, key) if not math.isnan(v)]
        return statistics.fmean(vals) if vals else None

    def std(self, task: str, method: str, key: str) -> float | None:
        """Sample standard deviation over seeds (``None`` with fewer than 2 values)."""
        vals = [v for v in self.get(task, method, key) if not math.isnan(v)]
        return statistics.stdev(vals) if len(vals) > 1 else None


def kendall_tau(a: Sequence[float], b: Sequence[float]) -> float:
    """Kendall's τ-a between two equally long score lists (1: same ordering, −1: reversed)."""
    if len(a) != len(b) or len(a) < 2:
        raise ValueError(
            f"kendall_tau needs two lists of equal length >= 2, got {len(a)}, {len(b)}"
        )
    score, pairs = 0, 0
    for i in range(len(a)):
        for j in range(i + 1, len(a)):
            pairs += 1
            score += _sign(a[i] - a[j]) * _sign(b[i] - b[j])
    return score / pairs


def _sign(x: float) -> int:
    return (x > 0) - (x < 0)


def _cell(table: Table, task: str, method: str, column) -> str:
    mean = table.mean(task, method, column.key)
    if mean is None:
        return "–"
    std = table.std(task, method, column.key)
    text = f"{mean * column.scale:.{column.digits}f}"
    return text + (f" ± {std * column.scale:.{column.digits}f}" if std is not None else "")


def _best(table: Table, task: str, methods: Sequence[str], column) -> str | None:
    means = {m: table.mean(task, m, column.key) for m in methods}
    means = {m: v for m, v in means.items() if v is not None}
    if not means:
        return None
    most = max(table.n(task, m) for m in means)  # never a mean over fewer seeds against more
    means = {m: v for m, v in means.items() if table.n(task, m) == most}
    pick = max if column.higher_is_better else min
    return pick(means, key=means.get)


def _task_table(suite: Suite, table: Table, task: str) -> list[str]:
    measured = [
        c for c in suite.columns if any(table.get(task, m.name, c.key) for m in suite.methods)
    ]
    cols = measured or suite.columns  # a column no record has (a newer metric) is left out
    arrows = ["→ 0" if not c.bold else "↑" if c.higher_is_better else "↓" for c in cols]
    lines = [
        "| method | seeds | "
        + " | ".join(f"{c.label} {a}" for c, a in zip(cols, arrows, strict=True))
        + " |",
        "|---|---|" + "---|" * len(cols),
    ]
    compared = [m.name for m in suite.methods if not m.investigation]
    best = {c.key: _best(table, task, compared, c) if c.bold else None for c in cols}
    for m in suite.methods:
        cells = []
        for c in cols:
            text = _cell(table, task, m.name, c)
            cells.append(f"**{text}**" if best[c.key] == m.name else text)
        label = f"*{m.label}*" if m.investigation else m.label
        lines.append(f"| {label} | {table.n(task, m.name)} | " + " | ".join(cells) + " |")
    return lines


def _unit_factors(suite: Suite, task, profile: str) -> dict[str, tuple[float, str]]:
    """Column key -> (factor, config key) that puts our value in the paper's unit."""
    first = next(m.name for m in suite.methods if m.trained)
    cfg = suite.config(task.name, first, profile, suite.seed_list(profile)[0])
    factors = {}
    for key, dotted in task.paper_units.items():
        value: Any = cfg
        for part in dotted.split("."):
            value = value.get(part, 1) if isinstance(value, Mapping) else 1
        factors[key] = (float(value), dotted)
    return factors


def _paper_section(suite: Suite, table: Table, task, profile: str) -> list[str]:
    paper = task.paper or {}
    methods = [m for m in suite.methods if m.name in paper]
    cols = [c for c in suite.columns if any(c.key in paper[m.name] for m in methods)]
    units = _unit_factors(suite, task, profile)
    converted = "; ".join(
        f"our {c.label} × {units[c.key][0]:g} (`{units[c.key][1]}`; distances within a "
        "slice, so an approximation where the nearest surface point lies in another slice)"
        for c in cols
        if c.key in units and units[c.key][0] != 1.0
    )
    lines = [
        f"Published numbers ({task.paper_source}) beside ours (mean over seeds, in the paper's "
        "units" + (f": {converted}" if converted else "") + ").",
        "",
        "| method | " + " | ".join(f"{c.label} ours | {c.label} paper" for c in cols) + " |",
        "|---|" + "---|---|" * len(cols),
    ]
    for m in methods:
        cells = []
        for c in cols:
            ours = table.mean(task.name, m.name, c.key)
            theirs = paper[m.name].get(c.key)
            factor = units.get(c.key, (1.0, ""))[0]
            cells.append("–" if ours is None else f"{ours * c.scale * factor:.{c.digits}f}")
            cells.append("–" if theirs is None else f"{theirs:.{c.digits}f}")
        lines.append(f"| {m.label} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Agreement of the orderings (Kendall τ over the methods both have; 1 = same):",
        "",
    ]
    for c in cols:
        both = [
            m.name
            for m in methods
            if table.mean(task.name, m.name, c.key) is not None and c.key in paper[m.name]
        ]
        if len(both) < 2:
            lines.append(f"- {c.label}: fewer than 2 methods with both numbers")
            continue
        tau = kendall_tau(
            [table.mean(task.name, m, c.key) for m in both], [paper[m][c.key] for m in both]
        )
        lines.append(f"- {c.label}: τ = {tau:+.2f} over {len(both)} methods")
    return lines


def _search_section(suite: Suite, results: Path, profile: str, task: str) -> list[str]:

    lines = []
    for m in suite.methods:
        path = search_path(results, suite.name, profile, task, m.name)
        if m.search is None or not path.is_file():
            continue
        record = json.loads(path.read_text())
        arrow = "↑" if record["higher_is_better"] else "↓"
        # The other columns of the page on the validation split, to show what the choice costs.
        others = [
            c
            for c in suite.columns
            if c.key != record["metric"] and all(c.key in v["val"] for v in record["candidates"])
        ]
        heads = [*record["grid"], f"val {record['metric']}", *(f"val {c.label}" for c in others)]
        lines += [
            f"{m.label}: tuned on the validation split (seed {record['seed']}), "
            f"`{record['metric']}` {arrow}; chosen `{record['chosen']}`.",
            "",
            "| " + " | ".join(heads) + " |",
            "|" + "---|" * len(heads),
        ]
        for c in record["candidates"]:
            cells = [str(c["values"][k]) for k in record["grid"]]
            cells += [f"{c['score']:.4f}", *(f"{c['val'][o.key]:.4f}" for o in others)]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def pilot_value(suite: Suite, profile: str, records, task: str) -> float | None:
    """The pilot's test value on ``task`` (``None`` without a pilot or before its run)."""
    pilot = suite.pilots.get(profile)
    if pilot is None:
        return None
    first = suite.seed_list(profile)[0]
    for r in records:
        if (r["task"], r["method"], r["seed"]) == (task, pilot.method, first):
            value = r["test"].get(pilot.metric)
            return None if value is None else float(value)
    return None


def _pilot_section(suite: Suite, profile: str, records, task: str) -> list[str]:
    """The go/no-go line and the pilot's validation curve of its gate metric over epochs."""
    pilot = suite.pilots.get(profile)
    if pilot is None:
        return []
    label = suite.method(pilot.method).label
    value = pilot_value(suite, profile, records, task)
    if value is None:
        return [f"**Pilot** ({label}, seed 1): not yet run; no other method runs before it.", ""]
    go = pilot.go(value)
    verdict = "**go**" if go else "**no-go**: the other methods are not compared on this task"
    lines = [
        f"**Pilot** ({label}, seed 1): test `{pilot.metric}` = {100 * value:+.2f} points "
        f"(positive = over-confident; threshold {100 * pilot.threshold:+.1f}): {verdict}.",
        "",
    ]
    first = suite.seed_list(profile)[0]
    run = next(
        r for r in records if (r["task"], r["method"], r["seed"]) == (task, pilot.method, first)
    )
    curve = [
        (h["epoch"], h["val"][pilot.metric])
        for h in run.get("history", [])
        if pilot.metric in h.get("val", {})
    ]
    if curve:
        step = max(1, len(curve) // 10)
        shown = curve[step - 1 :: step]
        if shown[-1] != curve[-1]:
            shown.append(curve[-1])
        lines += [
            f"{label}'s validation `{pilot.metric}` over epochs (points):",
            "",
            "| epoch | " + " | ".join(str(e) for e, _ in shown) + " |",
            "|---|" + "---|" * len(shown),
            f"| {pilot.metric} | " + " | ".join(f"{100 * v:+.1f}" for _, v in shown) + " |",
            "",
        ]
    return lines


def _paired_section(suite: Suite, results: Path, profile: str, records, claims) -> list[str]:
    """The papers' claims, then our own questions, decided on paired intervals."""
    pilot = suite.pilots.get(profile)
    tasks = [
        t.name
        for t in suite.tasks
        if pilot is None or pilot.go(pilot_value(suite, profile, records, t.name))
    ]
    runs: dict[str, dict] = {}
    for r in records:
        path = record_path(results, suite.name, profile, r["task"], r["method"], r["seed"])
        runs.setdefault(r["task"], {})[(r["method"], r["seed"])] = (r, path)
    labels = {m.name: m.label for m in suite.methods}
    lines = ["## The papers' claims (paired intervals)", ""]
    if len(tasks) < len(suite.tasks):
        lines += ["Tasks whose pilot is not a go are not compared.", ""]
    ours = [c for c in claims if c.source == "ours"]
    lines += claims_lines([c for c in claims if c.source != "ours"], tasks, runs, labels)
    if ours:
        lines += ["## Our questions (not claims of the papers)", ""]
        lines += claims_lines(ours, tasks, runs, labels)
    return lines


def _claims_section(suite: Suite, table: Table) -> list[str]:
    lines = ["## The papers' claims", ""]
    if not suite.claims:
        return [*lines, "No claim is attached to this suite.", ""]
    lines += ["| claim | task | holds | evidence |", "|---|---|---|---|"]
    for claim in suite.claims:
        for task in claim.tasks or [t.name for t in suite.tasks]:
            verdict = claim.check(table, task)
            mark = {True: "yes", False: "**no**", None: "not yet run"}[verdict.holds]
            lines.append(f"| {claim.text} | {task} | {mark} | {verdict.detail} |")
    return [*lines, ""]


def _figures(suite: Suite, records: Sequence[Mapping[str, Any]], folder: Path) -> dict:
    """Reliability diagrams (first seed) per task, multiplier trajectories per ALM method."""
    folder.mkdir(parents=True, exist_ok=True)
    written: dict[str, list[Path]] = defaultdict(list)
    for task in suite.tasks:
        runs, curves = {}, {}
        for m in suite.methods:
            mine = [r for r in records if r["task"] == task.name and r["method"] == m.name]
            if mine:
                runs[m.label] = min(mine, key=lambda r: r["seed"])
                curve = runs[m.label].get("curves", {}).get("reliability/all")
                if curve is not None:  # each panel's legend carries its ECE
                    curves[m.label] = _curve(curve)
        if curves:
            fig = plot.reliability_grid(curves)
            written[task.name].append(
                plot.save_figure(fig, folder / f"{task.name}_reliability.png")
            )
        for record in runs.values():
            fig = plot.alm_trajectories(record.get("history", []))
            if fig is not None:
                name = f"{task.name}_{record['method']}_multipliers.png"
                written[task.name].append(plot.save_figure(fig, folder / name))
    return written


def _curve(stored: Mapping[str, list]):
    import torch

    return ReliabilityCurve(*(torch.tensor(stored[f]) for f in ReliabilityCurve._fields))


def _provenance(records: Sequence[Mapping[str, Any]]) -> list[str]:
    commits = sorted({r["environment"].get("commit", "?") for r in records})
    commands = sorted({r.get("command", "?") for r in records})
    devices = sorted({r["environment"].get("device", "?") for r in records})
    seconds = sum(r.get("seconds", 0.0) for r in records)
    return [
        "## Provenance",
        "",
        f"- Runs: {len(records)}; training + evaluation time summed over runs: "
        f"{seconds / 60:.1f} min on {', '.join(devices)}.",
        f"- Commits: {', '.join(f'`{c}`' for c in commits)}.",
        "- Commands:",
        *[f"  - `{c}`" for c in commands],
        "- This page was generated by `calibrant bench ... --report-only` from the JSON records "
        "beside it; do not edit it by hand.",
        "",
    ]


def results_page(results: Path, suite: Suite, profile: str) -> Path:
    """Path of the suite's Markdown page for ``profile``."""
    suffix = "" if profile == "cpu" else f"_{profile}"
    return Path(results) / f"{suite.name}{suffix}.md"


def render_suite(
    suite: Suite, results: Path, profile: str = "cpu", *, figures: bool = True
) -> Path:
    """Write the suite's results page from its JSON records; returns its path."""
    suite = dataclasses.replace(  # the tasks and methods this profile runs
        suite, tasks=suite.tasks_for(profile), methods=suite.methods_for(profile)
    )
    everything = load_records(results, suite.name, profile)
    records = [r for r in everything if is_current(suite, results, profile, r)]
    stale = len(everything) - len(records)
    table = Table.from_records(records)
    page = results_page(results, suite, profile)
    fig_dir = Path(results) / suite.name / profile / "figures"
    pictures = _figures(suite, records, fig_dir) if figures and records else {}
    expected = len(suite.tasks) * len(suite.methods) * len(suite.seed_list(profile))
    lines = [
        f"# `{suite.name}` ({profile} profile)",
        "",
        suite.description,
        "",
        f"Runs finished: {len(records)} of {expected} "
        f"({len(suite.tasks)} tasks × {len(suite.methods)} methods × "
        f"{len(suite.seed_list(profile))} seeds). Mean ± sample std over seeds; best in bold"
        + (
            " (investigation rows, in italics, are not compared)."
            if any(m.investigation for m in suite.methods)
            else "."
        ),
        "",
    ]
    if stale:
        lines += [
            f"{stale} older records were made with another config than the suite now defines "
            "and are left out (re-run the suite to replace them).",
            "",
        ]
    if suite.reductions and profile == "cpu":
        lines += ["## CPU profile: reductions from the papers' set-ups", "", suite.reductions, ""]
    if profile in suite.profile_notes:
        lines += [f"## The `{profile}` profile", "", suite.profile_notes[profile], ""]
    for task in suite.tasks:
        lines += [f"## {task.name}", "", *_pilot_section(suite, profile, records, task.name)]
        lines += [*_task_table(suite, table, task.name), ""]
        lines += binding_section(records, task.name, {m.name: m.label for m in suite.methods})
        lines += _search_section(suite, Path(results), profile, task.name)
        if task.paper:
            lines += [*_paper_section(suite, table, task, profile), ""]
        for path in pictures.get(task.name, []):
            rel = path.relative_to(page.parent)
            lines += [f"![{path.stem}]({rel.as_posix()})", ""]
    paired = suite.paired_claims.get(profile)
    if paired:
        lines += _paired_section(suite, results, profile, records, paired)
    else:
        lines += _claims_section(suite, table)
    notes = Path(results) / suite.name / profile / "notes.md"
    if notes.is_file():  # hand-written findings (what was investigated where a claim fails)
        lines += [
            "## Investigation notes",
            "",
            f"(Hand-written, from `{notes.relative_to(page.parent).as_posix()}`.)",
            "",
            notes.read_text().strip(),
            "",
        ]
    if records:
        lines += _provenance(records)
    page.parent.mkdir(parents=True, exist_ok=True)
    page.write_text("\n".join(lines))
    return page
