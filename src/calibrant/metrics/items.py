r"""What confidence intervals need from a test pass: per-item values and per-sample predictions.

A streaming metric keeps fixed-size sums, which is what makes it exact and DDP-safe, but an
interval over test items (:mod:`calibrant.stats`) needs the items themselves. Two recorders sit
beside the metrics during one evaluation pass, on one process:

* :class:`ItemValues` wraps a metric and records the value of each ``update`` on its own (one
  update is one volume in the segmentation protocol, so these are the per-volume values whose
  mean the papers report), while the wrapped metric still accumulates everything (each item is
  given to both, so per-item values cost one more update per item).
* :class:`TopLabelPredictions` / :class:`PairPredictions` keep, per sample, what a pooled
  calibration metric is computed from: the top-label confidence, the prediction and the label
  (multi-class), or the probability and outcome of every (sample, label) pair (multi-label). A
  pooled ECE (or ACE) of any resample of the samples is then recomputed from these.

They hold Python lists, not metric states: they are not synchronised across processes and are
meant for a single-process test pass (``calibrant bench`` runs one process per run).

Example:
    >>> import torch
    >>> from calibrant.metrics import OverConfidence
    >>> rec = ItemValues(OverConfidence())
    >>> rec.update(torch.tensor([[3.0, 0.0]]), torch.tensor([0]))
    >>> rec.update(torch.tensor([[0.0, 2.0]]), torch.tensor([0]))
    >>> [round(v, 4) for v in rec.values], round(float(rec.compute()), 4)
    ([-0.0474, 0.8808], 0.4167)
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch

from calibrant._tensor import float32
from calibrant.metrics import _binning as K
from calibrant.metrics._base import Inputs

__all__ = ["ItemValues", "PairPredictions", "TopLabelPredictions"]


class ItemValues:
    """Record the value of each ``update`` of ``metric`` on its own (``values``), as a float.

    ``compute()`` is the wrapped metric's value over every update. A value that is not a
    scalar (a dict or per-class tensor) is recorded as NaN.

    Args:
        metric: a torchmetrics-style metric (``reset``/``update``/``compute``).
    """

    def __init__(self, metric: Any) -> None:
        self.metric = metric
        self._item = copy.deepcopy(metric)
        self._item.sync_on_compute = False  # one item's value is local, never all-reduced
        self.values: list[float] = []

    def reset(self) -> None:
        """Forget every item and the wrapped metric's state."""
        self.metric.reset()
        self.values = []

    def update(self, *args: Any, **kwargs: Any) -> None:
        """Add one item to the running metric and record its own value."""
        self.metric.update(*args, **kwargs)
        self._item.reset()
        self._item.update(*args, **kwargs)
        value = self._item.compute()
        scalar = isinstance(value, torch.Tensor) and value.numel() == 1
        self.values.append(float(value) if scalar else math.nan)

    def compute(self) -> Any:
        """The wrapped metric over every item."""
        return self.metric.compute()

    def to(self, device: Any) -> ItemValues:
        """Move both copies of the metric."""
        self.metric.to(device)
        self._item.to(device)
        return self


class TopLabelPredictions:
    """Per-sample top-label confidence, prediction and label of a multi-class test pass.

    Elements with ``ignore_index`` are dropped. ``compute()`` returns a dict of 1-D tensors
    ``confidence`` (float32), ``prediction`` and ``label`` (int64). The confidence is the
    softmax maximum computed by the top-label calibration metrics' own kernel
    (:func:`calibrant.metrics._binning.top_label`), so a pooled ECE recomputed from these
    records bins exactly the values that :class:`~calibrant.metrics.CalibrationError` bins; the
    prediction is the first maximal class, as ``torch.argmax``. Logits and labels are checked
    as the metrics check them (finite logits, labels in range).

    Example:
        >>> rec = TopLabelPredictions()
        >>> rec.update(torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([0, -100]))
        >>> {k: v.tolist() for k, v in rec.compute().items()}["prediction"]
        [0]
    """

    def __init__(self, ignore_index: int | None = -100) -> None:
        self.ignore_index = ignore_index
        self.reset()

    def reset(self) -> None:
        """Forget every sample."""
        self._parts: list[tuple[torch.Tensor, ...]] = []

    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch ``(B, C, *spatial)`` / ``(B, *spatial)``."""
        chunks = Inputs(self.ignore_index).chunks(logits.detach(), target, None)
        with torch.no_grad(), float32(logits):
            for ch in chunks:
                conf, _, _ = K.top_label(ch.z, ch.t, "logits")
                pred = ch.z.argmax(0)
                self._parts.append(
                    (conf[ch.valid].cpu(), pred[ch.valid].cpu(), ch.t[ch.valid].cpu())
                )

    def compute(self) -> dict[str, torch.Tensor]:
        """The samples seen so far, in order."""
        names = ("confidence", "prediction", "label")
        if not self._parts:
            return {n: torch.zeros(0) for n in names}
        return {
            n: torch.cat(col) for n, col in zip(names, zip(*self._parts, strict=True), strict=True)
        }

    def to(self, device: Any) -> TopLabelPredictions:
        """Nothing to move (kept on the CPU)."""
        return self


class PairPredictions:
    """Per-sample probabilities ``sigmoid(v)`` and ``{0, 1}`` outcomes of a multi-label pass.

    ``compute()`` returns ``probability`` (float32) and ``target`` (int64), both ``(N, T)``.

    Example:
        >>> rec = PairPredictions()
        >>> rec.update(torch.tensor([[0.0, 2.0]]), torch.tensor([[1, 0]]))
        >>> rec.compute()["probability"].shape
        torch.Size([1, 2])
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget every sample."""
        self._parts: list[tuple[torch.Tensor, torch.Tensor]] = []

    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch ``(B, T)``."""
        with torch.no_grad(), float32(logits):
            p = torch.sigmoid(logits.detach().float())
        self._parts.append((p.cpu(), target.long().cpu()))

    def compute(self) -> dict[str, torch.Tensor]:
        """The samples seen so far, in order."""
        if not self._parts:
            return {"probability": torch.zeros(0, 0), "target": torch.zeros(0, 0)}
        p, y = zip(*self._parts, strict=True)
        return {"probability": torch.cat(p), "target": torch.cat(y)}

    def to(self, device: Any) -> PairPredictions:
        """Nothing to move (kept on the CPU)."""
        return self
