"""Run reports: test evaluation, ``metrics.json``, a Markdown table and the figures.

A run folder written by ``calibrant train`` holds::

    config.json            the resolved config
    checkpoints/           last.pt (resume) and best.pt (model selection)
    metrics.json           test metrics, per-epoch history, ALM trajectories, reliability curves
    report.md              the test table and links to the figures
    figures/               training curves, reliability diagrams (top-label, class-wise,
                           boundary vs interior), lambda/rho trajectories (ALM methods)

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
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from calibrant.checkpoint import load_checkpoint
from calibrant.metrics import RegionReliabilityCurves, ReliabilityCurve

__all__ = [
    "compare_runs",
    "evaluate_run",
    "fit_calibrator",
    "flatten_results",
    "markdown_table",
    "plot_run",
    "save_predictions",
    "write_results",
    "write_run",
]

log = logging.getLogger(__name__)


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
    from calibrant.registry import CALIBRATORS

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
) -> dict[str, Any]:
    """Load ``run/checkpoints/<checkpoint>.pt`` into the model and compute the test metrics.

    ``split="val"`` computes the same metrics on the validation split (for tuning); the flat
    values are under ``"test"`` either way, with ``"split"`` saying which split they are from.
    """
    if split not in ("test", "val"):
        raise ValueError(f"split must be 'test' or 'val', got {split!r}")
    from calibrant.engine import evaluate

    ckpt = load_checkpoint(Path(run) / "checkpoints" / f"{checkpoint}.pt", required=("model",))
    exp.model.load_state_dict(ckpt["model"])
    cal = _load_calibrator(calibrator)
    if cal is not None:
        cal = cal.to(device)
    elif exp.output_transform is not None:
        cal = exp.output_transform
    metrics = dict(exp.test_metrics)
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
    )
    return {
        "test": flatten_results(results),
        "curves": _curves(results),
        "checkpoint": checkpoint,
        "split": split,
        "epoch": ckpt.get("epoch"),
        "calibrator": str(calibrator) if calibrator else None,
    }


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


def fit_calibrator(exp: Any, run: Path, *, method: str = "temperature", device="cpu") -> Path:
    """Fit a registered calibrator on the validation logits of the best checkpoint; save it."""
    from calibrant.checkpoint import save_checkpoint
    from calibrant.registry import CALIBRATORS

    ckpt = load_checkpoint(Path(run) / "checkpoints" / "best.pt", required=("model",))
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
    from calibrant.checkpoint import save_checkpoint

    ckpt = load_checkpoint(Path(run) / "checkpoints" / "best.pt", required=("model",))
    exp.model.load_state_dict(ckpt["model"])
    loader = {"val": exp.val_loader, "test": exp.test_loader, "train": exp.train_loader}[split]
    items = [{"logits": x, "target": y} for x, y in _predictions(exp, loader, device)]
    return save_checkpoint(out, {"split": split, "items": items})


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
    payload = {**results, "history": history, "config": dict(cfg)}
    (run / "metrics.json").write_text(json.dumps(payload, indent=2, default=str))
    figures = plot_run(run)
    lines = [
        f"# {run.name}",
        "",
        f"Test split, checkpoint `{results.get('checkpoint')}` (epoch {results.get('epoch')}).",
        "",
        markdown_table({run.name: results["test"]}),
        "",
        "## Figures",
        "",
        *[f"![{p.stem}](figures/{p.name})" for p in figures],
        "",
    ]
    (run / "report.md").write_text("\n".join(lines))


def plot_run(run: Path) -> list[Path]:
    """Draw a run's figures from ``metrics.json``; returns the files written."""
    from calibrant import plot

    run = Path(run)
    payload = json.loads((run / "metrics.json").read_text())
    out = run / "figures"
    out.mkdir(exist_ok=True)
    written = []
    history = payload.get("history", [])
    if history:
        written.append(plot.save_figure(plot.training_curves(history), out / "training.png"))
        alm = plot.alm_trajectories(history)
        if alm is not None:
            written.append(plot.save_figure(alm, out / "multipliers.png"))
    curves = {
        name.split("/")[-1]: ReliabilityCurve(
            *(torch.tensor(c[f]) for f in ReliabilityCurve._fields)
        )
        for name, c in payload.get("curves", {}).items()
    }
    if "all" in curves:
        fig = plot.reliability_diagram(curves["all"], title="test, all pixels")
        written.append(plot.save_figure(fig, out / "reliability.png"))
    classwise = {
        f"class {name.split('_')[1]}": c for name, c in curves.items() if name.startswith("class_")
    }
    if classwise:
        fig = plot.reliability_grid(classwise)
        written.append(plot.save_figure(fig, out / "reliability_classwise.png"))
    if "inner" in curves and "boundary" in curves:
        fig = plot.region_reliability_diagram({r: curves[r] for r in ("inner", "boundary")})
        written.append(plot.save_figure(fig, out / "reliability_regions.png"))
    return written


def compare_runs(runs: list[Path]) -> str:
    """Markdown table of the test metrics of several run folders."""
    table = {}
    for run in runs:
        path = Path(run) / "metrics.json"
        if not path.exists():
            raise FileNotFoundError(f"{str(path)!r} not found: is {str(run)!r} a finished run?")
        table[Path(run).name] = json.loads(path.read_text())["test"]
    return markdown_table(table)
