"""One harness over every registered metric, driven only by registry metadata.

Metadata read (``METRICS.meta(name)``):
- ``task``: the inputs generated. ``"multiclass"``: logits ``(B, C, H, W)``, labels ``(B, H, W)``
  with some ``ignore_index``; ``"segmentation"``: the same, larger images (surface distances);
  ``"multilabel"``: logits ``(N, T)``, ``{0, 1}`` targets ``(N, T)``; ``"binary"``: logits
  ``(B, 1, H, W)``, ``{0, 1}`` targets of the same shape.
- ``protocol`` (optional): ``"per_volume"`` means one ``update`` is one volume and the value is
  the mean of the per-volume values, so streaming equals the mean of one-shot values per batch,
  not the one-shot value on the concatenated data.
- ``checks_finite`` (optional, default True): False where non-finite logits are accepted on
  purpose (the registration says why).

Constructor arguments without a default are filled from :data:`REQUIRED_ARGS` by name (read from
the factory's signature); a metric that needs anything else fails :func:`test_can_build`.
"""

from __future__ import annotations

import inspect
import math

import pytest
import torch

import calibrant.metrics  # noqa: F401  (registers every metric)
from calibrant.registry import METRICS
from tests._ddp import run_ddp

NAMES = METRICS.names()
IGNORE = -100
C = 4  # classes (multi-class, segmentation) and labels (multi-label)
QUERIES = [((0,), (1, 2)), ((1, 2), ()), ((3,), (0,))]
REQUIRED_ARGS = {"num_classes": C, "num_labels": C, "queries": QUERIES}
# uneven batches (the per-volume protocol sees each batch as a volume)
SPLITS = (1, 3, 2)
# Per-element values are float32, and a vectorised kernel (softmax) may round an element by one
# ulp differently depending on its place in a chunk, so batching changes float64 sums at float32
# resolution: streamed and DDP values are compared to that, far below any binning effect.
RTOL, ATOL = 1e-7, 1e-10


def build(name: str):
    params = inspect.signature(METRICS.get(name).factory).parameters
    required = [
        k
        for k, p in params.items()
        if p.default is inspect.Parameter.empty and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
    ]
    unknown = [k for k in required if k not in REQUIRED_ARGS]
    assert not unknown, f"{name}: the harness does not know the required arguments {unknown}"
    return METRICS.build(name, **{k: REQUIRED_ARGS[k] for k in required})


def make_data(name: str, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Float32 logits and a target for the metric's task (batch dim 0, ``sum(SPLITS)`` long)."""
    g = torch.Generator().manual_seed(seed)
    task = METRICS.meta(name)["task"]
    n = sum(SPLITS)
    if task in ("multiclass", "segmentation"):
        side = 9 if task == "segmentation" else 5
        logits = 2 * torch.randn(n, C, side, side, generator=g)
        if task == "segmentation":  # blobs, so that surfaces and overlaps are not trivial
            logits = torch.nn.functional.avg_pool2d(logits, 3, 1, 1) * 3
        target = torch.randint(0, C, (n, side, side), generator=g)
        target[torch.rand(target.shape, generator=g) < 0.15] = IGNORE
        return logits, target
    if task == "multilabel":
        logits = 2 * torch.randn(4 * n, C, generator=g)
        return logits, (torch.rand(4 * n, C, generator=g) < 0.4).long()
    assert task == "binary", f"{name}: unknown task {task!r}"
    logits = 2 * torch.randn(n, 1, 6, 6, generator=g)
    return logits, torch.randint(0, 2, (n, 1, 6, 6), generator=g)


def batches(x: torch.Tensor, y: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    sizes = [x.shape[0] // sum(SPLITS) * s for s in SPLITS]
    return list(zip(x.split(sizes), y.split(sizes), strict=True))


def run(name: str, parts) -> object:
    metric = build(name)
    for x, y in parts:
        metric.update(x, y)
    return metric.compute()


def _flat(value) -> list[torch.Tensor]:
    if isinstance(value, dict):
        return [t for k in sorted(value) for t in _flat(value[k])]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _flat(v)]
    return [torch.as_tensor(value).double().reshape(-1)]


def assert_same(got, want, *, rtol: float = 1e-12, atol: float = 1e-12, what: str = "") -> None:
    g, w = _flat(got), _flat(want)
    assert len(g) == len(w), what
    for a, b in zip(g, w, strict=True):
        torch.testing.assert_close(
            a, b, rtol=rtol, atol=atol, equal_nan=True, msg=lambda m: f"{what}: {m}"
        )


def assert_informative(value, name: str) -> None:
    """The compared value is not all NaN (a NaN == NaN comparison would prove nothing)."""
    assert any(bool(torch.isfinite(t).any()) for t in _flat(value)), f"{name}: no finite value"


def expected_stream(name: str, x: torch.Tensor, y: torch.Tensor):
    """What streaming all of ``batches(x, y)`` must give, from one-shot computations."""
    if METRICS.meta(name).get("protocol") == "per_volume":
        per = [float(run(name, [b])) for b in batches(x, y)]
        kept = [v for v in per if not math.isnan(v)]
        return torch.tensor(sum(kept) / len(kept) if kept else math.nan, dtype=torch.float64)
    return run(name, [(x, y)])


# ----------------------------------------------------------------------------------------------
# The checks
# ----------------------------------------------------------------------------------------------


def test_every_metric_declares_a_known_task():
    assert NAMES
    for name in NAMES:
        meta = METRICS.meta(name)
        assert meta.get("task") in ("multiclass", "segmentation", "multilabel", "binary"), name
        assert meta.get("protocol") in (None, "per_volume"), name
        # one registration style: a decorator on a named class or factory, never a lambda
        factory = METRICS.get(name).factory
        assert factory.__name__ != "<lambda>", name
        assert factory.__module__.startswith("calibrant.metrics."), name


@pytest.mark.parametrize("name", NAMES)
def test_can_build(name):
    metric = build(name)
    assert callable(metric.update) and callable(metric.compute) and callable(metric.reset)


@pytest.mark.parametrize("name", NAMES)
def test_streamed_equals_one_shot(name):
    x, y = make_data(name)
    streamed = run(name, batches(x, y))
    assert_informative(streamed, name)
    assert_same(streamed, expected_stream(name, x, y), rtol=RTOL, atol=ATOL, what=name)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
@pytest.mark.parametrize("name", NAMES)
def test_input_dtype_gives_the_float32_value(name, dtype):
    x, y = make_data(name)
    low = x.to(dtype)  # float32 -> float64 is exact; bf16 rounds, and its float32 copy is exact
    want = run(name, batches(low.float(), y))
    got = run(name, batches(low, y))
    assert_informative(want, name)
    assert_same(got, want, rtol=RTOL, atol=ATOL, what=f"{name} {dtype}")


@pytest.mark.parametrize("name", NAMES)
def test_reset_forgets_everything(name):
    x, y = make_data(name)
    first, second, third = batches(x, y)
    metric = build(name)
    metric.update(*first)
    metric.update(*second)
    metric.reset()
    metric.update(*third)
    assert_same(metric.compute(), run(name, [third]), what=name)
    # and the value did depend on the forgotten batches (else this test proves nothing)
    with_all = build(name)
    for b in (first, second, third):
        with_all.update(*b)
    got, want = _flat(with_all.compute()), _flat(run(name, [third]))
    assert any(not torch.allclose(a, b, equal_nan=True) for a, b in zip(got, want, strict=True)), (
        f"{name}: the value ignores earlier batches"
    )


@pytest.mark.parametrize("name", NAMES)
def test_bad_input_raises_value_error(name):
    meta = METRICS.meta(name)
    x, y = make_data(name)
    metric = build(name)
    with pytest.raises(ValueError, match="shape"):
        metric.update(x, y[:-1])
    bad = y.clone()
    bad.view(-1)[5] = C if meta["task"] in ("multiclass", "segmentation") else 2
    with pytest.raises(ValueError, match="label|0 and 1"):
        metric.update(x, bad)
    if meta.get("checks_finite", True):
        for value in (float("nan"), float("inf")):
            nan = x.clone()
            nan.view(-1)[7] = value
            with pytest.raises(ValueError, match="NaN|infinite|finite"):
                metric.update(nan, y)
    # a failed update leaves no trace: the state is what the good batches made it
    metric.update(x, y)
    assert_same(metric.compute(), run(name, [(x, y)]), what=name)


def _ddp_worker(rank: int, world_size: int, names: list[str]) -> dict[str, object]:
    out = {}
    for name in names:
        parts = batches(*make_data(name))
        out[name] = run(name, parts[rank::world_size])  # compute() syncs across the ranks
    return out


@pytest.mark.ddp
def test_ddp_two_processes_equal_single_process():
    """One spawn for every metric: each rank streams its share of the batches."""
    results = run_ddp(_ddp_worker, world_size=2, args=(NAMES,))
    for name in NAMES:
        want = run(name, batches(*make_data(name)))
        assert_informative(want, name)
        for rank, got in enumerate(results):
            assert_same(got[name], want, rtol=RTOL, atol=ATOL, what=f"{name} rank {rank}")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", NAMES)
def test_cpu_equals_cuda(name):
    x, y = make_data(name)
    metric = build(name).to("cuda")
    for xb, yb in batches(x, y):
        metric.update(xb.cuda(), yb.cuda())
    got = [t.cpu() for t in _flat(metric.compute())]
    assert_same(got, run(name, batches(x, y)), rtol=1e-5, atol=1e-7, what=f"{name} cuda")
