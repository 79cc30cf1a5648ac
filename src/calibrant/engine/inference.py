"""Evaluation: sliding-window and per-volume prediction, and the validation pass."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn

from calibrant import distributed as dist_utils
from calibrant.engine.steps import Callback, _len, _to, autocast_context

logger = logging.getLogger(__name__)


@torch.no_grad()
def sliding_window(
    model: nn.Module,
    volume: torch.Tensor,
    window: tuple[int, ...],
    *,
    overlap: float = 0.5,
    batch_size: int = 4,
) -> torch.Tensor:
    """Sliding-window inference of a 3D model over ``(1, in_ch, *spatial)``, averaging overlaps.

    The volume is padded (replicate) to at least the window, windows are placed on a regular grid
    with the given overlap (the last one flush with the end), and logits are averaged.
    """
    spatial = volume.shape[2:]
    pads = [max(w - s, 0) for w, s in zip(window, spatial, strict=True)]
    padded = nn.functional.pad(
        volume, [p for d in reversed(pads) for p in (0, d)], mode="replicate"
    )
    shape = padded.shape[2:]
    starts = []
    for w, s in zip(window, shape, strict=True):
        stride = max(int(w * (1 - overlap)), 1)
        pos = list(range(0, s - w + 1, stride))
        if pos[-1] != s - w:
            pos.append(s - w)
        starts.append(pos)
    grid = torch.cartesian_prod(*[torch.tensor(p) for p in starts]).view(-1, len(window)).tolist()
    out = weight = None
    for i in range(0, len(grid), batch_size):
        corners = grid[i : i + batch_size]
        crops = torch.cat(
            [
                padded[(..., *[slice(c, c + w) for c, w in zip(corner, window, strict=True)])]
                for corner in corners
            ]
        )
        logits = model(crops).float()
        if out is None:
            out = logits.new_zeros((1, logits.shape[1], *shape))
            weight = logits.new_zeros((1, 1, *shape))
        for j, corner in enumerate(corners):
            region = (..., *[slice(c, c + w) for c, w in zip(corner, window, strict=True)])
            out[region] += logits[j : j + 1]
            weight[region] += 1
    out = out / weight
    return out[(..., *[slice(0, s) for s in spatial])]


@torch.no_grad()
def predict_volume(
    model: nn.Module,
    volume: torch.Tensor,
    *,
    model_dims: int,
    batch_size: int = 16,
    window: tuple[int, ...] | None = None,
) -> torch.Tensor:
    """Logits ``(1, C, *spatial)`` of a volume ``(1, in_ch, *spatial)``.

    A 2D model (``model_dims=2``) predicts slice by slice along the first spatial axis and the
    slices are stacked back into the volume; a 3D model runs whole (or with ``sliding_window``
    when ``window`` is given).
    """
    if model_dims == 3:
        if window is None:
            return model(volume).float()
        return sliding_window(model, volume, window, batch_size=batch_size)
    if model_dims != 2 or volume.dim() != 5:
        raise ValueError(
            f"predict_volume needs a (1, in_ch, S, H, W) volume and model_dims 2 or 3, got "
            f"shape {tuple(volume.shape)} and model_dims={model_dims}"
        )
    slices = volume[0].movedim(1, 0)  # (S, in_ch, H, W)
    parts = [model(slices[i : i + batch_size]).float() for i in range(0, len(slices), batch_size)]
    return torch.cat(parts).movedim(0, 1).unsqueeze(0)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable,
    metrics: Mapping[str, Any],
    *,
    device: torch.device | str = "cpu",
    amp: str | None = None,
    observers: Iterable[nn.Module] = (),
    infer: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None,
    calibrator: nn.Module | None = None,
    callbacks: Iterable[Callback] = (),
    phase: str = "val",
) -> dict[str, Any]:
    """Update every metric (and every ALM observer) on each batch, then compute.

    Args:
        model: the network; put in eval mode here.
        loader: yields ``(inputs, target)``; one item is one volume in volume mode.
        metrics: name -> torchmetrics-style object with ``reset``/``update(logits, target)``/
            ``compute``; their own DDP sync makes the result global.
        device: where batches go.
        amp: autocast mode for the forward pass.
        observers: modules with ``observe(logits, target)`` (ALM multipliers).
        infer: ``infer(model, inputs) -> logits``; default ``model(inputs)``
            (use :func:`predict_volume` for slice-wise volume evaluation).
        calibrator: optional post-hoc module applied to the logits before the metrics.
        callbacks: :class:`Callback` objects (progress, logging); their ``on_eval_*`` hooks get
            ``phase``.
        phase: name of the pass given to the callbacks (``"val"``, ``"test"``...).

    Returns:
        name -> computed value (tensors as returned by the metrics).
    """
    model.eval()
    device = torch.device(device)
    observers = list(observers)
    callbacks = list(callbacks)
    for metric in metrics.values():
        metric.reset()
    for cb in callbacks:
        cb.on_eval_start(phase, _len(loader))
    for inputs, target in loader:
        inputs, target = _to(inputs, device), _to(target, device)
        with autocast_context(device, amp):
            logits = infer(model, inputs) if infer is not None else model(inputs)
        logits = logits.float()
        for obs in observers:
            obs.observe(logits, target)
        if calibrator is not None:
            logits = calibrator(logits)
        for metric in metrics.values():
            metric.update(logits, target)
        for cb in callbacks:
            cb.on_eval_batch(phase, logits, target)
    results = {name: metric.compute() for name, metric in metrics.items()}
    for cb in callbacks:
        cb.on_eval_end(phase, results)
    dist_utils.barrier()
    return results
