"""A run folder's evaluations: ``evaluations/NAME.json`` and the report's evaluations section.

``calibrant eval`` and ``calibrant calibrate`` write one file per checkpoint, calibrator and
split (:func:`evaluation_name`) beside the training's ``metrics.json`` and list every
evaluation the folder holds in ``report.md`` (:func:`update_report_evaluations`), as a
:func:`markdown_table`. :mod:`calibrant.report` re-exports these names.

Example:
    >>> print(markdown_table({"ce": {"ece": 0.05}, "crac": {"ece": 0.03}}))
    | run | ece |
    |---|---|
    | ce | 0.0500 |
    | crac | 0.0300 |
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "evaluation_name",
    "evaluations_section",
    "list_evaluations",
    "markdown_table",
    "update_report_evaluations",
    "write_evaluation",
]

log = logging.getLogger(__name__)


def markdown_table(runs: Mapping[str, Mapping[str, Any]], keys: list[str] | None = None) -> str:
    """A Markdown table with one row per run and one column per scalar metric."""
    if keys is None:
        keys = []
        for metrics in runs.values():
            for k, v in metrics.items():
                if isinstance(v, (int, float)) and k not in keys:
                    keys.append(k)
    lines = ["| run | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for name, metrics in runs.items():
        cells = []
        for k in keys:
            v = metrics.get(k)
            cells.append(f"{v:.4f}" if isinstance(v, (int, float)) else "–")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def evaluation_name(
    checkpoint: str, calibrator: str | Path | None = None, split: str = "test"
) -> str:
    """The file stem of an evaluation under ``evaluations/``.

    Example:
        >>> evaluation_name("last"), evaluation_name("best", "runs/r/calibrator_temperature.pt")
        ('last', 'best+calibrator_temperature')
        >>> evaluation_name("best", split="val")
        'best-val'
    """
    name = str(checkpoint)
    if calibrator:
        name += f"+{Path(calibrator).stem}"
    if split != "test":
        name += f"-{split}"
    return name


def write_evaluation(run: Path, results: Mapping[str, Any]) -> Path:
    """Write one evaluation to ``run/evaluations/<name>.json`` and list it in ``report.md``.

    ``results`` is what :func:`evaluate_run` returns; the name comes from its checkpoint,
    calibrator and split (:func:`evaluation_name`), so an evaluation replaces only an earlier
    one of the same checkpoint, calibrator and split, never the training's ``metrics.json``.
    """
    run = Path(run)
    name = evaluation_name(
        results.get("checkpoint", "best"), results.get("calibrator"), results.get("split", "test")
    )
    path = run / "evaluations" / f"{name}.json"
    path.parent.mkdir(exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(dict(results), indent=2, default=str))
    tmp.replace(path)
    update_report_evaluations(run)
    return path


def list_evaluations(run: Path) -> list[tuple[str, dict[str, Any]]]:
    """``(file relative to run, payload)`` of every evaluation the folder holds.

    The training's own (``metrics.json``) first, then ``evaluations/*.json`` by name (and a
    ``metrics_calibrated.json`` written by an older calibrant).
    """
    run = Path(run)
    files = [run / "metrics.json", *sorted((run / "evaluations").glob("*.json"))]
    files.append(run / "metrics_calibrated.json")
    found = []
    for path in files:
        if not path.is_file():
            continue
        try:
            payload = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            log.warning("skipping unreadable evaluation %s: %s", path, e)
            continue
        if isinstance(payload, dict) and isinstance(payload.get("test"), Mapping):
            found.append((path.relative_to(run).as_posix(), payload))
    return found


_EVAL_BEGIN, _EVAL_END = "<!-- evaluations -->", "<!-- /evaluations -->"


def evaluations_section(run: Path) -> list[str]:
    """The lines of ``report.md``'s evaluations section: one per evaluation, then their table."""
    evaluations = list_evaluations(run)
    lines = [_EVAL_BEGIN, "## Evaluations", ""]
    if not evaluations:
        return [*lines, "None yet.", _EVAL_END]
    lines += [
        "Every evaluation this folder holds (`calibrant eval` and `calibrant calibrate` add one",
        "file per checkpoint and calibrator under `evaluations/`):",
        "",
    ]
    rows = {}
    for file, payload in evaluations:
        cal = payload.get("calibrator")
        what = "the training's test evaluation" if file == "metrics.json" else "evaluation"
        lines.append(
            f"- `{file}`: {what}, {payload.get('split', 'test')} split, checkpoint "
            f"`{payload.get('checkpoint')}` (epoch {payload.get('epoch')}), "
            + (f"calibrator `{Path(cal).name}`" if cal else "no calibrator")
        )
        label = "training" if file == "metrics.json" else Path(file).stem
        rows[label] = payload["test"]
    return [*lines, "", markdown_table(rows), _EVAL_END]


def update_report_evaluations(run: Path) -> Path:
    """Rewrite the evaluations section of ``run/report.md`` (appended when it has none)."""
    path = Path(run) / "report.md"
    text = path.read_text() if path.is_file() else f"# {Path(run).name}\n"
    section = "\n".join(evaluations_section(Path(run)))
    begin, end = text.find(_EVAL_BEGIN), text.find(_EVAL_END)
    if begin >= 0 and end > begin:
        text = text[:begin] + section + text[end + len(_EVAL_END) :]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(text)
    return path
