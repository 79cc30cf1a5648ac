r"""Fixed output maps applied at prediction time: the SPA inverse link and the φ correction.

Neither is fitted: both are determined by the training loss's hyper-parameters. They map logits
to calibrated log-odds, so every sigmoid-based metric (multi-label ECE/ACE/MCE, mAP) reads the
calibrated probability :math:`\sigma(\text{output})`.

- :class:`SPALink`: :math:`z = \operatorname{logit}\,\Psi^{-1}(v)` for a model trained with SPA
  (METHODS §4.6, the corrected increasing link).
- :class:`PhiCorrection`: :math:`z = \operatorname{logit}\,\varphi(\sigma(v))` for focal/ASY models
  (SPA paper Theorem 2, METHODS §4.5) — the "+φ" rows.

Example:
    >>> from calibrant.posthoc.links import PhiCorrection, SPALink
    >>> v = torch.tensor([[-2.0, 0.0, 3.0]])
    >>> torch.allclose(PhiCorrection(gamma_neg=0.0, gamma_pos=0.0)(v), v, atol=1e-4)
    True
    >>> bool((SPALink()(v).diff() > 0).all())  # increasing
    True
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from calibrant.losses.multilabel import phi_correct
from calibrant.losses.spa import SPA_DEFAULTS, spa_logit
from calibrant.registry import CALIBRATORS

__all__ = ["PhiCorrection", "SPALink"]


class _FixedMap(nn.Module):
    """A calibrator with nothing to fit (``fit``/``fit_stream`` return ``self``)."""

    def fit(self, *args: Any, **kwargs: Any) -> _FixedMap:
        """Nothing to learn."""
        return self

    def fit_stream(self, *args: Any, **kwargs: Any) -> _FixedMap:
        """Nothing to learn."""
        return self


@CALIBRATORS.register("spa_link", task="multilabel")
class SPALink(_FixedMap):
    """SPA inverse link as log-odds; keyword arguments are the SPA parameters used in training."""

    def __init__(self, **params: float) -> None:
        super().__init__()
        self.params = {**SPA_DEFAULTS, **params}

    @classmethod
    def from_loss_kwargs(cls, **loss_kwargs: Any) -> SPALink:
        """The link of a loss configured with ``loss_kwargs``.

        Only the SPA parameters are the link's; the rest (``reduction``, the LPR weight) is not.

        Example:
            >>> SPALink.from_loss_kwargs(zeta_pos=2.0, reduction="mean").params["zeta_pos"]
            2.0
        """
        return cls(**{k: v for k, v in loss_kwargs.items() if k in SPA_DEFAULTS})

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        """Calibrated log-odds ``spa_logit(v)``."""
        return spa_logit(logits.float(), **self.params)


@CALIBRATORS.register("phi", task="multilabel", from_loss=True)
class PhiCorrection(_FixedMap):
    """φ correction of a focal/ASY model as log-odds.

    Args:
        gamma_neg: γ− of the training loss.
        gamma_pos: γ+ of the training loss.
        margin: ASY probability margin m (0 for focal).
        eps: clamp of the probabilities inside φ.
    """

    def __init__(
        self, gamma_neg: float = 4.0, gamma_pos: float = 0.0, margin: float = 0.0, eps: float = 1e-6
    ) -> None:
        super().__init__()
        self.gamma_neg, self.gamma_pos, self.margin, self.eps = gamma_neg, gamma_pos, margin, eps

    @classmethod
    def for_loss(cls, loss: nn.Module, **kwargs: float) -> PhiCorrection:
        """φ for a trained focal/ASY loss module, from its stored ``hparams``.

        Binary focal's single ``gamma`` is both γ− and γ+; ASY's ``margin`` is m.

        Raises:
            ValueError: if the module has no focusing parameters (φ is the identity for BCE).
        """
        hp = dict(getattr(loss, "hparams", {}))
        if "gamma" in hp:
            hp.setdefault("gamma_neg", hp["gamma"])
            hp.setdefault("gamma_pos", hp["gamma"])
        if "gamma_neg" not in hp:
            raise ValueError(f"φ needs a focal/ASY loss with gamma parameters, got {loss!r}")
        keys = ("gamma_neg", "gamma_pos", "margin")
        return cls(**{**{k: hp[k] for k in keys if k in hp}, **kwargs})

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        """``logit(φ(σ(v)))``, clamped to stay finite."""
        probs = phi_correct(
            torch.sigmoid(logits.double()),
            self.gamma_neg,
            self.gamma_pos,
            self.margin,
            eps=self.eps,
        ).clamp(self.eps, 1 - self.eps)
        return torch.logit(probs).to(torch.promote_types(logits.dtype, torch.float32))
