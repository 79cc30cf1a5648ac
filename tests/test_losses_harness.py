"""One harness over every registered loss, driven only by registry metadata.

Metadata read (``LOSSES.meta(name)``):
- ``task``: ``"multiclass"`` (target ``(B, *spatial)`` int64 with ``ignore_index``) or
  ``"multilabel"`` (target ``(B, C, *spatial)`` in {0, 1}, ignored entries = ``ignore_index``;
  float32 unless ``target_dtype="long"``).
- ``granularity``: ``"element"`` | ``"sample"`` | ``"batch"``: the shape of ``reduction="none"``.
- ``spatial``: True if at least one spatial dim is needed.
- ``inputs``: ``"two_view"`` for ``forward(logits, logits2, target, valid, valid2)``.
- ``function`` (optional): the pure function; the built module must equal it at the defaults.
- ``max_spatial_dims`` (optional, default 3).
"""

from __future__ import annotations

import pytest
import torch

import calibrant.losses  # noqa: F401  (registers every loss)
from calibrant.registry import LOSSES

IGNORE = -100
# The ALM objectives (metadata ``alm=True``) hold multipliers, need ``num_classes`` and compute in
# float32; tests/test_alm.py covers them (and the fingerprint their values).
NAMES = [n for n in LOSSES.names() if not LOSSES.meta(n).get("alm")]


def _dims(name: str) -> list[int]:
    meta = LOSSES.meta(name)
    lo = 1 if meta.get("spatial", False) else 0
    return list(range(lo, meta.get("max_spatial_dims", 3) + 1))


def _cases(full: bool = True) -> list[tuple[str, int]]:
    """(name, spatial dims); ``full=False`` keeps one dim count per loss (2 where allowed)."""
    out = []
    for n in NAMES:
        dims = _dims(n)
        out += [(n, d) for d in dims] if full else [(n, 2 if 2 in dims else dims[-1])]
    return out


def _spatial(nd: int, small: bool) -> tuple[int, ...]:
    side = {0: 0, 1: 7 if small else 11, 2: 4 if small else 6, 3: 3 if small else 4}[nd]
    return (side,) * nd


def make_inputs(
    name: str,
    nd: int,
    *,
    generator: torch.Generator,
    dtype=torch.float32,
    small: bool = False,
    with_ignore: bool = True,
):
    """Random logits (with grad), target with some ignored elements, plus the ignore mask."""
    meta = LOSSES.meta(name)
    b, c = 2, 3
    sp = _spatial(nd, small)
    logits = (2 * torch.randn(b, c, *sp, generator=generator)).to(dtype).requires_grad_()
    if meta["task"] == "multiclass":
        target = torch.randint(0, c, (b, *sp), generator=generator)
    else:
        target = torch.randint(0, 2, (b, c, *sp), generator=generator)
        if meta.get("target_dtype", "float") != "long":
            target = target.float()
    ignored = torch.rand(target.shape, generator=generator) < (0.25 if with_ignore else 0.0)
    ignored.view(-1)[0] = with_ignore
    ignored.view(-1)[-1] = False  # keep at least one valid element
    target = target.masked_fill(ignored, IGNORE)
    extra = ()
    if meta.get("inputs") == "two_view":
        logits2 = (2 * torch.randn(b, c, *sp, generator=generator)).to(dtype).requires_grad_()
        v1 = torch.rand(b, *sp, generator=generator) > 0.2
        v2 = torch.rand(b, *sp, generator=generator) > 0.2
        return (logits, logits2), target, (v1, v2), ignored
    return (logits,), target, extra, ignored


def call(loss, logits_tuple, target, extra):
    return loss(*logits_tuple, target, *extra)


def expected_none_shape(name, logits, target):
    gran = LOSSES.meta(name)["granularity"]
    if gran == "element":
        return tuple(target.shape)
    if gran == "sample":
        return (logits.shape[0],)
    return ()


@pytest.mark.parametrize(("name", "nd"), _cases())
def test_shapes_and_reductions(name, nd, generator):
    logits, target, extra, _ = make_inputs(name, nd, generator=generator)
    none = call(LOSSES.build(name, reduction="none"), logits, target, extra)
    assert tuple(none.shape) == expected_none_shape(name, logits[0], target)
    assert none.dtype == torch.float32
    for red in ("mean", "sum"):
        value = call(LOSSES.build(name, reduction=red), logits, target, extra)
        assert value.shape == () and torch.isfinite(value)
    if LOSSES.meta(name)["granularity"] == "element":
        # 'sum' is the sum of the per-element values.
        total = call(LOSSES.build(name, reduction="sum"), logits, target, extra)
        torch.testing.assert_close(total, none.sum(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("name", "nd"), _cases())
def test_ignored_elements(name, nd, generator):
    logits, target, extra, ignored = make_inputs(name, nd, generator=generator)
    loss = LOSSES.build(name, ignore_index=IGNORE)
    value = call(loss, logits, target, extra)
    value.backward()
    meta = LOSSES.meta(name)
    # Ignored positions of the logits: (B, *spatial) broadcast over classes, or the element itself.
    pos = ignored.unsqueeze(1).expand_as(logits[0]) if meta["task"] == "multiclass" else ignored
    for x in logits:
        assert x.grad is not None
        assert bool((x.grad[pos] == 0).all()), "ignored elements must get zero gradient"
        assert bool((x.grad[~pos] != 0).any())
    # Changing the ignored logits does not change the value.
    moved = tuple(
        (x.detach() + 50.0 * torch.randn(x.shape, generator=generator) * pos).requires_grad_()
        for x in logits
    )
    torch.testing.assert_close(call(loss, moved, target, extra), value.detach())
    if meta["granularity"] == "element":
        none = call(LOSSES.build(name, reduction="none"), logits, target, extra)
        elem = ignored if meta["task"] == "multiclass" else ignored
        assert bool((none[elem] == 0).all())
        # 'mean' is the mean over valid elements.
        torch.testing.assert_close(value.detach(), none.detach().sum() / (~elem).sum())


@pytest.mark.parametrize(("name", "nd"), _cases(full=False))
def test_module_equals_function(name, nd, generator):
    function = LOSSES.meta(name).get("function")
    logits, target, extra, _ = make_inputs(name, nd, generator=generator)
    if function is None:
        loss = LOSSES.build(name)
        value = call(loss, logits, target, extra)
        if hasattr(loss, "terms"):  # composites (WeightedSum presets): total = sum of the parts
            parts = loss.terms(*logits, target, *extra)
            torch.testing.assert_close(value, sum(parts.values()))
        else:  # no function registered: at least deterministic
            torch.testing.assert_close(value, call(loss, logits, target, extra))
        return
    for red in ("mean", "none"):
        got = call(LOSSES.build(name, reduction=red), logits, target, extra)
        want = function(*logits, target, *extra, ignore_index=IGNORE, reduction=red)
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize(("name", "nd"), _cases(full=False))
def test_gradcheck_float64(name, nd, generator):
    logits, target, extra, _ = make_inputs(
        name, nd, generator=generator, dtype=torch.float64, small=True
    )
    loss = LOSSES.build(name)
    assert torch.autograd.gradcheck(
        lambda *xs: call(loss, xs, target, extra), logits, eps=1e-6, atol=1e-5
    )
    # float64 in, float64 out (no silent downcast that would make gradcheck meaningless).
    assert call(loss, logits, target, extra).dtype == torch.float64


@pytest.mark.parametrize("amp_dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize(("name", "nd"), _cases(full=False))
def test_autocast_low_precision_is_finite_float32(name, nd, amp_dtype, generator):
    logits, target, extra, _ = make_inputs(name, nd, generator=generator)
    low = tuple((x.detach() * 8).to(amp_dtype).requires_grad_() for x in logits)
    with torch.autocast("cpu", dtype=amp_dtype):
        value = call(LOSSES.build(name), low, target, extra)
    assert value.dtype == torch.float32 and torch.isfinite(value)
    value.backward()
    assert all(torch.isfinite(x.grad).all() for x in low)
    # Same number as the float32 computation on the same (rounded) inputs.
    ref = call(LOSSES.build(name), tuple(x.detach().float() for x in low), target, extra)
    torch.testing.assert_close(value.detach(), ref)


@pytest.mark.parametrize("name", NAMES)
def test_bad_inputs_raise(name, generator):
    nd = _dims(name)[-1] if 2 not in _dims(name) else 2
    meta = LOSSES.meta(name)
    logits, target, extra, _ = make_inputs(name, nd, generator=generator, with_ignore=False)
    loss = LOSSES.build(name)
    nan = tuple(x.detach().clone() for x in logits)
    nan[0].view(-1)[3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        call(loss, nan, target, extra)
    bad = target.clone()
    bad.view(-1)[1] = logits[0].shape[1] if meta["task"] == "multiclass" else 2
    with pytest.raises(ValueError):
        call(loss, logits, bad, extra)
    with pytest.raises(ValueError):
        call(loss, logits, target[:1], extra)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize(("name", "nd"), _cases(full=False))
def test_cpu_equals_cuda(name, nd, generator):
    logits, target, extra, _ = make_inputs(name, nd, generator=generator)
    loss = LOSSES.build(name)
    cpu = call(loss, logits, target, extra)
    cpu_grads = torch.autograd.grad(cpu, logits)
    dev = tuple(x.detach().cuda().requires_grad_() for x in logits)
    gpu = call(loss.cuda(), dev, target.cuda(), tuple(e.cuda() for e in extra))
    gpu_grads = torch.autograd.grad(gpu, dev)
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-4, atol=1e-5)
    for a, b in zip(cpu_grads, gpu_grads, strict=True):
        torch.testing.assert_close(b.cpu(), a, rtol=1e-4, atol=1e-6)


def test_registry_has_the_multiclass_methods():
    for name in (
        "ce",
        "ls",
        "focal",
        "focal_adaptive",
        "ecp",
        "mbls",
        "mbls_legacy_l2",
        "svls",
        "nacl",
        "bwcr",
    ):
        assert name in LOSSES
        meta = LOSSES.meta(name)
        assert meta["task"] in ("multiclass", "multilabel")
        assert meta["granularity"] in ("element", "sample", "batch")
