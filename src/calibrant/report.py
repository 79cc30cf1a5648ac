"""Run reports: test evaluation, ``metrics.json``, a Markdown table and the figures.

A run folder written by ``calibrant train`` holds::

    config.json            the resolved config
    checkpoints/           last.pt (resume) and best.pt (model selection)
    metrics.json           the training's test evaluation (never rewritten by `calibrant eval`),
                           per-epoch history, ALM trajectories, reliability curves
    evaluations/NAME.json  one file per later evaluation (`calibrant eval`, `calibrant
                           calibrate`): NAME is the checkpoint, ``+`` the calibrator file's stem
                           (``last.json``, ``best+calibrator_temperature.json``)
    report.md              the test table, every evaluation the folder holds, the figures
    figures/               training curves, reliability diagrams (top-label, class-wise,
                           boundary vs interior), lambda/rho trajectories (ALM methods)

The evaluation files and the report's evaluations section are written by
:mod:`calibrant.evaluations` (its names are re-exported here).

Example:
    >>> from calibrant.report import markdown_table
    >>> runs = {"ce": {"dice": 0.8, "ece": 0.05}, "crac": {"dice": 0.81, "ece": 0.03}}
    >>> print(markdown_table(runs))
    | run | dice | ece |
    |---|---|---|
    | ce | 0.8000 | 0.0500 |
    | crac | 0.8100 | 0.0300 |
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from calibrant import plot
from calibrant.checkpoint import load_checkpoint, save_checkpoint
from calibrant.engine import evaluate
from calibrant.evaluations import (
    evaluation_name,
    evaluations_section,
    list_evaluations,
    markdown_table,
    update_report_evaluations,
    write_evaluation,
)
from calibrant.metrics import RegionReliabilityCurves, ReliabilityCurve
from calibrant.metrics.items import ItemValues, PairPredictions, TopLabelPredictions
from calibrant.registry import CALIBRATORS, METRICS
from calibrant.runlog import alm_slots

__all__ = [
    "compare_runs",
    "evaluate_run",
    "evaluation_name",
    "list_evaluations",
    "update_report_evaluations",
    "write_evaluation",
    "fit_calibrator",
    "flatten_results",
    "markdown_table",
    "metric_legend",
    "plot_run",
    "save_predictions",
    "write_results",
    "write_run",
]


def flatten_results(results: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested metric results -> flat ``{name: float | list}`` (curves are left out)."""
    flat: dict[str, Any] = {}
    for name, value in results.items():
        key = f"{prefix}{name}"
        if isinstance(value, ReliabilityCurve):
            continue
        if isinstance(value, Mapping):
            flat.update(flatten_results(value, prefix=f"{key}/"))
        elif isinstance(value, torch.Tensor):
            flat[key] = value.item() if value.numel() == 1 else value.tolist()
        elif isinstance(value, (int, float)):
            flat[key] = float(value)
    return flat


def _curves(results: Mapping[str, Any], prefix: str = "") -> dict[str, dict[str, list]]:
    found = {}
    for name, value in results.items():
        if isinstance(value, ReliabilityCurve):
            found[f"{prefix}{name}"] = {k: v.tolist() for k, v in value._asdict().items()}
        elif isinstance(value, Mapping):
            found.update(_curves(value, prefix=f"{prefix}{name}/"))
    return found


def _load_calibrator(path: str | Path | None):
    if path is None:
        return None
    state = load_checkpoint(path, required=("method", "kwargs", "state_dict"))
    calibrator = CALIBRATORS.build(state["method"], **state["kwargs"])
    calibrator.load_state_dict(state["state_dict"])
    return calibrator


def evaluate_run(
    exp: Any,
    run: Path,
    *,
    device: torch.device | str = "cpu",
    amp: str | None = None,
    checkpoint: str = "best",
    calibrator: str | Path | None = None,
    split: str = "test",
    callbacks: Iterable[Any] = (),
    keep_items: bool = False,
) -> dict[str, Any]:
    """Load ``run/checkpoints/<checkpoint>.pt`` into the model and compute the test metrics.

    ``keep_items=True`` also returns what confidence intervals over test items need
    (:mod:`calibrant.metrics.items`): ``"items"``, each test metric's value per loader item (per
    volume) for segmentation, or ``"predictions"``, the per-sample top-label confidence,
    prediction and label (multi-class) or pair probabilities and outcomes (multi-label).

    ``split="val"`` computes the same metrics on the validation split (for tuning); the flat
    values are under ``"test"`` either way, with ``"split"`` saying which split they are from.
    ``callbacks`` (:class:`calibrant.engine.Callback`, e.g. progress bars) see the pass as
    phase ``split``.
    """
    if split not in ("test", "val"):
        raise ValueError(f"split must be 'test' or 'val', got {split!r}")
    ckpt = load_checkpoint(Path(run) / "checkpoints" / f"{checkpoint}.pt", required=("model",))
    exp.model.load_state_dict(ckpt["model"])
    cal = _load_calibrator(calibrator)
    if cal is not None:
        cal = cal.to(device)
    elif exp.output_transform is not None:
        cal = exp.output_transform
    metrics = dict(exp.test_metrics)
    recorder = None
    if keep_items and exp.info.task == "segmentation":
        metrics = {name: ItemValues(m) for name, m in metrics.items()}
    elif keep_items:
        recorder = (
            PairPredictions()
            if exp.info.task == "multilabel"
            else TopLabelPredictions(exp.info.ignore_index)
        )
        metrics[_PREDICTIONS] = recorder
    if exp.info.task != "multilabel":  # top-label curves need class labels
        metrics["reliability"] = RegionReliabilityCurves(
            ignore_index=exp.info.ignore_index,
            regions=exp.info.task == "segmentation",
            num_classes=exp.info.num_classes,
        ).to(device)
    results = evaluate(
        exp.model,
        exp.test_loader if split == "test" else exp.val_loader,
        metrics,
        device=device,
        amp=amp,
        infer=exp.infer,
        calibrator=cal,
        callbacks=callbacks,
        phase=split,
    )
    extra: dict[str, Any] = {}
    if recorder is not None:
        extra["predictions"] = {k: v.tolist() for k, v in results.pop(_PREDICTIONS).items()}
    elif keep_items:
        extra["items"] = {n: m.values for n, m in metrics.items() if isinstance(m, ItemValues)}
    return {
        **extra,
        "test": flatten_results(results),
        "curves": _curves(results),
        "checkpoint": checkpoint,
        "split": split,
        "epoch": ckpt.get("epoch"),
        "calibrator": str(calibrator) if calibrator else None,
    }


_PREDICTIONS = "__predictions__"


def _predictions(exp: Any, loader, device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(logits, target)`` on CPU per item of ``loader`` (volume-wise for 2D segmentation)."""
    exp.model.eval()
    items = []
    with torch.no_grad():
        for inputs, target in loader:
            inputs = inputs.to(device)
            logits = exp.infer(exp.model, inputs) if exp.infer is not None else exp.model(inputs)
            items.append((logits.float().cpu(), target.cpu()))
    return items


def fit_calibrator(
    exp: Any, run: Path, *, method: str = "temperature", device="cpu", checkpoint: str = "best"
) -> Path:
    """Fit a registered calibrator on the validation logits of ``checkpoint``; save it."""
    ckpt = load_checkpoint(Path(run) / "checkpoints" / f"{checkpoint}.pt", required=("model",))
    exp.model.load_state_dict(ckpt["model"])
    factory = CALIBRATORS.get(method).factory
    kwargs = {}
    if "num_classes" in inspect.signature(factory).parameters:
        kwargs["num_classes"] = exp.info.num_classes
    if CALIBRATORS.meta(method).get("from_loss"):  # a fixed map set by the run's loss (φ)
        calibrator = factory.for_loss(exp.criterion)
        kwargs = {k: getattr(calibrator, k) for k in ("gamma_neg", "gamma_pos", "margin")}
    else:
        calibrator = factory(**kwargs)
    batches = _predictions(exp, exp.val_loader, device)
    calibrator.fit_stream(batches, ignore_index=exp.info.ignore_index)
    path = Path(run) / f"calibrator_{method}.pt"
    save_checkpoint(
        path, {"method": method, "kwargs": kwargs, "state_dict": calibrator.state_dict()}
    )
    return path


def save_predictions(exp: Any, run: Path, out: Path, *, split: str = "test", device="cpu") -> Path:
    """Save the logits and targets of a split, one entry per item, to ``out`` (torch.save)."""
    ckpt = load_checkpoint(Path(run) / "checkpoints" / "best.pt", required=("model",))
    exp.model.load_state_dict(ckpt["model"])
    loader = {"val": exp.val_loader, "test": exp.test_loader, "train": exp.train_loader}[split]
    items = [{"logits": x, "target": y} for x, y in _predictions(exp, loader, device)]
    return save_checkpoint(out, {"split": split, "items": items})


def write_results(
    run: Path, results: Mapping[str, Any], exp: Any = None, name: str = "metrics.json"
) -> Path:
    """Merge ``results`` into ``run/<name>`` (keeping the history of an earlier write)."""
    path = Path(run) / name
    payload = json.loads(path.read_text()) if path.exists() else {}
    payload.update(results)
    path.write_text(json.dumps(payload, indent=2, default=str))
    return path


def write_run(
    run: Path, cfg: Mapping[str, Any], history: list, results: Mapping[str, Any], exp: Any
) -> None:
    """Write ``metrics.json``, the figures and ``report.md`` of a finished run."""
    run = Path(run)
    payload = {**results, "history": history, "config": dict(cfg), **_run_info(cfg, exp)}
    (run / "metrics.json").write_text(json.dumps(payload, indent=2, default=str))
    figures = plot_run(run)
    lines = [
        f"# {run.name}",
        "",
        f"Test split, checkpoint `{results.get('checkpoint')}` (epoch {results.get('epoch')}).",
        "",
        markdown_table({run.name: results["test"]}),
        "",
        *metric_legend(dict(cfg).get("eval", {}).get("test_metrics", [])),
        *evaluations_section(run),
        "",
        "## Figures",
        "",
        *[f"![{p.stem}](figures/{p.name})" for p in figures],
        "",
    ]
    (run / "report.md").write_text("\n".join(lines))


ARROWS = {"higher": "↑", "lower": "↓", "zero": "→ 0"}


def metric_legend(specs: Iterable[Mapping[str, Any]]) -> list[str]:
    """Markdown lines explaining each reported metric: direction, protocol, pixel subset.

    The text is the metric's registry entry (``METRICS.register(..., better=, legend=)``, next
    to its definition); ``specs`` are the config's ``eval.test_metrics`` entries, whose options
    are shown beside the registered name.

    Example:
        >>> lines = metric_legend([{"name": "paper_ece", "as": "ece_paper"}])
        >>> print(lines[-2])
        - `ece_paper` ↓ — top-label ECE (15 bins) on ground-truth-foreground pixels, mean over volumes (the papers' protocol, METHODS §7.2). Metric `paper_ece`.
    """  # noqa: E501
    lines = []
    for spec in specs:
        spec = dict(spec)
        name = str(spec.pop("name", ""))
        label = spec.pop("as", None) or name
        pick = spec.pop("pick", None)
        meta = METRICS.meta(name) if name in METRICS else {}
        arrow = ARROWS.get(meta.get("better", ""), "")
        text = meta.get("legend", "no description registered")
        if pick is not None:
            text = f"entry `{pick}` of: {text}"
        options = ", ".join(f"{k}={json.dumps(v)}" for k, v in spec.items())
        source = f"Metric `{name}`" + (f" with {options}" if options else "")
        source = f" {source}." if options or name != label else ""
        lines.append(f"- `{label}`{' ' + arrow if arrow else ''} — {text}.{source}")
    if not lines:
        return []
    head = ["## Metrics", "", "↑ higher is better, ↓ lower is better, → 0 best at zero.", ""]
    return [*head, *lines, ""]


def _run_info(cfg: Mapping[str, Any], exp: Any) -> dict[str, Any]:
    """What the figures and logs need to name things: the task, class and ALM slot names."""
    info = getattr(exp, "info", None)
    if info is None:
        return {}
    names = list(info.class_names)
    out: dict[str, Any] = {"info": {"task": info.task, "class_names": names}}
    loss = dict(cfg).get("loss", {}) or {}
    slots = alm_slots(exp.criterion, names, loss.get("name"))
    if slots:
        out["alm_slots"] = slots
    return out


def plot_run(run: Path) -> list[Path]:
    """Draw a run's figures from ``metrics.json``; returns the files written."""
    run = Path(run)
    payload = json.loads((run / "metrics.json").read_text())
    out = run / "figures"
    out.mkdir(exist_ok=True)
    written = []
    history = payload.get("history", [])
    info = payload.get("info", {})
    names = info.get("class_names")
    if history:
        written.append(plot.save_figure(plot.training_curves(history), out / "training.png"))
        alm = plot.alm_trajectories(history, slots=payload.get("alm_slots"), class_names=names)
        if alm is not None:
            written.append(plot.save_figure(alm, out / "multipliers.png"))
    curves = {
        name.split("/")[-1]: ReliabilityCurve(
            *(torch.tensor(c[f]) for f in ReliabilityCurve._fields)
        )
        for name, c in payload.get("curves", {}).items()
    }
    segmentation = info.get("task", "segmentation" if "inner" in curves else None)
    where = "pixels" if segmentation == "segmentation" else "samples"
    if "all" in curves:
        fig = plot.reliability_diagram(curves["all"], title=f"test, all {where} (top label)")
        written.append(plot.save_figure(fig, out / "reliability.png"))
    classwise = {
        plot.class_label(int(name.split("_")[1]), names): c
        for name, c in curves.items()
        if name.startswith("class_")
    }
    if classwise:
        fig = plot.reliability_grid(classwise)
        written.append(plot.save_figure(fig, out / "reliability_classwise.png"))
    if "inner" in curves and "boundary" in curves:
        fig = plot.region_reliability_diagram(
            {r: curves[r] for r in ("inner", "boundary")},
            titles=("inner pixels", "boundary pixels"),
        )
        written.append(plot.save_figure(fig, out / "reliability_regions.png"))
    return written


def compare_runs(runs: list[Path]) -> str:
    """Markdown table of the test metrics of several run folders, their legend and a reading.

    The legend is the first run's test-metric definitions (:func:`metric_legend`); the
    reading (:func:`reading`) says how over-confident each run is and which number answers
    which question.
    """
    table, specs = {}, []
    for run in runs:
        path = Path(run) / "metrics.json"
        if not path.exists():
            raise FileNotFoundError(f"{str(path)!r} not found: is {str(run)!r} a finished run?")
        payload = json.loads(path.read_text())
        table[Path(run).name] = payload["test"]
        specs = specs or payload.get("config", {}).get("eval", {}).get("test_metrics", [])
    return "\n".join([markdown_table(table), "", *metric_legend(specs), *reading(table)])


#: Which number answers which question, for the metrics a segmentation run reports.
QUESTIONS = (
    ("oc_paper", "Is the network over- or under-confident where the structures are?",
     "the sign and size of confidence − accuracy on ground-truth-foreground pixels"),
    ("ece_paper", "How well calibrated is it on the structures (the papers' ECE)?",
     "ECE on ground-truth-foreground pixels, mean over volumes: compare with the papers"),
    ("tace_paper", "Is every class calibrated, not only the top label?",
     "thresholded class-wise ECE on the same pixels (the papers' TACE)"),
    ("ece_pooled", "How calibrated is the whole image?",
     "ECE over every pixel pooled; about 96 % of ACDC's pixels are easy background, so it "
     "is small for any network and says little about the structures"),
    ("dice", "Does the method cost segmentation quality?",
     "Dice per volume and foreground class, mean"),
)  # fmt: skip


def reading(table: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """A short reading of a comparison: each run's over-confidence and what to trust for what.

    Example:
        >>> lines = reading({"ce": {"oc_paper": 0.05}, "crac": {"oc_paper": -0.01}})
        >>> lines[2]
        '- `ce`: over-confident by 5.0 points (`oc_paper`).'
    """
    oc_key = next(
        (k for k in ("oc_paper", "oc", "oc_pooled") if any(k in m for m in table.values())), None
    )
    lines = ["## Reading", ""]
    if oc_key is not None:
        for name, metrics in table.items():
            value = metrics.get(oc_key)
            if isinstance(value, (int, float)):
                kind = "over-confident" if value > 0 else "under-confident"
                lines.append(f"- `{name}`: {kind} by {100 * abs(value):.1f} points (`{oc_key}`).")
        lines.append("")
    present = [q for q in QUESTIONS if any(q[0] in m for m in table.values())]
    if present:
        lines += ["| question | number | what it is |", "|---|---|---|"]
        lines += [f"| {q} | `{k}` | {what} |" for k, q, what in present]
        lines += [
            "",
            "One seed and one test split: a difference is a result only with its interval "
            "(`calibrant bench`, `calibrant.stats`).",
            "",
        ]
    return lines if len(lines) > 2 else []
