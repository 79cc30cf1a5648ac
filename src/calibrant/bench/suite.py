"""What a benchmark suite is: tasks × methods × seeds under a profile, the columns and the claims.

A :class:`Suite` names the tasks (a dataset with its preset config), the methods (a loss config,
or a post-hoc calibrator fitted on the validation split of another method's trained run), the
number of seeds per profile, the metric columns of its tables and the papers' claims to test.
:meth:`Suite.config` resolves the exact config of one ``(task, method, profile, seed)`` run:
``preset ⊕ task overrides ⊕ profile overrides ⊕ method overrides``, with the method's loss
section replacing the preset's (:func:`calibrant.config.merge`).

Example:
    >>> suite = Suite(
    ...     "toy",
    ...     "a toy suite",
    ...     tasks=(Task("scene", "mulan_bce", {"data": {"name": "mulan_scene"}}),),
    ...     methods=(Method("bce", "BCE", {"name": "bce"}),
    ...              Method("spa", "SPA", {"name": "spa"})),
    ...     columns=(Column("ace", "ACE", higher_is_better=False, scale=100),),
    ...     seeds={"cpu": 2},
    ... )
    >>> cfg = suite.config("scene", "spa", "cpu", seed=2)
    >>> cfg["loss"], cfg["data"]["name"], cfg["train"]["seed"]
    ({'name': 'spa'}, 'mulan_scene', 2)
"""

from __future__ import annotations

import copy
import difflib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from calibrant.config import apply_overrides, load_config, merge

__all__ = ["Claim", "Column", "Method", "Pilot", "Search", "Suite", "Task", "Verdict"]


@dataclass(frozen=True)
class Search:
    """A grid of config values tuned on the validation split before a method's seeds run.

    Every point of the grid trains once (first seed of the profile); the best checkpoint of each
    is scored with ``metric`` (a test-metric key of the preset, computed on the *validation*
    split) and the best point's values are applied to every seed. The test split is never seen.

    Args:
        grid: dotted config key -> candidate values (``{"loss.lam": [0.1, 1.0]}``).
        metric: the score, e.g. ``"ace"``.
        higher_is_better: direction of ``metric``.
    """

    grid: Mapping[str, tuple[Any, ...]]
    metric: str
    higher_is_better: bool

    def points(self) -> list[dict[str, Any]]:
        """Every combination of the grid, in order."""
        import itertools

        keys = list(self.grid)
        return [dict(zip(keys, v, strict=True)) for v in itertools.product(*self.grid.values())]


@dataclass(frozen=True)
class Method:
    """One row of a suite's tables.

    Args:
        name: identifier used in file names and on the command line (``ce_ts``).
        label: row label in the tables (``CE+TS``).
        loss: the loss section of the config (replaces the preset's); ``None`` for a post-hoc
            method.
        calibrator: a registered calibrator fitted on the validation split of ``base``'s
            trained run (``temperature``, ``phi``), or ``None``.
        base: the method whose trained run a post-hoc method reuses.
        overrides: further config sections deep-merged into the run's config.
        search: a :class:`Search` tuned on the validation split before the seeds run.
        investigation: a row that probes the protocol (a longer schedule, another ρ), not a
            method of the papers: shown in italics, never in bold, left out of the claims.
    """

    name: str
    label: str
    loss: Mapping[str, Any] | None = None
    calibrator: str | None = None
    base: str | None = None
    overrides: Mapping[str, Any] = field(default_factory=dict)
    search: Search | None = None
    investigation: bool = False

    def __post_init__(self) -> None:
        if (self.loss is None) == (self.calibrator is None):
            raise ValueError(f"method {self.name!r} needs exactly one of loss= or calibrator=")
        if self.calibrator is not None and self.base is None:
            raise ValueError(f"post-hoc method {self.name!r} needs base= (a trained method)")
        if self.search is not None and self.calibrator is not None:
            raise ValueError(f"post-hoc method {self.name!r} cannot have a search")

    @property
    def trained(self) -> bool:
        """True when the method trains its own network."""
        return self.calibrator is None


@dataclass(frozen=True)
class Task:
    """One dataset of a suite: a preset config, overrides, per-profile overrides, papers' numbers.

    Args:
        name: identifier (``acdc``, ``scene``).
        preset: a shipped config (``calibrant list configs``) the runs start from.
        overrides: deep-merged into the preset for every profile.
        profiles: per-profile overrides (the presets are CPU-scale; ``paper`` restores the
            published set-up). A profile missing here runs with no extra override.
        paper: published numbers ``{method name: {column key: value}}`` in the column's scale,
            shown beside ours when the dataset and protocol match.
        paper_source: where ``paper`` comes from.
        paper_units: column key -> dotted config key whose value converts our number into the
            paper's unit (``{"hd95": "data.downsample"}``: HD95 in voxels of a ×2-downsampled
            image, times 2, is in the paper's full-resolution voxels).
    """

    name: str
    preset: str
    overrides: Mapping[str, Any] = field(default_factory=dict)
    profiles: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    paper: Mapping[str, Mapping[str, float]] | None = None
    paper_source: str = ""
    paper_units: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Column:
    """A metric column: ``key`` in the run's flat test metrics, shown as ``value × scale``."""

    key: str
    label: str
    higher_is_better: bool
    scale: float = 1.0
    digits: int = 3
    bold: bool = True  # False: a signed diagnostic (over-confidence), best at 0, never bold


@dataclass(frozen=True)
class Verdict:
    """Outcome of a claim on one task: ``holds`` is ``None`` when results are missing."""

    holds: bool | None
    detail: str


@dataclass(frozen=True)
class Claim:
    """A published claim tested on each task: ``check(table, task) -> Verdict``.

    ``table`` is a :class:`calibrant.bench.tables.Table` (means over seeds).
    """

    text: str
    check: Callable[[Any, str], Verdict]
    tasks: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Pilot:
    """The go/no-go gate of a profile: the condition a method addresses must be present first.

    The pilot is ``method``'s first-seed run on each task. Its test value of ``metric`` (the
    signed over-confidence, positive = over-confident) must be at least ``threshold``; until
    then no other run of that task starts, and a task whose pilot misses it is reported as
    "no-go" on the page instead of being compared (``calibrant bench --force`` overrides).

    Example:
        >>> gate = Pilot("ce", "overconfidence", 0.03)
        >>> gate.go(0.05), gate.go(0.01), gate.go(None)
        (True, False, None)
    """

    method: str
    metric: str
    threshold: float

    def go(self, value: float | None) -> bool | None:
        """True/False once the pilot's value is known, ``None`` before."""
        return None if value is None else bool(value >= self.threshold)


@dataclass(frozen=True)
class Suite:
    """A registered benchmark: tasks × methods × seeds, its table columns and the claims."""

    name: str
    description: str
    tasks: tuple[Task, ...]
    methods: tuple[Method, ...]
    columns: tuple[Column, ...]
    seeds: Mapping[str, int]
    claims: tuple[Claim, ...] = ()
    reductions: str = ""
    profile_tasks: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    profile_methods: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    pilots: Mapping[str, Pilot] = field(default_factory=dict)
    profile_notes: Mapping[str, str] = field(default_factory=dict)
    paired_claims: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for m in self.methods:
            if m.name in seen:
                raise ValueError(f"suite {self.name!r}: method {m.name!r} defined twice")
            if m.base is not None and m.base not in seen:
                raise ValueError(
                    f"suite {self.name!r}: post-hoc method {m.name!r} must come after its "
                    f"base {m.base!r}"
                )
            seen.add(m.name)

    @property
    def profiles(self) -> tuple[str, ...]:
        """The profiles this suite defines seeds for."""
        return tuple(self.seeds)

    def tasks_for(self, profile: str) -> tuple[Task, ...]:
        """The tasks a profile runs (``profile_tasks`` restricts a profile to some of them)."""
        names = self.profile_tasks.get(profile)
        return self.tasks if names is None else tuple(self.task(n) for n in names)

    def methods_for(self, profile: str) -> tuple[Method, ...]:
        """The methods a profile runs (``profile_methods`` restricts a profile to some)."""
        names = self.profile_methods.get(profile)
        return self.methods if names is None else tuple(self.method(n) for n in names)

    def task(self, name: str) -> Task:
        """The task called ``name`` (close-match error otherwise)."""
        return _find(self.tasks, name, f"task of suite {self.name!r}")

    def method(self, name: str) -> Method:
        """The method called ``name`` (close-match error otherwise)."""
        return _find(self.methods, name, f"method of suite {self.name!r}")

    def seed_list(self, profile: str) -> list[int]:
        """Seeds ``1..n`` of a profile."""
        if profile not in self.seeds:
            raise ValueError(
                f"suite {self.name!r} has no profile {profile!r}; profiles: {', '.join(self.seeds)}"
            )
        return list(range(1, int(self.seeds[profile]) + 1))

    def config(
        self,
        task: str,
        method: str,
        profile: str,
        seed: int,
        tuned: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The resolved config of one run (a post-hoc method resolves to its base's config).

        ``tuned`` holds the dotted values a :class:`Search` chose; they are applied last.
        """
        t, m = self.task(task), self.method(method)
        self.seed_list(profile)
        if not m.trained:
            return self.config(task, m.base, profile, seed, tuned)
        cfg = merge(load_config(t.preset), dict(t.overrides))
        cfg = merge(cfg, dict(t.profiles.get(profile, {})))
        cfg = merge(cfg, dict(m.overrides))
        cfg["loss"] = copy.deepcopy(dict(m.loss))
        cfg.setdefault("train", {})["seed"] = int(seed)
        if tuned:
            cfg = apply_overrides(cfg, [f"{k}={json.dumps(v)}" for k, v in tuned.items()])
        return cfg


def _find(items, name: str, what: str):
    for item in items:
        if item.name == name:
            return item
    names = [i.name for i in items]
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise KeyError(f"unknown {what} {name!r}{hint} Known: {', '.join(names)}")
