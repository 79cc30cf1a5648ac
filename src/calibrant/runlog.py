"""TensorBoard and CSV logs of a training run (``calibrant train --logger``).

:class:`RunLogger` is a :class:`calibrant.engine.Callback`. At the end of every epoch it writes
to ``<run>/logs/``:

========================================  ====================================================
tag                                       value
========================================  ====================================================
``train/loss``, ``train/<term>``          the epoch's mean loss and each named term of it
``val/<metric>``                          the validation metrics (dict-valued ones as
                                          ``val/<metric>/<key>``)
``lr`` (``lr/group<i>`` for several)      the learning rate(s) used in the epoch
``lambda/<slot>``, ``rho/<slot>``,        λ, ρ and the observed violation (ALM) or score
``violation/<slot>``                      (heuristic rule) of every multiplier slot, named
                                          by region and class (``inner/right_ventricle``);
                                          a criterion with several ALM terms adds ``_alm<i>``
                                          to the first part (``lambda_alm1/...``)
``test/<metric>``                         the test metrics of the best checkpoint, once
``val/reliability`` (image)               the validation top-label reliability diagram, every
                                          epoch (TensorBoard, classification and segmentation)
========================================  ====================================================

The step of every value is the epoch (1-based). ``kind``:

- ``"tensorboard"``: TensorBoard event files (``tensorboard --logdir runs/``) **and**
  ``scalars.csv``; needs the ``tensorboard`` package (in ``calibrant[cli]``).
- ``"csv"``: ``scalars.csv`` only (long format: ``epoch,tag,value``, one row per scalar).
- ``"none"``: nothing (``metrics.json`` still holds the history).
- ``"auto"`` (the command line's default): ``tensorboard`` when the package is installed, else
  ``csv``.

Only rank 0 writes; every rank computes the validation reliability curve (its ``compute`` is
collective under DDP). A resumed run appends: rows and events of epochs that are trained again
are dropped first (TensorBoard's ``purge_step``).

Example:
    >>> import tempfile, pathlib, csv
    >>> with tempfile.TemporaryDirectory() as d:
    ...     logger = RunLogger(d, "csv")
    ...     logger.on_epoch_end({"epoch": 1, "train": {"loss": 0.5}, "val": {"dice": 0.8},
    ...                          "alm": {}, "lr": [0.01]})
    ...     logger.close()
    ...     rows = list(csv.reader(open(pathlib.Path(d) / "logs" / "scalars.csv")))
    >>> rows
    [['epoch', 'tag', 'value'], ['1', 'train/loss', '0.5'], ['1', 'val/dice', '0.8'], ['1', 'lr', '0.01']]
"""  # noqa: E501

from __future__ import annotations

import csv
import importlib.util
import logging
import math
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from calibrant import plot
from calibrant.alm.term import alm_terms
from calibrant.engine import Callback
from calibrant.metrics.calibration import CalibrationError
from calibrant.registry import LOSSES

__all__ = ["LOGGERS", "RunLogger", "alm_slots", "resolve_logger"]

log = logging.getLogger(__name__)

LOGGERS = ("auto", "tensorboard", "csv", "none")
LOG_DIR = "logs"
CSV_NAME = "scalars.csv"
_TAG = re.compile(r"[^-/\w.]")  # TensorBoard's tag alphabet; anything else becomes "_"


def tensorboard_available() -> bool:
    """True when the ``tensorboard`` package (TensorBoard's event writer) is installed."""
    return importlib.util.find_spec("tensorboard") is not None


def resolve_logger(kind: str) -> str:
    """``auto`` -> ``tensorboard`` or ``csv``; a missing package for ``tensorboard`` is an error.

    Raises:
        ValueError: an unknown kind, or ``tensorboard`` without the package (the message names
            the extra that brings it).
    """
    if kind not in LOGGERS:
        raise ValueError(f"--logger must be one of {', '.join(LOGGERS)}; got {kind!r}")
    if kind == "auto":
        return "tensorboard" if tensorboard_available() else "csv"
    if kind == "tensorboard" and not tensorboard_available():
        raise ValueError(
            "--logger tensorboard needs the tensorboard package: pip install 'calibrant[cli]' "
            "(or pip install tensorboard); --logger csv writes the same scalars without it"
        )
    return kind


def alm_slots(
    criterion: torch.nn.Module,
    class_names: Iterable[str] | None = None,
    loss_name: str | None = None,
) -> dict[str, dict[str, Any]]:
    """Name, layout and slot names of every ALM term, keyed like the history (``alm<i>``).

    Example:
        >>> from calibrant.alm.presets import crac
        >>> slots = alm_slots(crac(2), ["background", "LV"], "crac")
        >>> slots["alm0"]["method"], slots["alm0"]["slots"][1]
        ('CRaC', 'inner/LV')
    """
    names = list(class_names) if class_names is not None else None
    label = loss_name
    if loss_name is not None and loss_name in LOSSES:
        label = LOSSES.meta(loss_name).get("label", loss_name)
    terms = alm_terms(criterion)
    out = {}
    for i, term in enumerate(terms):
        layout = getattr(term, "layout", None)
        method = label or type(term).__name__
        out[f"alm{i}"] = {
            "method": method if len(terms) == 1 else f"{method} (term {i})",
            "layout": getattr(layout, "name", None),
            "slots": layout.slot_names(names) if layout is not None else None,
        }
    return out


def _flat(value: Any, prefix: str) -> dict[str, float]:
    """Scalars of a (nested) metric value; lists and curves are left out."""
    if isinstance(value, torch.Tensor):
        return {prefix: float(value)} if value.numel() == 1 else {}
    if isinstance(value, bool):
        return {}
    if isinstance(value, (int, float)):
        return {prefix: float(value)}
    if isinstance(value, Mapping):
        out: dict[str, float] = {}
        for k, v in value.items():
            out.update(_flat(v, f"{prefix}/{k}"))
        return out
    return {}


def epoch_scalars(
    record: Mapping[str, Any], slots: Mapping[str, Mapping[str, Any]] | None = None
) -> dict[str, float]:
    """The scalars of one ``engine.fit`` epoch record, by TensorBoard tag.

    Example:
        >>> rec = {"epoch": 1, "train": {"loss": 1.0, "ce": 0.8, "steps": 5}, "val": {"acc": 0.5},
        ...        "alm": {"alm0": {"lambda": [0.1, 0.2], "rho": [1.0, 1.0]}}, "lr": [0.1]}
        >>> sorted(epoch_scalars(rec, {"alm0": {"slots": ["cat", "dog"]}}))
        ['lambda/cat', 'lambda/dog', 'lr', 'rho/cat', 'rho/dog', 'train/ce', 'train/loss', 'val/acc']
    """  # noqa: E501
    out: dict[str, float] = {}
    for k, v in record.get("train", {}).items():
        if k != "steps":
            out.update(_flat(v, f"train/{k}"))
    for k, v in record.get("val", {}).items():
        out.update(_flat(v, f"val/{k}"))
    lrs = list(record.get("lr", []))
    for i, lr in enumerate(lrs):
        out["lr" if len(lrs) == 1 else f"lr/group{i}"] = float(lr)
    alm = record.get("alm", {})
    for term, rec in alm.items():
        names = (slots or {}).get(term, {}).get("slots")
        suffix = "" if len(alm) == 1 else f"_{term}"
        for part in ("lambda", "rho", "violation"):
            if part not in rec:
                continue
            values = torch.as_tensor(rec[part], dtype=torch.float64).reshape(-1).tolist()
            if names is None or len(names) != len(values):
                names_i = [f"slot {j}" for j in range(len(values))]
            else:
                names_i = list(names)
            for name, value in zip(names_i, values, strict=True):
                out[f"{part}{suffix}/{name}"] = float(value)
    return {_TAG.sub("_", tag): value for tag, value in out.items()}


class RunLogger(Callback):
    """TensorBoard event files and/or ``scalars.csv`` of a run (see the module docstring).

    Args:
        out: the run folder; files go to ``out/logs/``.
        kind: ``tensorboard``, ``csv``, ``none`` or ``auto``.
        rank: only rank 0 writes.
        resume: the run continues an earlier one (keep its logs up to the resumed epoch).
        images: draw the validation reliability diagram every epoch (TensorBoard only).
    """

    def __init__(
        self,
        out: str | Path,
        kind: str = "auto",
        *,
        rank: int = 0,
        resume: bool = False,
        images: bool = True,
    ) -> None:
        self.kind = resolve_logger(kind)
        self.dir = Path(out) / LOG_DIR
        self.rank, self.resume = rank, resume
        self.images = images and self.kind == "tensorboard"
        self.slots: dict[str, dict[str, Any]] = {}
        self.class_names: list[str] | None = None
        self._curve_metric: Any = None
        self._val_curve: Any = None
        self._writer: Any = None
        self._rows: list[tuple[int, str, float]] | None = None
        self._last_epoch = 0

    @property
    def writes(self) -> bool:
        """True on the rank that writes, when something is written at all."""
        return self.rank == 0 and self.kind != "none"

    # -- set-up --------------------------------------------------------------------------------
    def setup(self, experiment: Any) -> None:
        """Read class and slot names from the built run; prepare the validation curve."""
        info = experiment.info
        self.class_names = list(getattr(info, "class_names", ()) or ()) or None
        loss = dict(experiment.cfg.get("loss", {})) if getattr(experiment, "cfg", None) else {}
        self.slots = alm_slots(experiment.criterion, self.class_names, loss.get("name"))
        if self.images and getattr(info, "task", "multilabel") != "multilabel":
            metric = CalibrationError(15, ignore_index=info.ignore_index)
            device = next(iter(experiment.model.parameters()), torch.zeros(())).device
            self._curve_metric = metric.to(device)

    # -- validation curve (every rank) ---------------------------------------------------------
    def on_eval_start(self, phase: str, total: int | None) -> None:
        """Reset the validation reliability curve."""
        if phase == "val" and self._curve_metric is not None:
            self._curve_metric.reset()

    def on_eval_batch(self, phase: str, logits: torch.Tensor, target: torch.Tensor) -> None:
        """Add a validation batch to the reliability curve."""
        if phase == "val" and self._curve_metric is not None:
            self._curve_metric.update(logits, target)

    def on_eval_end(self, phase: str, results: Mapping[str, Any]) -> None:
        """Keep the validation curve (collective); log the test metrics."""
        if phase == "val" and self._curve_metric is not None:
            with self._curve_metric.sync_context():
                self._val_curve = self._curve_metric.curve()
        elif phase == "test" and self.writes:
            scalars = {}
            for k, v in results.items():
                scalars.update(_flat(v, f"test/{k}"))
            scalars = {_TAG.sub("_", t): v for t, v in scalars.items()}
            self._write(max(self._last_epoch, 1), scalars)

    # -- epochs --------------------------------------------------------------------------------
    def on_epoch_end(self, record: Mapping[str, Any]) -> None:
        """Write the epoch's scalars (and the reliability diagram)."""
        epoch = int(record["epoch"])
        self._last_epoch = epoch
        if not self.writes:
            return
        self._write(epoch, epoch_scalars(record, self.slots))
        if self._val_curve is not None and self._writer is not None:
            self._image(epoch, self._val_curve)
            self._val_curve = None

    def _image(self, epoch: int, curve: Any) -> None:
        import matplotlib  # the optional plot extra: loaded only when a diagram is drawn

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        fig = plot.reliability_diagram(curve, title=f"validation, epoch {epoch}")
        self._writer.add_figure("val/reliability", fig, global_step=epoch, close=True)
        plt.close(fig)
        self._writer.flush()

    def _open(self, epoch: int) -> None:
        """Create the folder and writers at the first write (a failed start writes nothing)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / CSV_NAME
        rows: list[tuple[int, str, float]] = []
        if self.resume and path.is_file():  # keep the epochs before the resumed one
            with path.open(newline="") as f:
                for row in csv.DictReader(f):
                    try:
                        if int(row["epoch"]) < epoch:
                            rows.append((int(row["epoch"]), row["tag"], float(row["value"])))
                    except (KeyError, TypeError, ValueError):
                        continue
        self._rows = rows
        if self.kind == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter  # optional (calibrant[cli])

            purge = epoch if self.resume else None
            self._writer = SummaryWriter(str(self.dir), purge_step=purge)

    def _write(self, epoch: int, scalars: Mapping[str, float]) -> None:
        if self._rows is None:
            self._open(epoch)
        for tag, value in scalars.items():
            self._rows.append((epoch, tag, value))
            if self._writer is not None and math.isfinite(value):
                self._writer.add_scalar(tag, value, global_step=epoch)
        if self._writer is not None:
            self._writer.flush()
        tmp = self.dir / (CSV_NAME + ".tmp")
        with tmp.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["epoch", "tag", "value"])
            w.writerows((e, t, repr(v) if isinstance(v, float) else v) for e, t, v in self._rows)
        tmp.replace(self.dir / CSV_NAME)

    def close(self) -> None:
        """Flush and close the event file."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
