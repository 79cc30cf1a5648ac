r"""``ALMPenalty``: multiplier state in buffers, the training penalty, validation statistics.

The module joins the three pure parts: a constraint (:mod:`calibrant.alm.constraints`), a
penalty (:mod:`calibrant.alm.penalties`) and the update rules (:mod:`calibrant.alm.rules`).

- ``forward(logits, target)`` is the training penalty with the current (frozen) λ and ρ,

  .. math::
      \mathcal{P} = \frac{1}{N \cdot S \cdot c} \sum_{i \text{ valid}} \sum_k
      P\big(h_{ik};\ \lambda_{s(i,k)}, \rho_{s(i,k)}\big),

  with ``N`` valid pixels, ``S`` slots and ``c`` columns per slot (the mean over ``N·2K`` of
  the CRaC code, ``N·K`` of CALS and NACL). It drops into
  :class:`calibrant.losses.combine.WeightedSum` next to the task loss.
- ``observe(logits, target)`` (no gradient) accumulates per-slot ``Σ clamp(P')``, ``Σh``,
  ``ΣP`` and counts over validation batches, in float64 sums and int64 counts.
- ``step()`` does one ``all_reduce`` of the packed sums (a no-op without
  ``torch.distributed``), applies :func:`calibrant.alm.rules.update`, resets the accumulators and
  returns a log record ``{"epoch", "lambda", "rho", "violation"}`` (nested lists shaped like the
  slots, ``[region][class]`` for CRaC). :meth:`ALMPenalty.history` returns all records; they are
  saved in the ``state_dict``, so a resumed run keeps its trajectory.

Distributed statistics are the *exact global* sums over all ranks' validation pixels, not the
research code's equal-weighted mean of per-rank means; the two agree only for equal splits.

Example:
    >>> import torch
    >>> from calibrant.alm import ALMPenalty, NeighborConstraint
    >>> alm = ALMPenalty(2, NeighborConstraint(inner_target_scale=5.0), layout="region_class",
    ...                  rho_init=0.1)
    >>> logits = torch.zeros(1, 2, 4, 4, requires_grad=True)
    >>> target = torch.zeros(1, 4, 4, dtype=torch.long)
    >>> target[:, :, 2:] = 1
    >>> alm(logits, target).backward()
    >>> alm.observe(logits, target)
    >>> record = alm.step()  # inner class 0: λ = 1e-6 + 0.1 · (4 pixels · |5 - 0|) / 16
    >>> record["epoch"], [[round(x, 3) for x in row] for row in record["lambda"]]
    (0, [[0.125, 0.0], [0.04, 0.035]])

Reference:
    Liu et al., "Class Adaptive Network Calibration", CVPR 2023; Murugesan et al., "Class and
    Region-Adaptive Constraints for Network Calibration", MICCAI 2024.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
import torch.distributed as dist
from torch import nn

from calibrant._checks import check_logits_target
from calibrant._tensor import finite_or_raise, float32, labels_and_mask, row_chunks
from calibrant.alm.constraints import NeighborConstraint, Violations, neighbor_parts
from calibrant.alm.kernels import NeighborPHR, NeighborPHRChunks, PenaltyMean
from calibrant.alm.layouts import Layout, make_layout
from calibrant.alm.penalties import get_penalty
from calibrant.alm.rules import ALMState, RuleConfig, Statistics, update
from calibrant.losses.fusion import FusedPlan

__all__ = ["ALMPenalty", "alm_terms"]

log = logging.getLogger(__name__)

Constraint = Callable[[torch.Tensor, torch.Tensor, int | None], Violations]


class _Label0Parts(NamedTuple):
    """What the fused label-0 PHR paths share (see :meth:`ALMPenalty._label0_parts`)."""

    safe: torch.Tensor
    mask: torch.Tensor | None
    counts: torch.Tensor
    f: torch.Tensor
    boundary: torch.Tensor
    denom: float
    lam: torch.Tensor
    rho: torch.Tensor


class ALMPenalty(nn.Module):
    """Augmented-Lagrangian penalty term with per-slot multipliers λ and coefficients ρ.

    Args:
        num_classes: number of classes ``K``.
        constraint: a :class:`~calibrant.alm.constraints.MarginConstraint`,
            :class:`~calibrant.alm.constraints.NeighborConstraint` or any callable
            ``(logits, target, ignore_index) -> Violations``.
        layout: a :class:`~calibrant.alm.layouts.Layout` or its name, ``"global" | "class" |
            "region" | "region_class"`` (slots ``1 | K | 2 | 2×K``).
        rule: ``"alm"`` (CALS/CRaC), ``"heuristic"`` (CALS-HR) or ``"fixed"`` (NACL).
        penalty: ``"phr" | "p2" | "p3" | "relu"``.
        lambda_init: initial λ (default ``lambda_min``); must lie in ``[lambda_min, lambda_max]``.
        lambda_min: lower clamp of λ.
        lambda_max: upper clamp of λ.
        lambda_step: λ update period in epochs.
        rho_init: initial ρ and its lower clamp.
        rho_max: upper clamp of ρ.
        rho_step: ρ test period in epochs (0: never).
        gamma: growth factor (of ρ for ALM, of λ for the heuristic rule).
        mu: tolerance factor (the code's ``tao``).
        per_region_mean: average over a slot's own entries in the λ/ρ updates (METHODS.md B5).
        ignore_index: ignored label (never enters the penalty or the statistics), or ``None``.
        validate: check label range and finiteness of the logits (one pass over the data).

    Shape:
        - logits: ``(B, K, *spatial)``; target: ``(B, *spatial)`` int.
        - output: scalar.

    Raises:
        ValueError: on a bad configuration (see :class:`calibrant.alm.rules.RuleConfig`), a
            region layout with a constraint that has no regions, ``lambda_init`` outside the
            clamp range, or loading a state dict with another slot layout.
    """

    lam: torch.Tensor
    rho: torch.Tensor

    def __init__(
        self,
        num_classes: int,
        constraint: Constraint,
        *,
        layout: str | Layout = "class",
        rule: str = "alm",
        penalty: str = "phr",
        lambda_init: float | None = None,
        lambda_min: float = 1e-6,
        lambda_max: float = 1e6,
        lambda_step: int = 1,
        rho_init: float = 1.0,
        rho_max: float = 10.0,
        rho_step: int = 10,
        gamma: float = 1.2,
        mu: float = 0.9,
        per_region_mean: bool = False,
        ignore_index: int | None = -100,
        validate: bool = True,
    ) -> None:
        super().__init__()
        self.layout = make_layout(layout, num_classes)
        self.cfg = RuleConfig(
            rule=rule,
            penalty=penalty,
            lambda_min=lambda_min,
            lambda_max=lambda_max,
            lambda_step=lambda_step,
            rho_init=rho_init,
            rho_max=rho_max,
            rho_step=rho_step,
            gamma=gamma,
            mu=mu,
            per_region_mean=per_region_mean,
        )
        if self.layout.needs_region and not getattr(constraint, "has_regions", True):
            raise ValueError(
                f"layout {layout!r} needs pixel regions, but {type(constraint).__name__} "
                "defines none; use layout 'global' or 'class'"
            )
        lambda_init = lambda_min if lambda_init is None else lambda_init
        if not lambda_min <= lambda_init <= lambda_max:
            raise ValueError(
                f"lambda_init ({lambda_init}) must lie in [lambda_min, lambda_max] = "
                f"[{lambda_min}, {lambda_max}]"
            )
        self.constraint = constraint
        self.num_classes = int(num_classes)
        self.ignore_index = ignore_index
        self.validate = validate
        self._penalty = get_penalty(penalty)
        state = ALMState.init(self.layout.shape, lambda_init=lambda_init, rho_init=rho_init)
        for name, value in state._asdict().items():
            self.register_buffer(name, value)
        shape = self.layout.shape
        self.register_buffer("acc_grad", torch.zeros(shape, dtype=torch.float64))
        self.register_buffer("acc_viol", torch.zeros(shape, dtype=torch.float64))
        self.register_buffer("acc_value", torch.zeros(shape, dtype=torch.float64))
        self.register_buffer("acc_count", torch.zeros(shape, dtype=torch.int64))
        self.register_buffer("acc_pixels", torch.zeros((), dtype=torch.int64))
        self._history: list[dict[str, Any]] = []

    # -- evaluation of the constraint -------------------------------------------------------
    def _violations(self, logits: torch.Tensor, target: torch.Tensor) -> Violations:
        if self.validate:
            if logits.shape[1:2] != (self.num_classes,):
                raise ValueError(
                    f"logits have {logits.shape[1] if logits.dim() > 1 else None} classes on "
                    f"dim 1 but this ALMPenalty has num_classes={self.num_classes}"
                )
            labels_and_mask(target, self.num_classes, self.ignore_index)
            finite_or_raise("logits", logits)
        return self.constraint(logits, target, self.ignore_index)

    def _fused_label0_phr(self, logits: torch.Tensor) -> bool:
        """Whether the fused paths apply: PHR on the label-0 neighbourhood constraint, λ >= 0."""
        con = self.constraint
        return (
            self.cfg.penalty == "phr"
            and type(con) is NeighborConstraint
            and con.padding == "label0"
            and logits.dim() >= 3
            and logits.shape[1:2] == (self.num_classes,)
            and bool((self.lam >= 0).all())
        )

    def _label0_parts(
        self, logits: torch.Tensor, target: torch.Tensor, *, whole: bool
    ) -> _Label0Parts | None:
        """The set-up the fused label-0 PHR paths share, after :meth:`_fused_label0_phr` holds.

        Checks the pair, builds the factored constraint (:func:`neighbor_parts`), the mean's
        denominator and the per-pair λ/ρ tables. ``None`` when ``whole`` and a label is ignored.
        """
        con = self.constraint
        check_logits_target(logits, target)
        safe, mask = labels_and_mask(target, self.num_classes, self.ignore_index)
        if whole and mask is not None:
            return None
        counts, f, boundary = neighbor_parts(
            safe,
            mask,
            self.num_classes,
            kernel_size=con.kernel_size,
            inner_target_scale=con.inner_target_scale,
        )
        n = safe.numel() if mask is None else int(mask.sum())
        denom = max(n, 1) * self.layout.num_slots * self.layout.columns_per_slot
        lam, rho = self.layout.pair_table(self.lam), self.layout.pair_table(self.rho)
        return _Label0Parts(safe, mask, counts, f, boundary, float(denom), lam, rho)

    def _fast_neighbor_phr(self, logits: torch.Tensor, target: torch.Tensor):
        """The fused training penalty for PHR on the label-0 neighbourhood constraint, or None."""
        if not self._fused_label0_phr(logits):
            return None  # the general path (which also raises on a class-count mismatch)
        if self.validate:
            finite_or_raise("logits", logits)
        p = self._label0_parts(logits, target, whole=False)
        x = logits.float().contiguous()
        m = None if p.mask is None else p.mask.unsqueeze(1).float()
        bnd = p.boundary.unsqueeze(1)  # float32 {0, 1}
        return NeighborPHR.apply(x, p.counts, p.f, bnd, m, p.lam, p.rho, p.denom)

    def ce_kernel(
        self, logits: torch.Tensor, target: torch.Tensor, ignore_index: int | None
    ) -> FusedPlan | None:
        """The fused-CE plan (:mod:`calibrant.losses.fusion`) of PHR on the label-0 constraint.

        Float32 logits with nothing ignored only (this term computes in float32).
        """
        if ignore_index != self.ignore_index or logits.dtype == torch.float64:
            return None
        fused = self._fused_label0_phr(logits)
        p = self._label0_parts(logits, target, whole=True) if fused else None
        if p is None:
            return None
        kernel = NeighborPHRChunks(p.counts, p.f, p.boundary.unsqueeze(1), p.lam, p.rho, p.denom)
        return FusedPlan(logits.float(), p.safe, kernel, lambda value: value)

    def _params(self, v: Violations) -> tuple[torch.Tensor, torch.Tensor]:
        dim = v.h.dim()
        lam = self.layout.expand(self.lam.float(), v.region, dim)
        rho = self.layout.expand(self.rho.float(), v.region, dim)
        return lam, rho

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Training penalty with the current λ and ρ (float32, differentiable in ``logits``)."""
        with float32(logits):
            fast = self._fast_neighbor_phr(logits, target)
            if fast is not None:
                return fast
            v = self._violations(logits, target)
            lam, rho = self._params(v)
            n = int(v.mask.sum())
            denom = max(n, 1) * self.layout.num_slots * self.layout.columns_per_slot
            mask = None if n == v.mask.numel() else v.mask.unsqueeze(1)
            return PenaltyMean.apply(v.h, lam, rho, mask, float(denom), self._penalty)

    def _fast_observe(self, logits: torch.Tensor, target: torch.Tensor) -> bool:
        """``observe`` for PHR on the label-0 neighbourhood constraint with nothing ignored.

        Works on the uint8 window counts in position chunks, one class at a time, and keeps only
        float64 per-(region, class) sums: ``Σh``, ``Σh²`` and ``Σ clamp(P′)``, from which (with
        ``λ >= 0``, ``h >= 0``, so ``λ + ρh >= 0``) ``Σ P = λ Σh + ρ Σh² / 2`` and
        ``Σ P′ = Σ clamp(λ + ρh, λ_min, λ_max)``. Chunk sums are float32 (cascade summation),
        their totals float64. Returns False where it does not apply.
        """
        if not self._fused_label0_phr(logits):
            return False
        p = self._label0_parts(logits, target, whole=True)
        if p is None:
            return False
        if self.validate:
            finite_or_raise("logits", logits)
        b, k = logits.shape[:2]
        x = logits.float().reshape(b, k, -1)
        boundary, lam, rho = p.boundary, p.lam, p.rho
        counts, f, bnd = p.counts.reshape(b, k, -1), p.f.reshape(b, -1), boundary.reshape(b, -1)
        lo, hi = self.cfg.lambda_min, self.cfg.lambda_max
        lam_l, rho_l = lam.tolist(), rho.tolist()
        n = x.shape[2]
        # Per (chunk, class), float32 chunk sums (cascade-summed), accumulated in float64:
        # Σh, Σh·b, Σh², Σh²·b, Σg₀, Σg₀·b, Σg₁·b with b = boundary, g_r = clamp(λ_r + ρ_r h).
        parts = []
        for bs, _, ps in row_chunks((b, 1, n), 1 << 16):
            fc, bf = f[bs, ps], bnd[bs, ps]
            for c in range(k):
                h = torch.mul(counts[bs, c, ps], fc).sub_(x[bs, c, ps]).abs_()
                hb = h * bf
                g0 = torch.mul(h, rho_l[0][c]).add_(lam_l[0][c]).clamp_(lo, hi)
                same = lam_l[0][c] == lam_l[1][c] and rho_l[0][c] == rho_l[1][c]
                g1 = g0 if same else torch.mul(h, rho_l[1][c]).add_(lam_l[1][c]).clamp_(lo, hi)
                vals = [h.sum(), hb.sum(), (h * h).sum(), (hb * h).sum(), g0.sum()]
                vals += [(g0 * bf).sum(), (g1 * bf).sum()]
                parts.append(torch.stack(vals))
        tot = torch.stack(parts).double().view(-1, k, 7).sum(0).T  # (7, K)
        s1 = torch.stack([tot[0] - tot[1], tot[1]])  # [inner, boundary] × K
        s2 = torch.stack([tot[2] - tot[3], tot[3]])
        sg = torch.stack([tot[4] - tot[5], tot[6]])
        n_b = int(boundary.sum(dtype=torch.float64))  # exact count
        n_in = b * n - n_b
        lam64, rho64 = lam.double(), rho.double()
        self.acc_grad += self.layout.from_pairs(sg)
        self.acc_viol += self.layout.from_pairs(s1)
        self.acc_value += self.layout.from_pairs(lam64 * s1 + 0.5 * rho64 * s2)
        pix = torch.tensor([n_in, n_b], dtype=torch.int64, device=x.device)
        self.acc_count += self.layout.pair_counts(pix)
        self.acc_pixels += b * n
        return True

    @torch.no_grad()
    def observe(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        """Accumulate the validation statistics of one batch (no gradient, no state change)."""
        with float32(logits):
            if self._fast_observe(logits.detach(), target):
                return
            v = self._violations(logits.detach(), target)
            lam, rho = self._params(v)
            value, grad = self._penalty(v.h, lam, rho)
            grad = grad.clamp(self.cfg.lambda_min, self.cfg.lambda_max)
            m = v.mask.unsqueeze(1)
            zero = v.h.new_zeros(())
            lay, reg = self.layout, v.region
            self.acc_grad += lay.sums(torch.where(m, grad, zero), reg)
            self.acc_viol += lay.sums(torch.where(m, v.h, zero), reg)
            self.acc_value += lay.sums(torch.where(m, value, zero), reg)
            self.acc_count += lay.counts(v.mask, reg)
            self.acc_pixels += v.mask.sum()

    # -- dual step ---------------------------------------------------------------------------
    def _synced_statistics(self) -> Statistics:
        shape, s = self.layout.shape, self.layout.num_slots
        packed = torch.cat(
            [
                self.acc_grad.reshape(-1),
                self.acc_viol.reshape(-1),
                self.acc_value.reshape(-1),
                self.acc_count.reshape(-1).double(),  # exact below 2**53
                self.acc_pixels.reshape(1).double(),
            ]
        )
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(packed)
        parts = [packed[i * s : (i + 1) * s].reshape(shape) for i in range(4)]
        rows = packed[-1] * self.layout.columns_per_slot
        return Statistics(*parts, rows=rows.expand(shape))

    @torch.no_grad()
    def step(self) -> dict[str, Any]:
        """Apply the update rules to the observed statistics, reset them, return the log record.

        Returns:
            ``{"epoch": int, "lambda": list, "rho": list, "violation": list}``: the epoch just
            finished (0-based) and the new per-slot λ and ρ and this epoch's mean violation (ALM)
            or score (heuristic), nested like the slot shape.
        """
        stats = self._synced_statistics()
        if float(stats.rows.reshape(-1)[0]) == 0:
            log.warning("ALMPenalty.step() without observed validation pixels; λ is kept")
        state = ALMState(self.lam, self.rho, self.prev, self.has_prev, self.epoch)
        new = update(state, stats, self.cfg)
        for name, value in new._asdict().items():
            getattr(self, name).copy_(value)
        for acc in (self.acc_grad, self.acc_viol, self.acc_value, self.acc_count, self.acc_pixels):
            acc.zero_()
        record = {
            "epoch": int(self.epoch) - 1,
            "lambda": self.lam.tolist(),
            "rho": self.rho.tolist(),
            "violation": self.prev.tolist(),
        }
        self._history.append(record)
        return record

    def history(self) -> list[dict[str, Any]]:
        """All step records so far (copies), ready for plotting trajectories per slot."""
        return [dict(r) for r in self._history]

    # -- checkpointing -----------------------------------------------------------------------
    def get_extra_state(self) -> dict[str, Any]:
        """The λ/ρ history travels with the state dict."""
        return {"history": [dict(r) for r in self._history]}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        """Restore the history saved by :meth:`get_extra_state`."""
        self._history = [dict(r) for r in state.get("history", [])]

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        for name in ("lam", "rho", "prev", "acc_grad", "acc_count"):
            saved = state_dict.get(prefix + name)
            if saved is not None and tuple(saved.shape) != self.layout.shape:
                raise ValueError(
                    f"checkpoint entry {prefix + name!r} has {saved.numel()} ALM slots of shape "
                    f"{tuple(saved.shape)}, but this ALMPenalty has layout "
                    f"{self.layout.name!r} with {self.layout.num_slots} slots of shape "
                    f"{self.layout.shape}; build it with the same layout and num_classes"
                )
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        """Configuration shown in the module repr."""
        c = self.cfg
        return (
            f"num_classes={self.num_classes}, layout={self.layout.name!r}, rule={c.rule!r}, "
            f"penalty={c.penalty!r}, constraint={self.constraint!r}"
        )


def alm_terms(module: nn.Module) -> list[ALMPenalty]:
    """Every :class:`ALMPenalty` inside ``module`` (e.g. a ``WeightedSum``), for observe/step."""
    return [m for m in module.modules() if isinstance(m, ALMPenalty)]
