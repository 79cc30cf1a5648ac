"""Private binning kernels shared by every calibration metric (top-label, class-wise, multi-label).

Design (see ``docs/metrics_calibration.md``):

* Logits ``(B, C, *spatial)`` are visited in cache-sized chunks laid out as ``(C, L)`` (classes on
  rows, ``L`` pixels/samples on columns), so every per-pixel reduction over classes is a
  vectorised elementwise pass and temporaries stay a few MiB whatever ``N`` is.
* A value ``p`` in ``[0, 1]`` goes to bin ``min(floor(fl32(p * n)), n - 1)``: bins are
  ``[b/n, (b+1)/n)`` except that ``1.0`` lands in the last bin and ``0.0`` in the first.
* Per-bin sums are produced by ``torch.bincount`` over one integer slot index
  ``bin + n * outcome`` (and ``+ 2n * class`` for class-wise), weighted by float64 values, and are
  accumulated in float64 (sums) and int64 (counts). Invalid elements go to a trailing dump slot,
  so masks never change shapes.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import torch

from calibrant._checks import check_choice, check_logits_target

__all__: list[str] = []

#: Target number of float32 elements per chunk (C * L); ~2 MiB keeps the chunk in L2/L3.
CHUNK_ELEMENTS = 1 << 19
INPUT_KINDS = ("logits", "probs")
PIXEL_SUBSETS = ("all", "gt_fg")


class Bins(NamedTuple):
    """Per-bin sums: ``count`` (int64), ``conf`` and ``acc`` (float64); any leading shape."""

    count: torch.Tensor
    conf: torch.Tensor
    acc: torch.Tensor


# ----------------------------------------------------------------------------------------------
# Input handling
# ----------------------------------------------------------------------------------------------


def check_inputs(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    num_classes: int | None,
    mask: torch.Tensor | None,
    input_kind: str,
    pixel_subset: str,
) -> None:
    """Shape/dtype/argument checks that do not read values (value checks happen per chunk)."""
    check_choice("input_kind", input_kind, INPUT_KINDS)
    check_choice("pixel_subset", pixel_subset, PIXEL_SUBSETS)
    check_logits_target(logits, target, num_classes=num_classes)
    if mask is not None:
        if mask.dtype != torch.bool:
            raise ValueError(f"mask must be a bool tensor, got dtype {mask.dtype}")
        if mask.shape != target.shape:
            raise ValueError(
                f"mask shape {tuple(mask.shape)} must equal target shape {tuple(target.shape)}"
            )


def check_n_bins(n_bins: int, name: str = "n_bins") -> None:
    """Raise unless ``n_bins`` is a positive int."""
    if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 1:
        raise ValueError(f"{name} must be a positive integer, got {n_bins!r}")


class Workspace:
    """A reusable float32 buffer: one allocation for all chunks (no page faults per chunk)."""

    def __init__(self) -> None:
        self.buf: torch.Tensor | None = None

    def like(self, z: torch.Tensor) -> torch.Tensor:
        """A contiguous float32 tensor shaped like ``z`` backed by the shared buffer."""
        n = z.numel()
        if self.buf is None or self.buf.numel() < n or self.buf.device != z.device:
            self.buf = torch.empty(n, dtype=torch.float32, device=z.device)
        return self.buf[:n].view(z.shape)


class Chunk(NamedTuple):
    """One chunk: scores ``z`` (C, L) float32, safe labels ``t`` (L,) int64, ``valid`` (L,) bool."""

    z: torch.Tensor
    t: torch.Tensor
    valid: torch.Tensor


def iter_chunks(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    ignore_index: int | None,
    mask: torch.Tensor | None,
    pixel_subset: str,
    chunk_elements: int = CHUNK_ELEMENTS,
) -> Iterator[Chunk]:
    """Yield ``(C, L)`` float32 chunks of ``logits`` with their labels and validity.

    Labels outside ``[0, C)`` other than ``ignore_index`` raise :class:`ValueError`, also where
    ``mask`` is False (as NaN logits there do; checked per chunk with two tiny reductions).
    ``t`` holds 0 where ``valid`` is False.
    """
    B, C = logits.shape[:2]
    x = logits.reshape(B, C, -1)
    S = x.shape[2]
    y = target.reshape(B, S)
    m = mask.reshape(B, S) if mask is not None else None
    L = max(1, chunk_elements // max(C, 1))
    if S >= L // 2:  # big volumes: chunk along space inside each sample (views, no copies)
        spans = [(b, b + 1, s, min(s + L, S)) for b in range(B) for s in range(0, S, L)]
    else:  # small samples: several whole samples per chunk
        per = max(1, L // max(S, 1))
        spans = [(b, min(b + per, B), 0, S) for b in range(0, B, per)]
    buf = None
    for b0, b1, s0, s1 in spans:
        if b1 - b0 == 1:
            z = x[b0, :, s0:s1]
            if z.dtype != torch.float32 or z.stride(-1) != 1:
                z = z.float().contiguous()
            t = y[b0, s0:s1]
            mm = m[b0, s0:s1] if m is not None else None
        else:
            part = x[b0:b1, :, s0:s1]
            n = (b1 - b0) * (s1 - s0)
            if buf is None or buf.numel() < C * n:
                buf = torch.empty(C * n, dtype=torch.float32, device=x.device)
            z = buf[: C * n].view(C, b1 - b0, s1 - s0)
            z.copy_(part.transpose(0, 1))
            z = z.view(C, -1)
            t = y[b0:b1, s0:s1].reshape(-1)
            mm = m[b0:b1, s0:s1].reshape(-1) if m is not None else None
        t = t.long()
        valid = t != ignore_index if ignore_index is not None else torch.ones_like(t, dtype=bool)
        t = torch.where(valid, t, 0)
        lo, hi = torch.aminmax(t) if t.numel() else (t.new_zeros(()), t.new_zeros(()))
        if int(lo) < 0 or int(hi) >= C:
            bad = torch.unique(t[(t < 0) | (t >= C)])[:5].tolist()
            raise ValueError(
                f"target holds labels outside [0, {C}) (ignore_index={ignore_index}): {bad}"
            )
        if mm is not None:  # the range check above covers masked-out elements too
            valid &= mm
            t = torch.where(mm, t, 0)
        if pixel_subset == "gt_fg":
            valid &= t != 0
        yield Chunk(z, t, valid)


def _check_chunk_finite(z: torch.Tensor, zmax: torch.Tensor, input_kind: str) -> None:
    """Raise on NaN/inf (and on probabilities outside [0, 1]) using per-column extrema.

    ``amax``/``amin`` propagate NaN, so both extrema are finite exactly when the column is.
    They are tested one by one: ``zmax - zmin`` overflows for finite logits such as ``±3e38``.
    """
    zmin = z.amin(0)
    if input_kind == "probs":
        if not bool(((zmin >= 0) & (zmax <= 1)).all()):  # NaN fails both comparisons
            raise ValueError("probs must be finite and lie in [0, 1] (input_kind='probs')")
    elif not bool((torch.isfinite(zmax) & torch.isfinite(zmin)).all()):
        n_nan = int(torch.isnan(z).sum())
        raise ValueError(
            f"logits contain NaN or infinite values ({n_nan} NaN in the offending chunk)"
        )


def softmax_stats(
    z: torch.Tensor, input_kind: str, out: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(zmax, e)`` with ``e = exp(z - zmax)`` for logits, or ``(zmax, z)`` for probs.

    ``out`` (same shape as ``z``) is reused for ``e`` to avoid a fresh allocation per chunk.
    For finite logits ``z - zmax <= 0``; where it overflows to ``-inf`` (a spread beyond the
    float32 range), ``exp`` gives the 0 that the exact value rounds to anyway.
    """
    zmax = z.amax(0)
    _check_chunk_finite(z, zmax, input_kind)
    if input_kind == "probs":
        return zmax, z
    e = torch.sub(z, zmax, out=out) if out is not None else z - zmax
    return zmax, e.exp_()


def top_label(
    z: torch.Tensor, t: torch.Tensor, input_kind: str, out: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-label confidence, correctness (first-index argmax, like ``torch.argmax``) and ``e``.

    Returns ``conf`` (L,) float32, ``correct`` (L,) bool and the exponentials/probabilities used.
    """
    zmax, e = softmax_stats(z, input_kind, out)
    if input_kind == "probs":
        # Probabilities given by the caller need not sum to 1, so a tie can sit at any value
        # (0.9 and 0.9): take argmax itself.
        return zmax, z.argmax(0) == t, e
    conf = e.sum(0).reciprocal_()  # max_k softmax = exp(0) / sum_k exp(z_k - max)
    correct = z.gather(0, t.unsqueeze(0)).squeeze(0) == zmax
    # Ties: the target may share the max with an earlier class, which argmax would pick.
    # A tie puts two exact 1.0 terms in sum_k exp(z_k - max) >= 2, so conf <= 0.5: only those
    # columns need the exact (slower) test.
    maybe_tie = correct & (conf <= 0.5)
    if bool(maybe_tie.any()):
        cols = maybe_tie.nonzero().squeeze(1)
        tc = t[cols]
        zs = z[:, cols]
        earlier = torch.arange(z.shape[0], device=z.device).unsqueeze(1) < tc
        tie = ((zs == zmax[cols]) & earlier).any(0)
        correct[cols[tie]] = False
    return conf, correct, e


# ----------------------------------------------------------------------------------------------
# Binning
# ----------------------------------------------------------------------------------------------


def bin_index(p: torch.Tensor, n_bins: int) -> torch.Tensor:
    """``min(floor(fl32(p * n)), n - 1)`` as int64: ``[b/n, (b+1)/n)``, 1.0 in the last bin."""
    return (p * n_bins).long().clamp_(0, n_bins - 1)


def binary_decision(p: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Confidence ``max(p, 1-p)`` and correctness ``[(p >= 0.5) = y]`` (float64) of each decision.

    The binary decision of a multi-label pair is "present" when ``p >= 0.5``; ``y`` is boolean.
    """
    p64 = p.double()
    return torch.where(p64 >= 0.5, p64, 1.0 - p64), ((p >= 0.5) == y).double()


def empty_bins(shape: tuple[int, ...], device: torch.device) -> Bins:
    """Zero-initialised :class:`Bins` of ``shape``."""
    return Bins(
        torch.zeros(shape, dtype=torch.int64, device=device),
        torch.zeros(shape, dtype=torch.float64, device=device),
        torch.zeros(shape, dtype=torch.float64, device=device),
    )


def accumulate(
    into: Bins, slot: torch.Tensor, weight: torch.Tensor, n_slots: int, n_groups: int
) -> None:
    """Add one chunk to ``into`` (shape ``(n_groups, n_bins)`` viewed flat).

    ``slot = group * 2 * n_bins + outcome * n_bins + bin``; ``n_slots = n_groups * 2 * n_bins``
    and the dump slot is ``n_slots``. ``weight`` is the confidence (any float dtype).
    """
    cnt = torch.bincount(slot, minlength=n_slots + 1)[:n_slots].view(n_groups, 2, -1)
    w = torch.bincount(slot, weight.double(), minlength=n_slots + 1)[:n_slots]
    w = w.view(n_groups, 2, -1)
    into.count.view(n_groups, -1).add_(cnt.sum(1))
    into.acc.view(n_groups, -1).add_(cnt[:, 1].double())
    into.conf.view(n_groups, -1).add_(w.sum(1))


def bin_values(
    into: Bins, p: torch.Tensor, outcome: torch.Tensor, valid: torch.Tensor, n_bins: int
) -> None:
    """Bin 1-D confidences ``p`` with boolean outcomes into ``into`` (shape ``(n_bins,)``)."""
    slot = (p * n_bins).to(torch.int32).clamp_(0, n_bins - 1).add_(outcome, alpha=n_bins)
    slot.masked_fill_(~valid, 2 * n_bins)
    accumulate(into, slot, p, 2 * n_bins, 1)


def bin_classwise(
    into: Bins,
    p: torch.Tensor,
    t: torch.Tensor,
    valid: torch.Tensor,
    n_bins: int,
    threshold: float = 0.0,
) -> None:
    """Bin every class column of ``p`` (C, L) at once; ``into`` has shape ``(C, n_bins)``.

    The outcome of class ``c`` is ``t == c``. Entries with ``p <= threshold`` (when
    ``threshold > 0``) or invalid columns go to the dump slot. Slots are built in int32 (half
    the memory traffic of int64; ``2 C n_bins`` is far below 2^31).
    """
    C = p.shape[0]
    cls = torch.arange(C, device=p.device, dtype=torch.int32).unsqueeze(1)
    dump = 2 * n_bins * C
    slot = (p * n_bins).to(torch.int32).clamp_(0, n_bins - 1)
    slot.add_(cls * (2 * n_bins)).add_(cls == t, alpha=n_bins)
    slot.masked_fill_(~valid, dump)
    if threshold > 0:
        slot.masked_fill_(p <= threshold, dump)
    accumulate(into, slot.view(-1), p.reshape(-1), dump, C)


def class_probs(z: torch.Tensor, input_kind: str) -> torch.Tensor:
    """Per-class probabilities of a ``(C, L)`` chunk (fused softmax), with the finiteness check.

    The check reads one class-sum per column: NaN or +-inf anywhere makes it non-finite (the
    exact per-element check runs only then, so huge but finite logits are accepted).
    """
    if input_kind == "probs":
        _check_chunk_finite(z, z.amax(0), "probs")
        return z
    if not bool(torch.isfinite(z.sum(0)).all()):
        _check_chunk_finite(z, z.amax(0), "logits")
    return torch.softmax(z, 0)


# ----------------------------------------------------------------------------------------------
# Reductions of binned sums
# ----------------------------------------------------------------------------------------------

NORMS = ("l1", "l2", "max", "avg", "signed")


def reduce_bins(bins: Bins, norm: str, total: torch.Tensor | None = None) -> torch.Tensor:
    """Calibration error from per-bin sums along the last dim (float64, leading dims kept).

    * ``l1``: ``sum_b (n_b / M) |acc_b - conf_b|`` (ECE)
    * ``l2``: ``sqrt(sum_b (n_b / M) (acc_b - conf_b)^2)`` (RMSCE)
    * ``max``: ``max_b |acc_b - conf_b|`` over non-empty bins (MCE)
    * ``avg``: unweighted mean of ``|acc_b - conf_b|`` over non-empty bins (average CE)
    * ``signed``: ``sum_b (conf_b - acc_b) / M``, mean confidence minus accuracy (over-confidence;
      it does not depend on the binning)

    ``M`` is ``total`` if given, else ``sum_b n_b``. With no samples the result is NaN.
    """
    count = bins.count.double()
    m = count.sum(-1) if total is None else total.double()
    nonempty = bins.count > 0
    gap = (bins.acc - bins.conf).abs() / count.clamp_min(1)  # |mean acc - mean conf|
    nan = torch.full_like(m, float("nan"))
    if norm == "l1":
        out = (bins.acc - bins.conf).abs().sum(-1) / m
    elif norm == "l2":
        out = torch.sqrt((gap.square() * count).sum(-1) / m)
    elif norm == "max":
        out = torch.where(nonempty, gap, -1.0).amax(-1)
    elif norm == "avg":
        out = (gap * nonempty).sum(-1) / nonempty.sum(-1)
    elif norm == "signed":
        out = (bins.conf - bins.acc).sum(-1) / m
    else:  # pragma: no cover - guarded by check_choice
        raise ValueError(norm)
    return torch.where(m > 0, out, nan)


def curve_from_bins(bins: Bins, edges: torch.Tensor | None = None):
    """Turn per-bin sums into a :class:`ReliabilityCurve` (NaN means for empty bins)."""
    from calibrant.metrics._curve import ReliabilityCurve

    n = bins.count.shape[-1]
    if edges is None:
        edges = torch.linspace(0, 1, n + 1, dtype=torch.float64, device=bins.count.device)
    count = bins.count.double()
    safe = count.clamp_min(1)
    nan = torch.tensor(float("nan"), dtype=torch.float64, device=count.device)
    return ReliabilityCurve(
        edges=edges,
        count=bins.count.clone(),
        confidence=torch.where(count > 0, bins.conf / safe, nan),
        accuracy=torch.where(count > 0, bins.acc / safe, nan),
    )


# ----------------------------------------------------------------------------------------------
# Adaptive (equal-mass) binning: exact one-shot, and from a fine histogram with an error bound
# ----------------------------------------------------------------------------------------------

ADAPTIVE_SCHEMES = ("interp", "rank")


def rank_bin(r: torch.Tensor, m: int, n_bins: int, scheme: str) -> torch.Tensor:
    """Equal-mass bin of 0-based rank ``r`` among ``m`` sorted values (distinct values).

    * ``interp`` (Nixon et al. / research code ``AdaptiveECELoss`` with edges interpolated at
      ``linspace(0, m, n+1)``, membership ``(lower, upper]``, first bin closed): rank ``r``
      falls in bin ``ceil(r n / m) - 1``, clamped to ``[0, n-1]``.
    * ``rank`` (SVLS): ``m // n`` samples per bin, the last bin takes the remainder.
    """
    if scheme == "interp":
        b = torch.div(r * n_bins + m - 1, m, rounding_mode="floor") - 1
    else:
        q = m // n_bins
        b = torch.div(r, q, rounding_mode="floor") if q > 0 else torch.full_like(r, n_bins - 1)
    return b.clamp_(0, n_bins - 1)


def adaptive_exact(conf: torch.Tensor, acc: torch.Tensor, n_bins: int, scheme: str) -> Bins:
    """Exact equal-mass per-bin sums of 1-D ``conf`` (float) and ``acc`` (bool/float)."""
    m = conf.numel()
    out = empty_bins((n_bins,), conf.device)
    if m == 0:
        return out
    if scheme == "interp":
        srt = torch.sort(conf.double()).values
        pos = torch.linspace(0, m, n_bins + 1, dtype=torch.float64, device=conf.device)
        pos = pos.clamp(max=m - 1)
        lo = pos.floor().long()
        hi = pos.ceil().long()
        frac = pos - lo
        edges = srt[lo] + frac * (srt[hi] - srt[lo])
        b = torch.bucketize(conf.double(), edges[1:-1], right=False)  # (lower, upper]
    else:
        order = torch.argsort(conf, stable=True)
        b = torch.empty_like(order)
        b[order] = rank_bin(torch.arange(m, device=conf.device), m, n_bins, scheme)
    out.count.add_(torch.bincount(b, minlength=n_bins))
    out.conf.add_(torch.bincount(b, conf.double(), minlength=n_bins))
    out.acc.add_(torch.bincount(b, acc.double(), minlength=n_bins))
    return out


def adaptive_from_fine(fine: Bins, n_bins: int, scheme: str) -> tuple[Bins, torch.Tensor]:
    """Equal-mass bins from fine equal-width histograms ``(..., K)``, with an error bound.

    Each fine bin is assigned whole to the equal-mass bin of its middle rank. Only fine bins
    whose rank range straddles an equal-mass boundary can hold misassigned samples; moving one
    sample between two bins changes ``M * ECE`` by at most ``2 |acc_i - conf_i| <= 2``, so

    ``|ECE_streamed - ECE_exact| <= 2 * (samples in straddling fine bins) / M``,

    which is returned as ``bound`` (shape of the leading dims). The same bound holds for the
    average calibration error only approximately, so it is reported for ECE.
    """
    lead = fine.count.shape[:-1]
    cnt = fine.count.reshape(-1, fine.count.shape[-1])
    conf = fine.conf.reshape(cnt.shape)
    acc = fine.acc.reshape(cnt.shape)
    G, K = cnt.shape
    out = empty_bins((G, n_bins), cnt.device)
    bound = torch.zeros(G, dtype=torch.float64, device=cnt.device)
    for g in range(G):
        m = int(cnt[g].sum())
        if m == 0:
            continue
        hi = torch.cumsum(cnt[g], 0)
        lo = hi - cnt[g]
        b_lo = rank_bin(lo, m, n_bins, scheme)
        b_hi = rank_bin((hi - 1).clamp_min(0), m, n_bins, scheme)
        b_mid = rank_bin(torch.div(lo + hi - 1, 2, rounding_mode="floor"), m, n_bins, scheme)
        nz = cnt[g] > 0
        straddle = nz & (b_lo != b_hi)
        bound[g] = 2.0 * cnt[g][straddle].sum().double() / m
        out.count[g].index_add_(0, b_mid, cnt[g])
        out.conf[g].index_add_(0, b_mid, conf[g])
        out.acc[g].index_add_(0, b_mid, acc[g])
    shaped = Bins(*(v.reshape(*lead, n_bins) for v in out))
    return shaped, bound.reshape(lead)


def adaptive_weighted(
    conf: torch.Tensor, acc: torch.Tensor, weights: torch.Tensor, n_bins: int
) -> Bins:
    """Equal-mass (``interp``) per-bin sums of many weighted copies of one data set, at once.

    Row ``r`` of ``weights`` ``(R, N)`` (non-negative integers) describes the data set in which
    element ``i`` of ``conf``/``acc`` ``(N,)`` appears ``weights[r, i]`` times, e.g. a bootstrap
    resample. Row ``r`` of the result ``(R, n_bins)`` equals :func:`adaptive_exact` on that
    expanded data set, without expanding or sorting it again: the data are sorted once; the
    interpolated edges are read at the expanded ranks through the cumulative weights, and each
    bin, a contiguous run of the sorted values, is a difference of weighted prefix sums.

    Example (the second data set is 0.6, 0.9, 0.9: its inner edge is 0.9 and ``(lower, upper]``
    puts all three in the first bin, as :func:`adaptive_exact` does):
        >>> conf = torch.tensor([0.9, 0.2, 0.6]); acc = torch.tensor([1.0, 0.0, 1.0])
        >>> w = torch.tensor([[1, 1, 1], [2, 0, 1]])
        >>> adaptive_weighted(conf, acc, w, 2).count.tolist()
        [[2, 1], [3, 0]]
    """
    order = torch.argsort(conf, stable=True)
    s = conf.double()[order]
    y = acc.double()[order]
    n = s.numel()
    rows = max(1, CHUNK_ELEMENTS // max(n, 1))
    parts = [
        _adaptive_weighted_rows(s, y, w[:, order].double(), n_bins) for w in weights.split(rows)
    ]
    return Bins(*(torch.cat(v) for v in zip(*parts, strict=True)))


def _adaptive_weighted_rows(s: torch.Tensor, y: torch.Tensor, w: torch.Tensor, n_bins: int) -> Bins:
    """:func:`adaptive_weighted` for sorted ``s`` and weights ``w`` in the same order."""
    r, n = w.shape
    zero = torch.zeros(r, 1, dtype=torch.float64, device=w.device)
    cum = torch.cat([zero, w.cumsum(1)], 1)  # cum[:, j]: expanded elements before element j
    m = cum[:, -1]
    pos = torch.empty(r, n_bins + 1, dtype=torch.float64, device=w.device)
    for mass in m.unique():  # the same linspace as adaptive_exact, so edges match bit for bit
        pos[m == mass] = torch.linspace(0, float(mass), n_bins + 1, dtype=torch.float64)
    pos = torch.minimum(pos, (m - 1).clamp_min(0)[:, None])
    lo, hi = pos.floor(), pos.ceil()

    def value_at(rank: torch.Tensor) -> torch.Tensor:  # the expanded sorted data at ``rank``
        return s[torch.searchsorted(cum[:, 1:].contiguous(), rank, right=True).clamp_(max=n - 1)]

    edges = value_at(lo) + (pos - lo) * (value_at(hi) - value_at(lo))
    inner = torch.searchsorted(s, edges[:, 1:-1].contiguous(), right=True)  # (lower, upper]
    ends = torch.tensor([0, n], device=w.device).expand(r, 2)
    bounds = torch.cat([ends[:, :1], inner, ends[:, 1:]], 1)

    def per_bin(prefix: torch.Tensor) -> torch.Tensor:
        at = prefix.gather(1, bounds)
        return at[:, 1:] - at[:, :-1]

    count = per_bin(cum)
    conf = per_bin(torch.cat([zero, (w * s).cumsum(1)], 1))
    acc = per_bin(torch.cat([zero, (w * y).cumsum(1)], 1))
    out = Bins(count.round().long(), conf, acc)
    empty = (m == 0)[:, None]
    return Bins(*(v.masked_fill(empty, 0) for v in out))
