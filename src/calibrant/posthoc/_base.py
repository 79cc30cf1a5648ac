"""The fitting machinery the calibrators of :mod:`calibrant.posthoc.temperature` share.

A :class:`Calibrator` subclass defines its parameters, the map and its buffers; this class checks
the inputs, streams the batches (optionally a fixed random subset of pixels), minimises the NLL
with L-BFGS in float64 and keeps the identity map when the fit does not lower the NLL.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from calibrant._checks import (
    check_finite,
    check_labels_in_range,
    check_logits_target,
)
from calibrant._tensor import flatten_classes

__all__ = ["Batches", "Calibrator"]

logger = logging.getLogger(__name__)

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


class Calibrator(nn.Module):
    """Shared fitting machinery. Subclasses define parameters, the map and the buffers."""

    def _init_params(self, num_classes: int) -> list[torch.Tensor]:
        raise NotImplementedError

    def _identity_params(self, num_classes: int) -> list[torch.Tensor]:
        raise NotImplementedError

    def _map(self, x: torch.Tensor, params: list[torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def _store(self, params: list[torch.Tensor]) -> None:
        raise NotImplementedError

    def _expected_classes(self) -> int | None:
        return None

    # ---------------------------------------------------------------- data handling
    def _prepare(
        self,
        logits: torch.Tensor,
        target: torch.Tensor,
        ignore_index: int | None,
        max_pixels: int | None,
        generator: torch.Generator | None,
        validate: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if validate:
            check_logits_target(logits, target, num_classes=self._expected_classes())
            check_finite("logits", logits)
            check_labels_in_range(target, logits.shape[1], ignore_index)
        x = flatten_classes(logits.detach())
        y = target.reshape(-1).long()
        if ignore_index is not None:
            keep = y != ignore_index
            if max_pixels is not None or not bool(keep.all()):
                idx = keep.nonzero().squeeze(1)
                if max_pixels is not None and idx.numel() > max_pixels:
                    pick = torch.randperm(idx.numel(), generator=generator)[:max_pixels]
                    idx = idx[pick.to(idx.device)]
                x, y = x[idx], y[idx]
        elif max_pixels is not None and y.numel() > max_pixels:
            pick = torch.randperm(y.numel(), generator=generator)[:max_pixels].to(y.device)
            x, y = x[pick], y[pick]
        return x.double(), y

    def _passes(
        self,
        batches: Batches,
        ignore_index: int | None,
        max_pixels: int | None,
        generator: torch.Generator | None,
    ) -> Callable[[], Iterator[tuple[torch.Tensor, torch.Tensor]]]:
        if iter(batches) is batches:
            raise ValueError(
                "batches must be re-iterable (a list, or an object whose __iter__ restarts); "
                "got a one-shot iterator"
            )
        if max_pixels is not None and max_pixels < 1:
            raise ValueError(f"max_pixels must be >= 1, got {max_pixels}")
        if max_pixels is not None and generator is None:
            generator = torch.Generator().manual_seed(0)
        state = generator.get_state() if generator is not None else None
        validated = [False]

        def run() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            if generator is not None:
                generator.set_state(state)
            n_valid = 0
            for logits, target in batches:
                x, y = self._prepare(
                    logits, target, ignore_index, max_pixels, generator, not validated[0]
                )
                n_valid += y.numel()
                yield x, y
            if not validated[0]:
                if n_valid == 0:
                    raise ValueError(
                        "no element to fit on: every target is ignore_index "
                        f"({ignore_index}) or the data is empty"
                    )
                validated[0] = True

        return run

    @staticmethod
    def _mean_nll(
        run: Callable[[], Iterator[tuple[torch.Tensor, torch.Tensor]]],
        fn: Callable[[torch.Tensor], torch.Tensor],
        backward: bool,
    ) -> tuple[float, int]:
        total, count = 0.0, 0
        for x, y in run():
            if y.numel() == 0:
                continue
            loss = F.cross_entropy(fn(x), y, reduction="sum")
            if backward:
                loss.backward()
            total += float(loss.detach())
            count += y.numel()
        return total, count

    # ---------------------------------------------------------------- fitting
    def fit_stream(
        self,
        batches: Batches,
        *,
        ignore_index: int | None = -100,
        max_pixels_per_batch: int | None = None,
        generator: torch.Generator | None = None,
        max_iter: int = 100,
    ) -> Calibrator:
        """Fit by minimising the NLL, streaming over ``batches`` in every L-BFGS closure.

        Args:
            batches: re-iterable collection of ``(logits (B, C, *), target (B, *))`` pairs.
            ignore_index: label to skip, or ``None``.
            max_pixels_per_batch: use at most this many valid elements of each batch (a fixed
                subset drawn from ``generator``; seed 0 if none is given).
            generator: randomness for the subset.
            max_iter: maximum L-BFGS iterations.

        Returns:
            ``self``.

        Raises:
            ValueError: on NaN/inf logits, shape or label-range errors, a class-count mismatch,
                or when every element is ignored.
        """
        run = self._passes(batches, ignore_index, max_pixels_per_batch, generator)
        first = next(iter(batches), None)
        if first is None:
            raise ValueError("no element to fit on: batches is empty")
        first = first[0]
        num_classes = first.shape[1] if first.dim() >= 2 else 0
        ident = self._identity_params(num_classes)
        with torch.no_grad():
            ident_loss, count = self._mean_nll(run, lambda x: self._map(x, ident), False)
        params = self._init_params(num_classes)
        opt = torch.optim.LBFGS(
            params,
            lr=1.0,
            max_iter=max_iter,
            line_search_fn="strong_wolfe",
            tolerance_grad=1e-10,
            tolerance_change=1e-14,
        )

        def closure() -> torch.Tensor:
            opt.zero_grad()
            total, n = self._mean_nll(run, lambda x: self._map(x, params), True)
            for p in params:
                p.grad /= n
            return torch.tensor(total / n, dtype=torch.float64)

        opt.step(closure)
        with torch.no_grad():
            final_loss, _ = self._mean_nll(run, lambda x: self._map(x, params), False)
        if not final_loss < ident_loss:
            logger.warning("calibration fit did not lower the NLL; keeping the identity map")
            params, final_loss = ident, ident_loss
        self._store([p.detach() for p in params])
        self.fit_info_ = {
            "nll_before": ident_loss / count,
            "nll_after": final_loss / count,
            "num_elements": count,
        }
        return self

    def fit(
        self,
        logits: torch.Tensor,
        target: torch.Tensor,
        *,
        ignore_index: int | None = -100,
        generator: torch.Generator | None = None,
        max_pixels: int | None = None,
        max_iter: int = 100,
    ) -> Calibrator:
        """Fit on one tensor of validation logits (see :meth:`fit_stream` for the arguments).

        Args:
            logits: ``(B, C, *spatial)`` validation logits.
            target: ``(B, *spatial)`` labels.
            ignore_index: label to skip, or ``None``.
            generator: randomness for the ``max_pixels`` subset.
            max_pixels: fit on a random subset of at most this many valid elements.
            max_iter: maximum L-BFGS iterations.

        Returns:
            ``self``.
        """
        return self.fit_stream(
            [(logits, target)],
            ignore_index=ignore_index,
            max_pixels_per_batch=max_pixels,
            generator=generator,
            max_iter=max_iter,
        )

    def _check_forward(self, logits: torch.Tensor) -> None:
        if not torch.is_floating_point(logits) or logits.dim() < 2:
            raise ValueError(
                f"logits must be a float (B, C, *) tensor, got {logits.dtype} {tuple(logits.shape)}"
            )
        k = self._expected_classes()
        if k is not None and logits.shape[1] != k:
            raise ValueError(f"logits have {logits.shape[1]} classes but num_classes={k}")
