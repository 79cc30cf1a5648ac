"""The plumbing shared by the calibration metrics and the proper scores (private).

* :class:`Inputs` is the element selection that every metric of
  :mod:`~calibrant.metrics.calibration`, :mod:`~calibrant.metrics.classwise`,
  :mod:`~calibrant.metrics.scores` and :mod:`~calibrant.metrics.overconfidence` takes: the ignored
  label, the pixel subset and whether the scores are logits or probabilities. It validates a
  batch and cuts it into the chunks of :mod:`~calibrant.metrics._binning`.
* :class:`StreamingMetric` is the base of every metric class: not differentiable, no full-state
  update, zero-initialised sum states.
* :class:`CalMetric` keeps fixed-size sum states (float64 sums, int64 counts,
  ``dist_reduce_fx="sum"``), so streaming over batches and DDP ranks gives the one-shot value;
  :class:`MeanMetric` is the case of one float64 total over an int64 count.
* :func:`ratio` is the mean of a total over a count, NaN when nothing was counted.
* :func:`element_function` and :func:`binned_function` give a metric's functional form the
  public signature shared by these modules, so each function states only its body.
* :func:`register_norms` registers one class under several names, one per ``norm``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, NamedTuple, TypeVar

import torch
from torch import Tensor
from torchmetrics import Metric

from calibrant._checks import check_choice
from calibrant.metrics import _binning as K
from calibrant.registry import METRICS

__all__ = [
    "CalMetric",
    "Inputs",
    "MeanMetric",
    "StreamingMetric",
    "binned_function",
    "element_function",
    "ratio",
    "register_norms",
]

_T = TypeVar("_T")


class Inputs(NamedTuple):
    """What a batch must look like, and which of its elements a calibration metric reads.

    Attributes:
        ignore_index: label excluded from the metric (``None``: none).
        pixel_subset: ``"all"`` or ``"gt_fg"`` (only elements whose label is not 0).
        input_kind: ``"logits"`` or ``"probs"``.
        num_classes: if given, the number of classes the logits must have on dim 1.
    """

    ignore_index: int | None = -100
    pixel_subset: str = "all"
    input_kind: str = "logits"
    num_classes: int | None = None

    def check(self) -> Inputs:
        """Raise on an unknown ``pixel_subset`` or ``input_kind``; return ``self``."""
        check_choice("pixel_subset", self.pixel_subset, K.PIXEL_SUBSETS)
        check_choice("input_kind", self.input_kind, K.INPUT_KINDS)
        return self

    def check_batch(self, logits: Tensor, target: Tensor, mask: Tensor | None) -> None:
        """Shape, dtype and option checks of a batch (values are checked as they are read)."""
        K.check_inputs(
            logits,
            target,
            num_classes=self.num_classes,
            mask=mask,
            input_kind=self.input_kind,
            pixel_subset=self.pixel_subset,
        )

    def chunks(self, logits: Tensor, target: Tensor, mask: Tensor | None) -> Iterator[K.Chunk]:
        """Check a batch now and return its ``(C, L)`` chunks (:func:`~._binning.iter_chunks`).

        Values (finite logits, labels in range) are checked chunk by chunk as they are read.
        Iterate under ``torch.no_grad()`` and :func:`calibrant._tensor.float32`.
        """
        self.check_batch(logits, target, mask)
        return K.iter_chunks(
            logits,
            target,
            ignore_index=self.ignore_index,
            mask=mask,
            pixel_subset=self.pixel_subset,
        )


def element_function(body: Callable[..., _T]) -> Callable[..., _T]:
    """The public form of ``body(logits, target, mask, inputs)``: a metric over selected elements.

    The returned function has the signature ``(logits, target, *, ignore_index=-100, mask=None,
    pixel_subset="all", input_kind="logits")``, builds the :class:`Inputs` and calls ``body``;
    it takes ``body``'s name, module and docstring (which documents these public arguments).
    ``body`` names its :class:`Inputs` parameter ``_inputs``: it is not a public argument.
    """

    def function(
        logits: torch.Tensor,
        target: torch.Tensor,
        *,
        ignore_index: int | None = -100,
        mask: torch.Tensor | None = None,
        pixel_subset: str = "all",
        input_kind: str = "logits",
    ) -> _T:
        return body(logits, target, mask, Inputs(ignore_index, pixel_subset, input_kind))

    return _named_like(function, body)


def binned_function(body: Callable[..., _T]) -> Callable[..., _T]:
    """:func:`element_function` for ``body(logits, target, mask, inputs, n_bins)``.

    The public signature adds ``n_bins=15`` (before ``ignore_index``).
    """

    def function(
        logits: torch.Tensor,
        target: torch.Tensor,
        *,
        n_bins: int = 15,
        ignore_index: int | None = -100,
        mask: torch.Tensor | None = None,
        pixel_subset: str = "all",
        input_kind: str = "logits",
    ) -> _T:
        inputs = Inputs(ignore_index, pixel_subset, input_kind)
        return body(logits, target, mask, inputs, n_bins)

    return _named_like(function, body)


def _named_like(function: Callable[..., _T], body: Callable[..., _T]) -> Callable[..., _T]:
    """``function`` under ``body``'s module, name, docstring and return annotation.

    No ``__wrapped__``: :func:`inspect.signature` must report the public signature, not the body's.
    """
    for attr in ("__module__", "__name__", "__qualname__", "__doc__"):
        setattr(function, attr, getattr(body, attr))
    function.__annotations__["return"] = body.__annotations__["return"]
    return function


def register_norms(cls: type[Metric], legends: dict[str, tuple[str, str]], **meta: Any) -> None:
    """Register ``cls`` in :data:`~calibrant.registry.METRICS` once per ``norm``.

    Args:
        cls: a metric class whose constructor takes ``norm``.
        legends: registry name -> (``norm``, legend); each name builds ``cls(norm=norm, **kwargs)``.
        **meta: metadata shared by the entries (``task``, ``better``).
    """
    for name, (norm, legend) in legends.items():
        METRICS.register(name, legend=legend, **meta)(_with_norm(cls, norm))


def _with_norm(cls: type[_T], norm: str) -> Callable[..., _T]:
    def factory(**kwargs: Any) -> _T:
        return cls(norm=norm, **kwargs)

    return factory


def ratio(total: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """``total / count``, or NaN (of ``total``'s dtype) when ``count`` is 0."""
    return total / count if int(count) else total.new_tensor(float("nan"))


class StreamingMetric(Metric):
    """Base of calibrant's metric classes: not differentiable, no full-state update.

    A subclass sets ``higher_is_better`` and registers its sums with :meth:`_add_sum`.
    """

    is_differentiable = False
    full_state_update = False

    def _add_sum(
        self, name: str, shape: int | tuple[int, ...] = (), dtype: torch.dtype = torch.float64
    ) -> None:
        """Register a zero state ``name`` of ``shape`` and ``dtype``, summed across ranks."""
        self.add_state(name, torch.zeros(shape, dtype=dtype), dist_reduce_fx="sum")


class CalMetric(StreamingMetric):
    """Base: fixed-size sum states; ``_value()`` computes from local state without syncing.

    Also the base of the scores in :mod:`calibrant.metrics.scores`, so
    :class:`~calibrant.metrics.calibration.PerVolumeMean` wraps any of them.
    """

    higher_is_better = False

    def _set_inputs(
        self,
        ignore_index: int | None,
        pixel_subset: str,
        input_kind: str,
        num_classes: int | None = None,
    ) -> None:
        self.inputs = Inputs(ignore_index, pixel_subset, input_kind, num_classes).check()

    def _add_bins(self, shape: tuple[int, ...]) -> None:
        """Register per-bin ``count`` (int64), ``conf`` and ``acc`` (float64) sums of ``shape``."""
        self._add_sum("count", shape, torch.int64)
        self._add_sum("conf", shape)
        self._add_sum("acc", shape)

    def _bins(self) -> K.Bins:
        return K.Bins(self.count, self.conf, self.acc)

    def _add_to_bins(self, new: K.Bins) -> None:
        for state, v in zip(self._bins(), new, strict=True):
            state.add_(v)

    def compute(self) -> torch.Tensor:
        """Metric value over everything seen (synchronised across ranks by torchmetrics)."""
        return self._value()

    def _value(self) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


class MeanMetric(CalMetric):
    """Base of the metrics that are a mean over elements: a float64 ``total``, an int64 ``count``.

    A subclass calls :meth:`_add_mean_state` once and :meth:`_add_to_mean` in ``update``; the
    value is :func:`ratio` of the two.
    """

    def _add_mean_state(self) -> None:
        self._add_sum("total")
        self._add_sum("count", dtype=torch.int64)

    def _add_to_mean(self, total: torch.Tensor, count: torch.Tensor) -> None:
        self.total += total
        self.count += count

    def _value(self) -> torch.Tensor:
        return ratio(self.total, self.count)
