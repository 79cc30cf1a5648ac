r"""Composition of loss terms: ``WeightedSum`` replaces every "CE + penalty" class.

.. math::
    \mathcal{L}(l, y) = \sum_j w_j \, \mathcal{L}_j(l, y)

MbLS, NACL, ECP, LPR and the ALM penalties are all "task loss + weighted term"; composing them
here means no class per combination and no tuple returns. ``terms`` gives the weighted parts by
name for logging; ``forward`` gives their sum.

A sum of two terms of which one offers a ``fused_with`` hook for the other (cross-entropy with
the MbLS margin, NACL or CRaC penalty; see :mod:`calibrant.losses.fusion`) is evaluated in one
pass over the logits that returns both parts, so ``terms`` still reports them separately.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from calibrant.losses.combine import WeightedSum
    >>> loss = WeightedSum({"ce": nn.CrossEntropyLoss(), "ce_again": nn.CrossEntropyLoss()},
    ...                    weights={"ce_again": 0.5})
    >>> logits, target = torch.zeros(4, 3), torch.tensor([0, 1, 2, 0])
    >>> parts = loss.terms(logits, target)
    >>> sorted(parts), round(loss(logits, target).item(), 4)
    (['ce', 'ce_again'], 1.6479)
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

__all__ = ["WeightedSum"]


class WeightedSum(nn.Module):
    """Weighted sum of named loss terms that share the ``(logits, target)`` call.

    Args:
        terms: name -> loss module; each called as ``term(logits, target)``.
        weights: name -> weight (default 1.0 for names not given). Weights are plain floats;
            adaptive weights (ALM multipliers) live inside their term as buffers.

    Raises:
        ValueError: if ``terms`` is empty or ``weights`` names a term that does not exist.
    """

    def __init__(
        self, terms: Mapping[str, nn.Module], weights: Mapping[str, float] | None = None
    ) -> None:
        super().__init__()
        if not terms:
            raise ValueError("WeightedSum needs at least one term")
        weights = dict(weights or {})
        unknown = set(weights) - set(terms)
        if unknown:
            raise ValueError(f"weights given for unknown terms {sorted(unknown)}")
        self.parts = nn.ModuleDict(dict(terms))
        self.weights = {name: float(weights.get(name, 1.0)) for name in terms}

    def terms(self, logits: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """Weighted value of each term, by name (terms with weight 0 are skipped)."""
        fused = self._fused(logits, target)
        if fused is not None:
            return fused
        return {
            name: self.weights[name] * part(logits, target)
            for name, part in self.parts.items()
            if self.weights[name] != 0.0
        }

    def _fused(self, logits, target) -> dict[str, torch.Tensor] | None:
        """Both terms of a two-term sum from one pass, if one term fuses with the other.

        A term offers the fast path through a ``fused_with(other, logits, target)`` hook that
        returns both unweighted values or ``None`` (:mod:`calibrant.losses.fusion`); the sum
        knows nothing else about its terms.
        """
        if len(self.parts) != 2 or 0.0 in self.weights.values():
            return None
        a, b = self.parts
        for first, second in ((a, b), (b, a)):
            hook = getattr(self.parts[first], "fused_with", None)
            out = None if hook is None else hook(self.parts[second], logits, target)
            if out is not None:
                values = {first: out[0], second: out[1]}
                return {n: self.weights[n] * values[n] for n in self.parts}
        return None

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Sum of the weighted terms."""
        return sum(self.terms(logits, target).values())

    def extra_repr(self) -> str:
        """Weights shown in the module repr."""
        return ", ".join(f"{n}={w:g}" for n, w in self.weights.items())
