r"""Pooled metrics of bootstrap resamples of the test samples, and their confidence intervals.

A pooled calibration metric (ECE, MCE, equal-mass ACE, accuracy, over-confidence) is not a mean
of per-sample values, so its interval over test samples recomputes the metric on every
resample. The per-sample predictions that :class:`~calibrant.metrics.TopLabelPredictions` (or
:class:`~calibrant.metrics.PairPredictions`, multi-label) records are enough, and every resample
is computed at once:

* a resample is the multiplicity :math:`c_{ri}` of each sample :math:`i` in resample :math:`r`;
* equal-width bins (ECE, MCE) are fixed, so the per-bin sums of all resamples are one matrix
  product :math:`C\,S` of the multiplicities with the samples' per-bin contributions;
* equal-mass bins (ACE) move with the resample; the samples are sorted once and each
  resample's interpolated edges and bin sums are read from prefix sums weighted by
  :math:`c_{ri}` (:func:`calibrant.metrics._binning.adaptive_weighted`);
* accuracy and over-confidence are means of per-sample values.

Each equals the library's one-shot metric on the resampled data (tested), with the same
binning conventions (15 bins, ``[b/n, (b+1)/n)``, METHODS §7.4). The class-wise mAP of
multi-label predictions (``map_y``) is recomputed one resample at a time (slower).

:func:`metric_interval` turns this into a percentile interval (:mod:`calibrant.stats`), or,
with ``against=``, the interval of the paired difference of two models on the same samples.

Example:
    >>> import torch
    >>> from calibrant.metrics import TopLabelPredictions
    >>> g = torch.Generator().manual_seed(0)
    >>> logits = 3 * torch.randn(500, 4, generator=g)
    >>> target = torch.randint(0, 4, (500,), generator=g)
    >>> rec = TopLabelPredictions(); rec.update(logits, target)
    >>> ci = metric_interval(rec.compute(), "ece", n_resamples=1000)
    >>> ci.low < ci.estimate < ci.high
    True
    >>> cooler = TopLabelPredictions(); cooler.update(logits / 3, target)
    >>> diff = metric_interval(cooler.compute(), "ece", against=rec.compute(), n_resamples=1000)
    >>> diff.high < 0   # dividing these over-confident logits by 3 lowers the ECE
    True
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from calibrant.metrics import _binning as K
from calibrant.metrics.ranking import multilabel_classwise_map
from calibrant.stats import Interval, bootstrap_indices, percentile_interval

__all__ = ["RESAMPLED_METRICS", "LOOPED_METRICS", "resampled_metric", "metric_interval"]

Predictions = Mapping[str, Any]


def _arrays(p: Predictions) -> dict[str, np.ndarray]:
    out = {k: v.numpy() if isinstance(v, torch.Tensor) else np.asarray(v) for k, v in p.items()}
    if not (
        {"confidence", "prediction", "label"} <= out.keys()
        or {"probability", "target"} <= out.keys()
    ):
        raise ValueError(
            "predictions must hold 'confidence', 'prediction' and 'label' (TopLabelPredictions) "
            f"or 'probability' and 'target' (PairPredictions); got {sorted(out)}"
        )
    return out


def _counts(idx: np.ndarray, n: int) -> np.ndarray:
    """``(R, n)`` multiplicity of each sample in each resample (rows of ``idx``)."""
    counts = np.zeros((idx.shape[0], n), dtype=np.float64)
    np.add.at(counts, (np.arange(idx.shape[0])[:, None], idx), 1.0)
    return counts


def _pairs(p: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """``(n, T)`` probability and outcome: multi-label pairs, or one top-label pair per sample."""
    if "probability" in p:
        return p["probability"].astype(np.float32), (p["target"] == 1).astype(np.float64)
    correct = (p["prediction"] == p["label"]).astype(np.float64)
    return p["confidence"].astype(np.float32)[:, None], correct[:, None]


def _equal_width(norm: str):
    """ECE (``l1``) or MCE (``max``): fixed bins, so each resample's bins are a matrix product."""

    def f(p: dict[str, np.ndarray], idx: np.ndarray, n_bins: int) -> np.ndarray:
        prob, outcome = _pairs(p)
        n = prob.shape[0]
        b = K.bin_index(torch.from_numpy(prob), n_bins).numpy()  # (n, T)
        rows = np.repeat(np.arange(n), prob.shape[1])
        per_sample = np.zeros((3, n, n_bins))  # count, confidence, outcome of each sample's bins
        for k, v in enumerate((np.ones_like(outcome), prob.astype(np.float64), outcome)):
            np.add.at(per_sample[k], (rows, b.ravel()), v.ravel())
        c = _counts(idx, n)
        count, conf, acc = (c @ s for s in per_sample)
        bins = K.Bins(*(torch.from_numpy(v) for v in (np.rint(count).astype(np.int64), conf, acc)))
        return K.reduce_bins(bins, norm).numpy()

    return f


def _equal_mass(p: dict[str, np.ndarray], idx: np.ndarray, n_bins: int) -> np.ndarray:
    """Equal-mass ACE: sorted once, each resample's bins from weighted prefix sums."""
    prob, outcome = _pairs(p)
    n, labels = prob.shape
    weights = np.repeat(_counts(idx, n), labels, axis=1)  # each pair weighs its sample's count
    bins = K.adaptive_weighted(
        torch.from_numpy(prob.ravel()),
        torch.from_numpy(outcome.ravel()),
        torch.from_numpy(weights),
        n_bins,
    )
    return K.reduce_bins(bins, "l1").numpy()


def _mean_of(values: Callable[[dict[str, np.ndarray]], np.ndarray]):
    def f(p: dict[str, np.ndarray], idx: np.ndarray, n_bins: int) -> np.ndarray:
        return values(p)[idx].mean(axis=1)

    return f


def _accuracy(p: dict[str, np.ndarray]) -> np.ndarray:
    if "probability" in p:
        raise ValueError("'accuracy' needs top-label predictions (TopLabelPredictions)")
    return (p["prediction"] == p["label"]).astype(np.float64)


def _overconfidence(p: dict[str, np.ndarray]) -> np.ndarray:
    prob, outcome = _pairs(p)
    if "probability" in p:  # each sample's mean over its labels' binary decisions
        conf, correct = K.binary_decision(torch.from_numpy(prob), torch.from_numpy(outcome == 1))
        return (conf - correct).mean(1).numpy()
    return prob[:, 0].astype(np.float64) - outcome[:, 0]


def _map_y(p: dict[str, np.ndarray], idx: np.ndarray, n_bins: int) -> np.ndarray:
    if "probability" not in p:
        raise ValueError("'map_y' needs multi-label predictions (PairPredictions)")
    prob, target = torch.from_numpy(p["probability"]), torch.from_numpy(p["target"])
    return np.array(
        [float(multilabel_classwise_map(prob[r], target[r])) for r in map(torch.from_numpy, idx)]
    )


#: Metric name -> ``f(predictions, idx (R, n), n_bins) -> (R,)``.
RESAMPLED_METRICS: dict[str, Callable[..., np.ndarray]] = {
    "ece": _equal_width("l1"),
    "mce": _equal_width("max"),
    "ace": _equal_mass,
    "adaptive_ece": _equal_mass,
    "accuracy": _mean_of(_accuracy),
    "oc": _mean_of(_overconfidence),
    "map_y": _map_y,
}
#: Metrics recomputed one resample at a time (slow at many resamples).
LOOPED_METRICS = frozenset({"map_y"})


def resampled_metric(
    predictions: Predictions, metric: str, idx: np.ndarray, *, n_bins: int = 15
) -> np.ndarray:
    """``metric`` on each resample, ``(R,)``: row ``r`` of ``idx`` ``(R, n)`` lists its samples.

    Args:
        predictions: ``TopLabelPredictions().compute()`` (``confidence``, ``prediction``,
            ``label``) or ``PairPredictions().compute()`` (``probability``, ``target``), as
            tensors or arrays (as ``calibrant bench`` stores them).
        metric: one of :data:`RESAMPLED_METRICS`: ``ece``, ``mce``, ``ace`` (equal-mass,
            alias ``adaptive_ece``), ``accuracy``, ``oc`` (signed over-confidence), ``map_y``.
        idx: sample indices, one resample per row (``np.arange(n)[None]`` is the data itself).
        n_bins: bins of ``ece``, ``mce`` and ``ace``.

    Example:
        >>> p = {"confidence": [0.9, 0.6], "prediction": [1, 0], "label": [1, 1]}
        >>> resampled_metric(p, "accuracy", np.array([[0, 1], [0, 0]])).tolist()
        [0.5, 1.0]
    """
    if metric not in RESAMPLED_METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose from {', '.join(RESAMPLED_METRICS)}")
    K.check_n_bins(n_bins)
    p = _arrays(predictions)
    return RESAMPLED_METRICS[metric](p, np.asarray(idx), n_bins)


def _n_samples(p: Predictions) -> int:
    return len(next(iter(_arrays(p).values())))


def metric_interval(
    predictions: Predictions,
    metric: str,
    *,
    against: Predictions | None = None,
    n_bins: int = 15,
    n_resamples: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> Interval:
    """Percentile bootstrap interval of a pooled ``metric`` over the test samples.

    With ``against`` (another model's predictions on the same samples, in the same order), the
    interval is of the paired difference ``metric(predictions) − metric(against)``: both are
    recomputed on the same resamples, so what the two models find hard cancels out.

    Args:
        predictions: per-sample predictions (see :func:`resampled_metric`).
        metric: see :func:`resampled_metric`.
        against: optional predictions of a model to compare with.
        n_bins: bins of ``ece``, ``mce`` and ``ace``.
        n_resamples: bootstrap resamples.
        level: coverage of the interval.
        seed: seed of the resampling (same inputs and seed, same interval).

    Returns:
        :class:`calibrant.stats.Interval` (estimate on the data as observed).

    Raises:
        ValueError: unknown metric, predictions of the wrong kind, or ``against`` on another
            number of samples.
    """
    n = _n_samples(predictions)
    if against is not None and _n_samples(against) != n:
        raise ValueError(
            f"against has {_n_samples(against)} samples, predictions {n}: a paired interval "
            "needs the same test samples in the same order"
        )

    def value(idx: np.ndarray) -> np.ndarray:
        v = resampled_metric(predictions, metric, idx, n_bins=n_bins)
        if against is not None:
            v = v - resampled_metric(against, metric, idx, n_bins=n_bins)
        return v

    estimate = float(value(np.arange(n)[None])[0])
    low, high = percentile_interval(value(bootstrap_indices(n, n_resamples, seed)), level)
    return Interval(estimate, low, high, level, n_resamples, n)
