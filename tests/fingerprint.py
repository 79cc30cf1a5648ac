"""A numeric fingerprint of every registered loss (ALM objectives included) and metric (issue #17).

Refactors must not change a number. :func:`compute` evaluates, on fixed seeded inputs on CPU:

- every loss in ``LOSSES`` (built with its defaults, ``reduction="mean"``): the value and the
  gradient of every logits input, in float32 and float64;
- every ALM objective in ``LOSSES`` (``alm=True``, CE + penalty; keys ``alm/<name>/...``, as
  when they had a registry of their own): the value and gradient with the initial
  multipliers, then the multipliers and penalty parameters after one ``observe``/``step`` round,
  and the value again with the updated multipliers;
- every metric in ``METRICS`` (built with its defaults): the computed value(s), fed two batches.

``python -m tests.fingerprint`` writes ``tests/data/fingerprint.npz``;
``tests/test_fingerprint.py`` compares a fresh computation with it, bit for bit.
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

import numpy as np
import torch

import calibrant.alm  # noqa: F401  (registers the presets)
import calibrant.losses  # noqa: F401
import calibrant.metrics  # noqa: F401
from calibrant.registry import LOSSES, METRICS

STORE = Path(__file__).parent / "data" / "fingerprint.npz"
IGNORE = -100
B, C, SIDE = 2, 3, 6


def _seed(name: str) -> torch.Generator:
    return torch.Generator().manual_seed(sum(name.encode()) * 7919)


def _multiclass(g: torch.Generator, dtype, *, spatial: bool = True):
    shape = (B, SIDE, SIDE) if spatial else (4 * B,)
    logits = (2 * torch.randn(shape[0], C, *shape[1:], generator=g)).to(dtype)
    target = torch.randint(0, C, shape, generator=g)
    target = target.masked_fill(torch.rand(shape, generator=g) < 0.2, IGNORE)
    return logits, target


def _multilabel(g: torch.Generator, dtype, *, long: bool = False):
    logits = (2 * torch.randn(4 * B, C, generator=g)).to(dtype)
    target = torch.randint(0, 2, (4 * B, C), generator=g)
    return logits, (target if long else target.to(dtype))


def _loss_inputs(name: str, dtype) -> tuple[tuple[torch.Tensor, ...], torch.Tensor, tuple]:
    meta, g = LOSSES.meta(name), _seed(name)
    if meta["task"] == "multilabel":
        logits, target = _multilabel(g, dtype, long=meta.get("target_dtype") == "long")
        return (logits,), target, ()
    logits, target = _multiclass(g, dtype)
    if meta.get("inputs") == "two_view":
        logits2 = (2 * torch.randn(logits.shape, generator=g)).to(dtype)
        valid = tuple(torch.rand(B, SIDE, SIDE, generator=g) > 0.2 for _ in range(2))
        return (logits, logits2), target, valid
    return (logits,), target, ()


def _value_and_grads(loss, logits, target, extra) -> list[np.ndarray]:
    leaves = [x.clone().requires_grad_() for x in logits]
    value = loss(*leaves, target, *extra)
    value.backward()
    return [value.detach().numpy(), *(x.grad.numpy() for x in leaves)]


def _losses(out: dict[str, np.ndarray]) -> None:
    for name in LOSSES.names():
        if LOSSES.meta(name).get("alm"):
            continue
        for dtype in (torch.float32, torch.float64):
            logits, target, extra = _loss_inputs(name, dtype)
            loss = LOSSES.build(name, reduction="mean")
            for i, a in enumerate(_value_and_grads(loss, logits, target, extra)):
                out[f"loss/{name}/{dtype}/{'value' if i == 0 else f'grad{i}'}"] = a


def _alm(out: dict[str, np.ndarray]) -> None:
    for name in LOSSES.names(alm=True):
        g = _seed(name)
        logits, target = _multiclass(g, torch.float32)
        criterion = LOSSES.build(name, num_classes=C, ignore_index=IGNORE)
        key = f"alm/{name}"
        for i, a in enumerate(_value_and_grads(criterion, (logits,), target, ())):
            out[f"{key}/before/{'value' if i == 0 else 'grad'}"] = a
        term = criterion.parts["alm"]
        for _ in range(2):
            term.observe((logits + torch.randn(logits.shape, generator=g)).detach(), target)
        term.step()
        _flatten(dict(term.state_dict()), f"{key}/state", out)
        out[f"{key}/after/value"] = _value_and_grads(criterion, (logits,), target, ())[0]


_METRIC_ARGS = {"num_classes": C, "num_labels": C, "queries": [((0,), (1, 2)), ((1, 2), ())]}


def _metric_batches(name: str):
    task, g = METRICS.meta(name)["task"], _seed(name)
    for _ in range(2):
        if task == "multilabel":
            yield _multilabel(g, torch.float32, long=True)
        elif task == "binary":
            logits = 2 * torch.randn(B, 1, SIDE, SIDE, generator=g)
            yield logits, torch.randint(0, 2, (B, 1, SIDE, SIDE), generator=g)
        else:
            logits, target = _multiclass(g, torch.float32)
            yield logits, target.clamp_min(0)  # segmentation metrics take no ignored pixels


def _flatten(value, key: str, out: dict[str, np.ndarray]) -> None:
    if isinstance(value, dict):
        for k in sorted(value):
            _flatten(value[k], f"{key}/{k}", out)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _flatten(v, f"{key}/{i}", out)
    elif value is not None and not isinstance(value, str):
        out[key] = np.asarray(torch.as_tensor(value).detach().numpy())


def _metrics(out: dict[str, np.ndarray]) -> None:
    for name in METRICS.names():
        params = inspect.signature(METRICS.get(name).factory).parameters
        required = {
            k: _METRIC_ARGS[k]
            for k, p in params.items()
            if k in _METRIC_ARGS and p.default is inspect.Parameter.empty
        }
        metric = METRICS.build(name, **required)
        for logits, target in _metric_batches(name):
            metric.update(logits, target)
        _flatten(metric.compute(), f"metric/{name}", out)


def compute() -> dict[str, np.ndarray]:
    """Every fingerprinted number, by key (CPU, one thread: sums in a fixed order)."""
    out: dict[str, np.ndarray] = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng():
            torch.manual_seed(0)
            _losses(out)
            _alm(out)
            _metrics(out)
    finally:
        torch.set_num_threads(threads)
    return out


if __name__ == "__main__":
    STORE.parent.mkdir(exist_ok=True)
    values = compute()
    np.savez_compressed(STORE, **values)
    print(f"{len(values)} arrays -> {STORE}", file=sys.stderr)
