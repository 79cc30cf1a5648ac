r"""Post-hoc calibrators fitted on frozen logits: temperature, vector and class-wise temperature.

All three are :class:`torch.nn.Module` objects in scikit-learn shape: ``fit(...) -> self`` on
held-out (validation) logits, then ``forward(logits)`` returns calibrated **logits**. Fitted
values live in buffers, so ``state_dict`` / ``load_state_dict`` and ``.to()`` work.

Fitting minimises the mean negative log-likelihood over all non-ignored elements (pixels of a
segmentation included, background too; METHODS §6):

.. math::
    \mathcal L(\theta) = -\frac{1}{|V|}\sum_{i\in V}\log\operatorname{softmax}(g_\theta(l_i))_{y_i}

with L-BFGS (strong-Wolfe line search) in float64:

- :class:`TemperatureScaling`: :math:`g(l) = l / T`, optimised over :math:`\log T` (keeps
  :math:`T > 0`) from :math:`T_0 = 1.5` (gpleiss reference). ``method="grid"`` instead evaluates a
  grid (default :data:`DEFAULT_GRID` = 0.05, 0.10, ..., 10.00) and keeps the T with the lowest
  top-label ECE (15 equal-width bins of :mod:`calibrant.metrics`: ``[lower, upper)``, 1.0 last;
  ``grid_metric="nll"`` selects on NLL instead; ties keep the smallest T).
- :class:`VectorScaling`: :math:`g(l)_k = w_k l_k + b_k` from :math:`w = 1, b = 0`.
- :class:`ClasswiseTemperature`: :math:`g(l)_k = l_k / T_k` over :math:`\log T_k`, from 1.5.

Streaming. ``fit_stream(batches)`` takes a *re-iterable* collection of ``(logits, target)`` pairs
(a list of per-volume tensors, or any object whose ``__iter__`` restarts) and re-iterates it in
every L-BFGS closure, back-propagating batch by batch; only one batch is in memory at a time and
nothing O(N) is accumulated. With ``max_pixels_per_batch`` a fixed random subset of each batch's
valid pixels is used, drawn from ``generator`` whose state is restored at the start of every pass,
so every closure sees the same subset. ``fit(logits, target)`` is the one-batch case.

Safety: after L-BFGS, if the loss is not below that of the identity map (T = 1, or w = 1, b = 0),
the identity is kept, so fitting never increases the NLL on the fit data.

Reference:
    Guo et al., "On Calibration of Modern Neural Networks", ICML 2017.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F

from calibrant._checks import (
    check_choice,
)
from calibrant._tensor import float32
from calibrant.metrics._binning import Bins, bin_values, empty_bins, reduce_bins
from calibrant.posthoc._base import Batches, Calibrator
from calibrant.registry import CALIBRATORS

__all__ = [
    "DEFAULT_GRID",
    "ClasswiseTemperature",
    "TemperatureScaling",
    "VectorScaling",
]

#: Grid of temperatures searched by ``TemperatureScaling(method="grid")``: 0.05 to 10.0 by 0.05.
DEFAULT_GRID = tuple(round(0.05 * i, 2) for i in range(1, 201))


def _add_top_label_bins(
    into: Bins, x: torch.Tensor, y: torch.Tensor, temps: torch.Tensor, n_bins: int
) -> None:
    """Add a batch to per-temperature top-label bins ``(G, n_bins)`` (the ECE metric's kernels)."""
    correct = x.argmax(1) == y  # argmax does not depend on T > 0
    valid = torch.ones_like(correct)
    for g, t in enumerate(temps):
        conf = torch.softmax(x / t, dim=1).amax(1)
        bin_values(Bins(*(b[g] for b in into)), conf, correct, valid, n_bins)


def _per_class(v: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    return v.float().reshape(1, -1, *([1] * (logits.dim() - 2)))


@CALIBRATORS.register("temperature", task="multiclass")
class TemperatureScaling(Calibrator):
    r"""Scalar temperature scaling :math:`l' = l / T` (argmax unchanged).

    Args:
        method: ``"lbfgs"`` (NLL over :math:`\log T` from :math:`T_0`) or ``"grid"``.
        init_temperature: :math:`T_0` for L-BFGS.
        grid: temperatures searched by ``method="grid"`` (default :data:`DEFAULT_GRID`).
        grid_metric: ``"ece"`` (15 equal-width bins) or ``"nll"``.
        n_bins: bins of the grid-search ECE.

    Shape:
        forward: ``(B, C, *spatial)`` -> float32 ``(B, C, *spatial)``.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> z = torch.randn(4000, 5, generator=g) * 2
        >>> y = torch.multinomial(torch.softmax(z, 1), 1, generator=g).squeeze(1)
        >>> ts = TemperatureScaling().fit(3.0 * z, y)
        >>> round(float(ts.temperature), 1)
        3.0
        >>> torch.equal(ts(3.0 * z).argmax(1), z.argmax(1))
        True
    """

    def __init__(
        self,
        *,
        method: str = "lbfgs",
        init_temperature: float = 1.5,
        grid: Iterable[float] | None = None,
        grid_metric: str = "ece",
        n_bins: int = 15,
    ) -> None:
        super().__init__()
        check_choice("method", method, ("lbfgs", "grid"))
        check_choice("grid_metric", grid_metric, ("ece", "nll"))
        if not init_temperature > 0:
            raise ValueError(f"init_temperature must be > 0, got {init_temperature}")
        self.method = method
        self.init_temperature = init_temperature
        self.grid = tuple(DEFAULT_GRID if grid is None else grid)
        if not self.grid or min(self.grid) <= 0:
            raise ValueError("grid must be a non-empty collection of positive temperatures")
        self.grid_metric = grid_metric
        self.n_bins = n_bins
        self.register_buffer("temperature", torch.ones((), dtype=torch.float64))

    def _init_params(self, num_classes: int) -> list[torch.Tensor]:
        return [
            torch.tensor(math.log(self.init_temperature), dtype=torch.float64, requires_grad=True)
        ]

    def _identity_params(self, num_classes: int) -> list[torch.Tensor]:
        return [torch.zeros((), dtype=torch.float64)]

    def _map(self, x: torch.Tensor, params: list[torch.Tensor]) -> torch.Tensor:
        return x * torch.exp(-params[0].to(x.device))

    def _store(self, params: list[torch.Tensor]) -> None:
        self.temperature.copy_(torch.exp(params[0]))

    def fit_stream(self, batches: Batches, **kwargs) -> TemperatureScaling:  # noqa: D102
        if self.method == "lbfgs":
            return super().fit_stream(batches, **kwargs)
        kwargs.pop("max_iter", None)
        run = self._passes(
            batches,
            kwargs.get("ignore_index", -100),
            kwargs.get("max_pixels_per_batch"),
            kwargs.get("generator"),
        )
        temps = torch.tensor(self.grid, dtype=torch.float64)
        bins = empty_bins((len(temps), self.n_bins), torch.device("cpu"))
        nll = torch.zeros(len(temps), dtype=torch.float64)
        count = 0
        with torch.no_grad():
            for x, y in run():
                if y.numel() == 0:
                    continue
                count += y.numel()
                if self.grid_metric == "ece":
                    batch = empty_bins((len(temps), self.n_bins), x.device)
                    _add_top_label_bins(batch, x, y, temps.to(x.device), self.n_bins)
                    for total, part in zip(bins, batch, strict=True):
                        total += part.cpu()
                else:
                    for g, t in enumerate(temps.tolist()):
                        nll[g] += float(F.cross_entropy(x / t, y, reduction="sum"))
        score = reduce_bins(bins, "l1") if self.grid_metric == "ece" else nll / max(count, 1)
        best = int(torch.argmin(score))  # first minimum = smallest T on ties
        self.temperature.fill_(float(temps[best]))
        self.fit_info_ = {"grid_score": float(score[best]), "num_elements": count}
        return self

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        """Return ``logits / T`` in float32."""
        self._check_forward(logits)
        with float32(logits):
            return logits.float() / self.temperature.float()


@CALIBRATORS.register("vector", task="multiclass")
class VectorScaling(Calibrator):
    r"""Vector scaling :math:`l'_k = w_k l_k + b_k` (may change the argmax).

    Args:
        num_classes: number of classes ``C`` (fixes the buffer shapes for ``state_dict``).

    Shape:
        forward: ``(B, C, *spatial)`` -> float32 ``(B, C, *spatial)``.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> z = torch.randn(2000, 3, generator=g)
        >>> y = torch.multinomial(torch.softmax(z, 1), 1, generator=g).squeeze(1)
        >>> vs = VectorScaling(3).fit(2 * z + torch.tensor([1.0, 0.0, 0.0]), y)
        >>> vs.weight.shape, vs.fit_info_["nll_after"] < vs.fit_info_["nll_before"]
        (torch.Size([3]), True)
    """

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.register_buffer("weight", torch.ones(num_classes, dtype=torch.float64))
        self.register_buffer("bias", torch.zeros(num_classes, dtype=torch.float64))

    def _expected_classes(self) -> int | None:
        return self.num_classes

    def _init_params(self, num_classes: int) -> list[torch.Tensor]:
        return [p.requires_grad_() for p in self._identity_params(num_classes)]

    def _identity_params(self, num_classes: int) -> list[torch.Tensor]:
        return [
            torch.ones(self.num_classes, dtype=torch.float64),
            torch.zeros(self.num_classes, dtype=torch.float64),
        ]

    def _map(self, x: torch.Tensor, params: list[torch.Tensor]) -> torch.Tensor:
        return x * params[0].to(x.device) + params[1].to(x.device)

    def _store(self, params: list[torch.Tensor]) -> None:
        self.weight.copy_(params[0])
        self.bias.copy_(params[1])

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        """Return ``w * logits + b`` over dim 1, in float32."""
        self._check_forward(logits)
        with float32(logits):
            return logits.float() * _per_class(self.weight, logits) + _per_class(self.bias, logits)


@CALIBRATORS.register("classwise_temperature", task="segmentation")
class ClasswiseTemperature(Calibrator):
    r"""Class-wise temperature :math:`l'_k = l_k / T_k`, fitted by streaming over volumes.

    Use :meth:`fit_stream` with a list of per-volume ``(logits, target)`` pairs: each L-BFGS
    closure iterates the volumes once (memory of one volume; optionally a fixed pixel subset of
    each via ``max_pixels_per_batch``).

    Args:
        num_classes: number of classes ``C``.
        init_temperature: :math:`T_0` of every class.

    Shape:
        forward: ``(B, C, *spatial)`` -> float32 ``(B, C, *spatial)``.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> vols = []
        >>> for _ in range(3):
        ...     z = torch.randn(1, 3, 16, 16, generator=g) * 2
        ...     p = torch.softmax(z, 1).movedim(1, -1).reshape(-1, 3)
        ...     y = torch.multinomial(p, 1, generator=g).reshape(1, 16, 16)
        ...     vols.append((2.0 * z, y))
        >>> ct = ClasswiseTemperature(3).fit_stream(vols)
        >>> ct.temperature.shape
        torch.Size([3])
    """

    def __init__(self, num_classes: int, *, init_temperature: float = 1.5) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if not init_temperature > 0:
            raise ValueError(f"init_temperature must be > 0, got {init_temperature}")
        self.num_classes = num_classes
        self.init_temperature = init_temperature
        self.register_buffer("temperature", torch.ones(num_classes, dtype=torch.float64))

    def _expected_classes(self) -> int | None:
        return self.num_classes

    def _init_params(self, num_classes: int) -> list[torch.Tensor]:
        t0 = math.log(self.init_temperature)
        return [torch.full((self.num_classes,), t0, dtype=torch.float64, requires_grad=True)]

    def _identity_params(self, num_classes: int) -> list[torch.Tensor]:
        return [torch.zeros(self.num_classes, dtype=torch.float64)]

    def _map(self, x: torch.Tensor, params: list[torch.Tensor]) -> torch.Tensor:
        return x * torch.exp(-params[0].to(x.device))

    def _store(self, params: list[torch.Tensor]) -> None:
        self.temperature.copy_(torch.exp(params[0]))

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        """Return ``logits_k / T_k`` over dim 1, in float32."""
        self._check_forward(logits)
        with float32(logits):
            return logits.float() / _per_class(self.temperature, logits)
