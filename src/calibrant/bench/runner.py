"""Run a suite: one JSON record per ``(task, method, seed)``, resumable at two levels.

Layout (``results`` is committed, ``work`` is scratch)::

    <results>/<suite>/<profile>/<task>/<method>/seed<k>.json   one finished run (the record)
    <work>/<suite>/<profile>/<task>/<method>/seed<k>-<hash>/   its run folder (checkpoints,
                                                               report, figures)

A record exists only once its run finished (it is written atomically), so a repeated or
interrupted ``bench`` skips finished runs; an interrupted training resumes exactly from its
``last.pt``. A record made with another config than the suite now asks for (the suite or a
preset changed) is *stale*: it is re-run, and the results page leaves it out. Run folders are
named by a hash of their config, so runs of different configs never share a folder. A post-hoc
method (``CE+TS``, ``Focal+φ``) fits its calibrator on the validation split of its base
method's run folder (training it first if needed). Where records and run folders live, the
recorded environment and the stored predictions are in :mod:`calibrant.bench.records`.

Example:
    >>> from pathlib import Path
    >>> record_path(Path("docs/results"), "spa-mulan", "cpu", "scene", "spa", 3).as_posix()
    'docs/results/spa-mulan/cpu/scene/spa/seed3.json'
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from calibrant import report
from calibrant._files import read_json
from calibrant.bench.records import (
    _normalised,
    _write_atomic,
    _write_predictions,
    config_key,
    environment,
    load_predictions,  # noqa: F401  (re-exported: it lived here)
    record_path,
    run_dir,
    search_path,
)
from calibrant.bench.suite import Method, Suite
from calibrant.checkpoint import load_checkpoint
from calibrant.experiment import build_experiment, seed_everything, tested_checkpoint, train_run

__all__ = [
    "BenchFailures",
    "PlannedRun",
    "config_key",
    "environment",
    "is_current",
    "plan",
    "record_path",
    "run_dir",
    "run_suite",
]

log = logging.getLogger(__name__)


def tuned_values(
    suite: Suite, results: Path, profile: str, task: str, method: str
) -> dict[str, Any] | None:
    """The values a method's :class:`Search` chose on ``task`` (``{}`` without a search).

    ``None`` when the search has not run yet, or ran over another grid or metric.
    """
    m = suite.method(method)
    trained = m if m.trained else suite.method(m.base)
    if trained.search is None:
        return {}
    path = search_path(results, suite.name, profile, task, trained.name)
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    same = (
        _normalised(record.get("grid")) == _normalised(dict(trained.search.grid))
        and record.get("metric") == trained.search.metric
    )
    return dict(record["chosen"]) if same else None


def resolve_config(
    suite: Suite, results: Path, profile: str, task: str, method: str, seed: int
) -> dict[str, Any] | None:
    """The config of one run, tuned values included; ``None`` while its search is pending."""
    tuned = tuned_values(suite, results, profile, task, method)
    return None if tuned is None else suite.config(task, method, profile, seed, tuned)


def is_current(suite: Suite, results: Path, profile: str, record: Mapping[str, Any]) -> bool:
    """True when a record was made with the config the suite asks for now."""
    try:
        cfg = resolve_config(
            suite, results, profile, record["task"], record["method"], record["seed"]
        )
    except (KeyError, ValueError):  # task, method or profile no longer in the suite
        return False
    return cfg is not None and _normalised(record.get("config", {})) == _normalised(cfg)


class BenchFailures(RuntimeError):
    """Raised after a suite ran every other run, naming the runs that failed and why."""

    def __init__(self, failures: list[tuple[str, str]]) -> None:
        self.failures = failures
        lines = "\n".join(f"  {run}: {error}" for run, error in failures)
        super().__init__(f"{len(failures)} benchmark run(s) failed:\n{lines}")


@dataclass(frozen=True)
class PlannedRun:
    """One ``(task, method, seed)`` of a suite and its state.

    ``state`` is ``"done"`` (a record of the current config exists), ``"stale"`` (a record
    exists but was made with another config: the suite definition or its preset changed; it is
    re-run) or ``"todo"``.
    """

    task: str
    method: str
    seed: int
    state: str

    @property
    def done(self) -> bool:
        """True when a record of the current config exists."""
        return self.state == "done"


def _state(suite: Suite, results: Path, profile: str, task: str, method: str, seed: int) -> str:
    path = record_path(results, suite.name, profile, task, method, seed)
    if not path.is_file():
        return "todo"
    record = read_json(path, what="corrupt benchmark record")
    return "done" if is_current(suite, results, profile, record) else "stale"


def plan(
    suite: Suite,
    results: Path,
    profile: str = "cpu",
    *,
    tasks: Iterable[str] | None = None,
    methods: Iterable[str] | None = None,
    seeds: Iterable[int] | None = None,
) -> list[PlannedRun]:
    """The runs of a suite in execution order (seed, then task, then method)."""
    own_tasks = [t.name for t in suite.tasks_for(profile)]
    task_names = [suite.task(t).name for t in tasks] if tasks else own_tasks
    wanted = [suite.method(m).name for m in methods] if methods else None
    own = suite.methods_for(profile)
    method_names = [m.name for m in own if wanted is None or m.name in wanted]
    seed_list = list(seeds) if seeds else suite.seed_list(profile)
    return [
        PlannedRun(t, m, s, _state(suite, results, profile, t, m, s))
        for s in seed_list
        for t in task_names
        for m in method_names
    ]


def _check_same_config(folder: Path, cfg: Mapping[str, Any], stored: Mapping[str, Any]) -> None:
    if _normalised(stored) != _normalised(cfg):
        raise ValueError(
            f"run folder {str(folder)!r} holds a run of another config than this suite asks for "
            "(the suite definition or its preset changed); delete the folder to retrain it"
        )


@dataclass(frozen=True)
class _Bench:
    """Everything a run needs besides its (task, method, seed)."""

    suite: Suite
    profile: str
    results: Path
    work: Path
    data_root: Any
    device: torch.device
    log_epoch: Callable | None
    env: dict[str, Any]
    command: str
    callbacks: tuple = ()


def _trained(b: _Bench, task: str, method: Method, seed: int, cfg: dict) -> dict[str, Any]:
    """Train (or resume, or reuse) one run folder; returns its ``metrics.json`` payload."""
    folder = run_dir(b.work, b.suite.name, b.profile, task, method.name, seed, config_key(cfg))
    return _train_folder(b, folder, cfg)


def _items(b: _Bench, task: str, method: Method, seed: int, cfg: dict) -> dict[str, Any]:
    """Per-item test values (or per-sample predictions) of a trained run, for the intervals."""
    folder = run_dir(b.work, b.suite.name, b.profile, task, method.name, seed, config_key(cfg))
    seed_everything(seed)
    exp = build_experiment(cfg, data_root=b.data_root, device=b.device)
    results = report.evaluate_run(
        exp, folder, device=b.device, checkpoint=tested_checkpoint(cfg), keep_items=True
    )
    return {k: results[k] for k in ("items", "predictions") if k in results}


def _posthoc(b: _Bench, task: str, method: Method, seed: int, cfg: dict) -> dict[str, Any]:
    """Fit ``method.calibrator`` on the base run's validation logits and test it."""
    base = b.suite.method(method.base)
    trained = _trained(b, task, base, seed, cfg)
    folder = run_dir(b.work, b.suite.name, b.profile, task, base.name, seed, config_key(cfg))
    seed_everything(seed)
    exp = build_experiment(cfg, data_root=b.data_root, device=b.device)
    checkpoint = tested_checkpoint(cfg)  # the calibrator fits the network that is tested
    path = report.fit_calibrator(
        exp, folder, method=method.calibrator, device=b.device, checkpoint=checkpoint
    )
    results = report.evaluate_run(
        exp,
        folder,
        device=b.device,
        checkpoint=checkpoint,
        calibrator=path,
        callbacks=b.callbacks,
        keep_items=True,
    )
    state = load_checkpoint(path, required=("state_dict",))["state_dict"]
    results["calibrator_state"] = {k: torch.as_tensor(v).tolist() for k, v in state.items()}
    # the network's training time (its base's run): a calibrator alone takes seconds
    return {**results, "config": cfg, "train_seconds": train_seconds(trained)}


def _search(b: _Bench, task: str, method: Method) -> Path:
    """Train every grid point of ``method.search`` and keep the best on the validation split."""
    search = method.search
    seed = b.suite.seed_list(b.profile)[0]
    candidates = []
    for values in search.points():
        cfg = b.suite.config(task, method.name, b.profile, seed, values)
        log.info("    search %s %s: %s", task, method.label, values)
        _trained(b, task, method, seed, cfg)  # the chosen point's folder serves its seed run
        folder = run_dir(b.work, b.suite.name, b.profile, task, method.name, seed, config_key(cfg))
        seed_everything(seed)
        exp = build_experiment(cfg, data_root=b.data_root, device=b.device)
        val = report.evaluate_run(
            exp, folder, device=b.device, checkpoint=tested_checkpoint(cfg), split="val"
        )["test"]
        if search.metric not in val:
            raise KeyError(
                f"search metric {search.metric!r} is not a test metric of the preset; "
                f"known: {', '.join(sorted(val))}"
            )
        candidates.append({"values": values, "score": val[search.metric], "val": val})
    pick = max if search.higher_is_better else min
    chosen = pick(candidates, key=lambda c: c["score"])["values"]
    path = search_path(b.results, b.suite.name, b.profile, task, method.name)
    _write_atomic(
        path,
        {
            "schema": 1,
            "suite": b.suite.name,
            "profile": b.profile,
            "task": task,
            "method": method.name,
            "seed": seed,
            "grid": dict(search.grid),
            "metric": search.metric,
            "higher_is_better": search.higher_is_better,
            "split": "val",
            "candidates": candidates,
            "chosen": chosen,
            "environment": b.env,
            "command": b.command,
        },
    )
    log.info("    search %s %s chose %s", task, method.label, chosen)
    return path


def train_seconds(payload: Mapping[str, Any]) -> float | None:
    """A run's training wall time: its epochs' ``seconds`` summed, across resumes.

    A run folder trained before epochs were timed gives its last call's ``wall_seconds`` (which
    counts only what that call resumed).

    Example:
        >>> train_seconds({"history": [{"seconds": 2.5}, {"seconds": 3.0}], "wall_seconds": 3.1})
        5.5
        >>> train_seconds({"history": [{"epoch": 1}], "wall_seconds": 3.1})
        3.1
    """
    history = payload.get("history") or []
    if history and all("seconds" in h for h in history):
        return round(sum(h["seconds"] for h in history), 1)
    return payload.get("wall_seconds")


def _train_folder(b: _Bench, folder: Path, cfg: dict) -> dict[str, Any]:
    """Train ``cfg`` into ``folder`` unless it finished there (resuming a partial run)."""
    finished = folder / "metrics.json"
    if not finished.is_file():
        if (folder / "config.json").is_file():
            _check_same_config(folder, cfg, json.loads((folder / "config.json").read_text()))
        resume = (folder / "checkpoints" / "last.pt").is_file()
        train_run(  # a start that never reached a checkpoint (same config, above) starts anew
            cfg,
            folder,
            data_root=b.data_root,
            device=b.device,
            resume=resume,
            overwrite=not resume,
            log=b.log_epoch,
            callbacks=b.callbacks,
        )
    payload = json.loads(finished.read_text())
    _check_same_config(folder, cfg, payload.get("config", {}))
    return payload


def _pilot_value(suite: Suite, results: Path, profile: str, task: str) -> float | None:
    """The test value of the profile's pilot run on ``task`` (``None`` until it is current)."""
    pilot = suite.pilots[profile]
    path = record_path(
        results, suite.name, profile, task, pilot.method, suite.seed_list(profile)[0]
    )
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    if not is_current(suite, results, profile, record):
        return None
    value = record["test"].get(pilot.metric)
    return None if value is None else float(value)


def _run_one(b: _Bench, run: PlannedRun) -> Path:
    method = b.suite.method(run.method)
    trained = method if method.trained else b.suite.method(method.base)
    cfg = resolve_config(b.suite, b.results, b.profile, run.task, method.name, run.seed)
    if cfg is None:  # the method's search has not run (or its grid changed)
        _search(b, run.task, trained)
        cfg = resolve_config(b.suite, b.results, b.profile, run.task, method.name, run.seed)
    t0 = time.perf_counter()
    do = _trained if method.trained else _posthoc
    payload = do(b, run.task, method, run.seed, cfg)
    if method.trained:
        payload = {**payload, **_items(b, run.task, method, run.seed, cfg)}
    path = record_path(b.results, b.suite.name, b.profile, run.task, method.name, run.seed)
    predictions = payload.get("predictions")
    if predictions is not None:
        _write_predictions(path.with_suffix(".predictions.npz"), predictions)
    record = {
        "schema": 2,
        "status": "done",
        "suite": b.suite.name,
        "profile": b.profile,
        "task": run.task,
        "method": method.name,
        "label": method.label,
        "seed": run.seed,
        "calibrator": method.calibrator,
        "base": method.base,
        "tuned": tuned_values(b.suite, b.results, b.profile, run.task, method.name),
        "test": payload["test"],
        "curves": payload.get("curves", {}),
        "best_epoch": payload.get("epoch"),
        "history": payload.get("history", []) if method.trained else [],
        "calibrator_state": payload.get("calibrator_state"),
        "seconds": round(time.perf_counter() - t0, 3),  # this call: fitting, testing, items
        "train_seconds": payload.get("train_seconds", train_seconds(payload)),
        "items": payload.get("items"),
        "predictions": path.with_suffix(".predictions.npz").name if predictions else None,
        "checkpoint": payload.get("checkpoint"),
        "config": payload["config"],
        "environment": b.env,
        "command": b.command,
    }
    _write_atomic(path, record)
    log.info("    done in %.0f s -> %s", record["seconds"], path)
    return path


def run_suite(
    suite: Suite,
    *,
    results: Path,
    work: Path,
    profile: str = "cpu",
    data_root: Any = None,
    device: torch.device | str = "cpu",
    tasks: Iterable[str] | None = None,
    methods: Iterable[str] | None = None,
    seeds: Iterable[int] | None = None,
    command: str = "",
    max_minutes: float | None = None,
    log_epoch: Callable | None = None,
    callbacks: Iterable[Any] = (),
    on_run: Callable[[int, int, str], None] | None = None,
    force: bool = False,
) -> list[Path]:
    """Run every missing ``(task, method, seed)`` of a suite; returns the records written.

    A method with a :class:`~calibrant.bench.suite.Search` first trains every grid point on
    the first seed and keeps the best on the validation split (``search.json`` beside its
    records); its seeds then run with the chosen values.

    Args:
        suite: the suite.
        results: folder of the JSON records (committed).
        work: folder of the run folders (scratch: checkpoints, per-run reports).
        profile: ``cpu`` or ``paper`` (or any profile the suite defines seeds for).
        data_root: the data folder (``None``: ``$CALIBRANT_DATA``).
        device: where to train.
        tasks: restrict to these tasks.
        methods: restrict to these methods (a post-hoc method still trains its base if needed).
        seeds: restrict to these seeds.
        command: the command line, stored in every record.
        max_minutes: start no new run after this many minutes (the suite can be continued later).
        log_epoch: per-epoch callback passed to the training loop.
        callbacks: :class:`calibrant.engine.Callback` objects (progress bars) given to every
            training and test evaluation.
        on_run: called as ``on_run(i, n, name)`` before run ``i`` (1-based) of the ``n`` to do.
        force: run a profile's other methods even where its pilot
            (:class:`~calibrant.bench.suite.Pilot`) is a no-go or has not run. Without it the
            pilot runs first and gates each task.

    Raises:
        BenchFailures: after all other runs, when some runs raised (their records are not
            written; the error of each is logged with its traceback and named here).
    """
    device = torch.device(device)
    start = time.perf_counter()
    b = _Bench(
        suite, profile, Path(results), Path(work), data_root, device, log_epoch,
        environment(device), command,  # the environment: the code imported now is what runs
        tuple(callbacks),
    )  # fmt: skip
    runs = plan(suite, results, profile, tasks=tasks, methods=methods, seeds=seeds)
    pilot = suite.pilots.get(profile)
    first = suite.seed_list(profile)[0]

    def is_pilot(r: PlannedRun) -> bool:
        return pilot is not None and (r.method, r.seed) == (pilot.method, first)

    todo = sorted((r for r in runs if not r.done), key=lambda r: not is_pilot(r))
    log.info("%s/%s: %d runs, %d finished, %d to do", suite.name, profile, len(runs),
             len(runs) - len(todo), len(todo))  # fmt: skip
    written, failures = [], []
    for i, run in enumerate(todo, 1):
        if max_minutes is not None and (time.perf_counter() - start) / 60 >= max_minutes:
            log.warning(
                "time budget of %.0f min spent; %d runs left", max_minutes, len(todo) - i + 1
            )
            break
        name = f"{run.task} {suite.method(run.method).label} seed {run.seed}"
        if pilot is not None and not is_pilot(run) and not force:
            go = pilot.go(_pilot_value(suite, b.results, profile, run.task))
            if not go:
                why = "its pilot has not run" if go is None else "its pilot is a no-go"
                log.warning("[%d/%d] %s skipped: %s (--force runs it)", i, len(todo), name, why)
                continue
        elapsed = time.perf_counter() - start
        eta = f" (eta {elapsed / (i - 1) * (len(todo) - i + 1) / 60:.0f} min)" if i > 1 else ""
        log.info("[%d/%d] %s%s", i, len(todo), name, eta)
        if on_run is not None:
            on_run(i, len(todo), name)
        try:
            written.append(_run_one(b, run))
        except Exception as e:  # one broken run must not cost the others; reported at the end
            log.exception("run %s failed", name)
            failures.append((name, f"{type(e).__name__}: {e}"))
    if failures:
        raise BenchFailures(failures)
    return written
