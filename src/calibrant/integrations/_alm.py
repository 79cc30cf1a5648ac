"""What every integration does with ALM terms: find them, observe, step, name the slots, save.

:class:`ALMDriver` holds the :class:`~calibrant.alm.term.ALMPenalty` terms of a criterion and does
what calibrant's engine does with them (:func:`calibrant.engine.fit`): ``observe`` every
validation batch's float32 logits, ``step()`` once per validation pass (one ``all_reduce`` per
term under ``torch.distributed``, so every rank ends with the same λ and ρ). It also names the
multiplier slots for loggers and packs the terms' state for a framework's checkpoint.

Example:
    >>> from calibrant import LOSSES
    >>> from calibrant.integrations import ALMDriver
    >>> crac = LOSSES.build("crac", num_classes=2)
    >>> driver = ALMDriver(crac, class_names=["bg", "fg"])
    >>> driver.names, driver.slot_names(driver.terms[0])
    (['alm'], ['inner/bg', 'inner/fg', 'boundary/bg', 'boundary/fg'])
    >>> sorted(driver.scalars())[:2]
    ['alm/lambda/boundary/bg', 'alm/lambda/boundary/fg']
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from calibrant.alm.term import ALMPenalty
from calibrant.integrations.targets import as_index_target, plain_tensor

__all__ = ["ALMDriver", "slot_names", "unpadded_count"]


def slot_names(term: ALMPenalty, class_names: Sequence[str] | None = None) -> list[str]:
    """Names of a term's multiplier slots, in the order of ``term.lam.flatten()``.

    The names calibrant's own loggers and figures use (``Layout.slot_names``): ``"all"``
    (global layout), the class names (class), ``inner``/``boundary`` (region) or
    ``"region/class"`` (region_class, CRaC). Classes without names are ``class 0``, ...

    Raises:
        ValueError: if ``class_names`` does not name each of the term's classes.
    """
    if class_names is not None and len(class_names) != term.num_classes:
        raise ValueError(
            f"class_names has {len(class_names)} names but the ALM term has "
            f"{term.num_classes} classes"
        )
    names = None if class_names is None else [str(c) for c in class_names]
    return term.layout.slot_names(names)


def _term_names(paths: list[str]) -> list[str]:
    last = [p.rsplit(".", 1)[-1] if p else "alm" for p in paths]
    if len(set(last)) == len(last):
        return last
    return [f"alm{i}" for i in range(len(paths))]


class ALMDriver:
    """The ALM terms of a criterion, driven as calibrant's engine drives them.

    Args:
        criterion: a module holding one or more :class:`~calibrant.alm.term.ALMPenalty` (e.g. an
            ALM objective, a ``WeightedSum``, a :class:`~calibrant.integrations.MonaiTargets`, or a
            whole ``LightningModule``).
        class_names: names of the classes, for the slot names (default ``class 0``, ...).

    Attributes:
        terms: the ALM terms, in module order.
        names: one name per term: the last part of its attribute path (``"alm"`` for the
            presets' ``WeightedSum``), or ``alm0``, ``alm1``, ... when those repeat.

    Raises:
        ValueError: if ``criterion`` holds no ALM term.
    """

    def __init__(
        self,
        criterion: nn.Module,
        *,
        class_names: Sequence[str] | None = None,
    ) -> None:
        found = [(p, m) for p, m in criterion.named_modules() if isinstance(m, ALMPenalty)]
        if not found:
            raise ValueError(
                f"{type(criterion).__name__} holds no ALM term (calibrant.alm.ALMPenalty); "
                "pass the criterion built by an ALM objective, e.g. LOSSES.build('crac', ...)"
            )
        self.terms = [m for _, m in found]
        self.names = _term_names([p for p, _ in found])
        self.class_names = None if class_names is None else [str(c) for c in class_names]
        self._keep: int | None = None
        self._seen = 0

    def begin_pass(self, loader: Any = None) -> None:
        """Start a validation pass over ``loader``.

        When the loader's sampler is a padding ``DistributedSampler`` (see
        :func:`unpadded_count`), :meth:`observe` then drops the repeated samples at the end of
        this rank's share, so that every validation sample is observed once over all ranks. The
        logits handed to :meth:`observe` must then have one row per dataset item.
        """
        self._seen = 0
        self._keep = None if loader is None else unpadded_count(loader)

    def slot_names(self, term: ALMPenalty) -> list[str]:
        """Slot names of one term (see :func:`slot_names`)."""
        names = self.class_names
        if names is not None and len(names) != term.num_classes:
            names = None  # e.g. a binary term next to a multi-class one
        return slot_names(term, names)

    @torch.no_grad()
    def observe(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        """Every term observes one validation batch (float32 logits, any MONAI label layout).

        Samples past this rank's real share (see :meth:`begin_pass`) are left out.
        """
        logits = plain_tensor(logits).detach().float()
        target = plain_tensor(target)
        if self._keep is not None:  # drop a DistributedSampler's padding
            n = int(logits.shape[0])
            take = max(0, min(n, self._keep - self._seen))
            self._seen += n
            if take == 0:
                return
            logits, target = logits[:take], target[:take]
        for term in self.terms:
            term.observe(logits, as_index_target(target, logits, ignore_index=term.ignore_index))

    def step(self) -> list[dict[str, Any]]:
        """``step()`` of every term (synchronised across ranks); their log records."""
        return [term.step() for term in self.terms]

    def scalars(self) -> dict[str, float]:
        """Current λ and ρ per named slot: ``{"<term>/lambda/<slot>": value, ...}``."""
        out: dict[str, float] = {}
        for name, term in zip(self.names, self.terms, strict=True):
            slots = self.slot_names(term)
            for key, values in (("lambda", term.lam), ("rho", term.rho)):
                for slot, v in zip(slots, values.flatten().tolist(), strict=True):
                    out[f"{name}/{key}/{slot}"] = float(v)
        return out

    def history(self) -> dict[str, list[dict[str, Any]]]:
        """Every term's step records, by term name."""
        return {n: t.history() for n, t in zip(self.names, self.terms, strict=True)}

    def state_dict(self) -> dict[str, Any]:
        """The terms' state (λ, ρ, accumulators, history), by term name."""
        return {n: t.state_dict() for n, t in zip(self.names, self.terms, strict=True)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (the same terms, by name)."""
        missing = set(self.names) - set(state)
        if missing:
            raise ValueError(
                f"saved ALM state has terms {sorted(state)}, missing {sorted(missing)}"
            )
        for name, term in zip(self.names, self.terms, strict=True):
            term.load_state_dict(state[name])


def unpadded_count(loader: Any) -> int | None:
    """How many of this rank's samples are real (not padding) under a ``DistributedSampler``.

    ``DistributedSampler`` (``drop_last=False``) repeats the first indices so that the index list
    has ``world · ceil(n / world)`` entries and gives rank ``r`` every ``world``-th entry from
    ``r``: the repeats are the global positions ``>= n``, i.e. the tail of the ranks whose share
    runs past ``n``. Returns ``None`` when the loader's sampler pads nothing (not distributed,
    or ``drop_last=True``).
    """
    from torch.utils.data import DistributedSampler

    sampler = getattr(loader, "sampler", None)
    batch_sampler = getattr(loader, "batch_sampler", None)
    if not isinstance(sampler, DistributedSampler):
        sampler = getattr(batch_sampler, "sampler", None)
    if not isinstance(sampler, DistributedSampler) or sampler.drop_last:
        return None
    n, world, rank = len(sampler.dataset), sampler.num_replicas, sampler.rank
    if n % world == 0:
        return None
    return max(0, math.ceil((n - rank) / world))
