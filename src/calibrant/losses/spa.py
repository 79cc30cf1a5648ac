r"""The strictly proper asymmetric (SPA) loss, its inverse link, and the LPR regulariser.

SPA replaces the focal/ASY reweighting of BCE (:mod:`calibrant.losses.multilabel`) by partial
losses on the logit ``v`` that stay strictly proper, so a calibrated probability is read through
the inverse link instead of being corrected post hoc:

.. math::
    \ell_{+1}(v) = -\tfrac{1}{\zeta_+}\log\sigma(k_+(v - b_+)),\qquad
    \ell_{-1}(v) = -\tfrac{1}{\zeta_-}\log\sigma(-k_-(v - b_-)),\qquad
    \hat\eta = \sigma(z(v))

with ``z = spa_logit(v)``. The label pair regulariser (LPR) adds a ranking term on the
calibrated log-odds of each example,

.. math::
    L_{LPR} = \frac{2}{T(T-1)} \sum_{t \ne t'} \mathbb{1}[y_t = 1, y_{t'} = 0]\,
              \operatorname{softplus}(z_{t'} - z_t),

and the registered ``spa_lpr``/``bce_lpr`` losses are eq. 21's per-sample label mean of the task
loss (:class:`SampleMean`) plus ``λ L_LPR``.

Inputs, ``ignore_index`` and reductions follow :mod:`calibrant.losses.multilabel` (the same
:func:`calibrant.losses._base.multilabel_inputs`).

Example:
    >>> import torch
    >>> from calibrant.losses.spa import spa_probs, spa_loss
    >>> v = torch.tensor([[-2.0, 0.0, 3.0]])
    >>> spa_probs(v).shape
    torch.Size([1, 3])
    >>> float(spa_loss(v, torch.tensor([[0, 1, 1]]))) > 0
    True

Reference:
    Cheng & Vasconcelos, "Towards calibrated multi-label deep neural networks", CVPR 2024
    (eqs. 16–21, Theorem 3).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from calibrant._checks import check_choice, check_positive
from calibrant._tensor import REDUCTIONS, float32, reduce
from calibrant.losses._base import (
    ThinLoss,
    as_float,
    multilabel_inputs,
    multilabel_valid,
    partial_losses,
)
from calibrant.losses.combine import WeightedSum
from calibrant.losses.multilabel import BCELoss
from calibrant.registry import LOSSES

__all__ = [
    "spa_logit",
    "spa_probs",
    "spa_loss",
    "SPALoss",
    "lpr_loss",
    "LPRLoss",
    "SampleMean",
]

# ----------------------------------------------------------------------------------------------
# SPA: strictly proper asymmetric loss and its inverse link
# ----------------------------------------------------------------------------------------------


def _check_spa(zeta_pos: float, k_pos: float, zeta_neg: float, k_neg: float, **_: Any) -> None:
    for name, value in (("zeta_pos", zeta_pos), ("k_pos", k_pos)):
        check_positive(name, value)
    for name, value in (("zeta_neg", zeta_neg), ("k_neg", k_neg)):
        check_positive(name, value)


def spa_logit(
    logits: torch.Tensor,
    *,
    zeta_pos: float = 1.0,
    k_pos: float = 1.0,
    b_pos: float = 0.0,
    zeta_neg: float = 5.0,
    k_neg: float = 3.0,
    b_neg: float = 1.0,
) -> torch.Tensor:
    r"""Calibrated log-odds ``z = logit(η̂)`` of the SPA inverse link (METHODS §4.6, §10.C2).

    .. math::
        z = \log\frac{k_-}{\zeta_-} - \log\frac{k_+}{\zeta_+}
            + \log\sigma(k_-(v - b_-)) - \log\sigma(-k_+(v - b_+))

    i.e. ``η̂ = σ(z) = A / (A + B)`` with ``A = (k−/ζ−) σ(k−(v−b−))`` and
    ``B = (k+/ζ+) σ(−k+(v−b+))``: the unique stationary point of the conditional risk
    ``η ℓ+(v) + (1−η) ℓ−(v)`` of :func:`spa_loss`. It is strictly increasing in v and equals v
    when all parameters are (1, 1, 0). The poster's printed eq. 17 has the σ signs swapped and is
    decreasing; this is the corrected form.

    Args:
        logits: ``v``, any shape.
        zeta_pos: ζ+ > 0, default 1 ((ζ+, k+, b+) = (1, 1, 0) makes the positive loss BCE).
        k_pos: k+ > 0, default 1.
        b_pos: b+, default 0.
        zeta_neg: ζ− > 0, default 5 ((5, 3, 1) is the paper's illustrated example; per-dataset
            values are not published [unverified], tune on validation).
        k_neg: k− > 0, default 3.
        b_neg: b−, default 1.

    Returns:
        ``z``, same shape as ``logits``, at least float32.

    Example:
        >>> v = torch.tensor([-1.0, 0.0, 2.0])
        >>> spa_logit(v, zeta_neg=1.0, k_neg=1.0, b_neg=0.0)
        tensor([-1.,  0.,  2.])

    Reference:
        Cheng & Vasconcelos, "Towards calibrated multi-label deep neural networks", CVPR 2024,
        eqs. 16–17, Theorem 3.
    """
    _check_spa(zeta_pos, k_pos, zeta_neg, k_neg)
    with float32(logits):
        v = as_float(logits)
        offset = math.log(k_neg / zeta_neg) - math.log(k_pos / zeta_pos)
        return offset + F.logsigmoid(k_neg * (v - b_neg)) - F.logsigmoid(-k_pos * (v - b_pos))


#: The six SPA link parameters and their defaults: the keyword arguments of :func:`spa_logit`.
SPA_DEFAULTS: dict[str, float] = {
    name: p.default
    for name, p in inspect.signature(spa_logit).parameters.items()
    if p.kind is p.KEYWORD_ONLY
}


def spa_probs(logits: torch.Tensor, **params: float) -> torch.Tensor:
    r"""Calibrated probabilities ``η̂ = σ(spa_logit(v))`` of a model trained with SPA.

    Args:
        logits: ``v``, any shape.
        **params: the SPA parameters of :func:`spa_logit` used in training.

    Returns:
        Probabilities in (0, 1), same shape as ``logits``.

    Example:
        >>> spa_probs(torch.tensor([0.0]), zeta_neg=1.0, k_neg=1.0, b_neg=0.0)
        tensor([0.5000])
    """
    return torch.sigmoid(spa_logit(logits, **params))


def spa_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    zeta_pos: float = 1.0,
    k_pos: float = 1.0,
    b_pos: float = 0.0,
    zeta_neg: float = 5.0,
    k_neg: float = 3.0,
    b_neg: float = 1.0,
    ignore_index: int | None = -100,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""Strictly proper asymmetric (SPA) loss on the logit v (SPA paper eq. 16; METHODS §4.6).

    .. math::
        \ell_{+1}(v) = -\tfrac{1}{\zeta_+}\log\sigma(k_+(v - b_+)),\qquad
        \ell_{-1}(v) = -\tfrac{1}{\zeta_-}\log\sigma(-k_-(v - b_-))

    The losses act on v, not on a probability (the third-party ``mlcpl`` applies them to the
    link output, which contradicts eq. 16). Read calibrated probabilities with
    :func:`spa_probs` using the same parameters. Strictly proper for any ζ±, k± > 0, b± ∈ R.

    Args:
        logits: ``(B, T, *spatial)``.
        target: same shape, values in {0, 1} or ``ignore_index``.
        zeta_pos: ζ+ > 0 (default 1); this and the five below are the link parameters of
            :func:`spa_logit`, with the same defaults and meaning.
        k_pos: k+ > 0 (1).
        b_pos: b+ (0).
        zeta_neg: ζ− > 0 (5).
        k_neg: k− > 0 (3).
        b_neg: b− (1).
        ignore_index: target value to ignore, or ``None``.
        reduction: ``"none" | "mean" | "sum"``; mean is eq. 21's label mean averaged over the
            batch.

    Shape:
        ``"none"`` returns the target shape; otherwise a scalar.

    Example:
        >>> v, y = torch.zeros(1, 2), torch.tensor([[1, 0]])
        >>> spa_loss(v, y, zeta_neg=1.0, k_neg=1.0, b_neg=0.0)
        tensor(0.6931)

    Reference:
        Cheng & Vasconcelos, "Towards calibrated multi-label deep neural networks", CVPR 2024.
    """
    _check_spa(zeta_pos, k_pos, zeta_neg, k_neg)

    def partials(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pos = -F.logsigmoid(k_pos * (x - b_pos)) / zeta_pos
        neg = -F.logsigmoid(-k_neg * (x - b_neg)) / zeta_neg
        return pos, neg

    return partial_losses(logits, target, partials, ignore_index=ignore_index, reduction=reduction)


@LOSSES.register("spa", task="multilabel", granularity="element", spatial=False, link="spa_link")
class SPALoss(ThinLoss, fn=spa_loss, check=_check_spa):
    """Module form of :func:`spa_loss`; :meth:`probs` gives the calibrated probabilities."""

    @property
    def link_params(self) -> dict[str, float]:
        """The six link parameters (:data:`SPA_DEFAULTS` keys), as :func:`spa_probs` takes them."""
        return {k: self.hparams[k] for k in SPA_DEFAULTS}

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        """Calibrated probabilities through the inverse link (:func:`spa_probs`)."""
        return spa_probs(logits, **self.link_params)


# ----------------------------------------------------------------------------------------------
# LPR
# ----------------------------------------------------------------------------------------------

Link = str | Callable[[torch.Tensor], torch.Tensor]


def _link_logit(x: torch.Tensor, link: Link, link_params: Mapping[str, float] | None):
    if callable(link):
        return link(x)
    check_choice("link", link, ("sigmoid", "spa"))
    if link == "sigmoid":
        if link_params:
            raise ValueError("link='sigmoid' takes no link_params")
        return x
    return spa_logit(x, **dict(link_params or {}))


def _per_sample_mean(
    values: torch.Tensor, valid: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean of element values over each sample's valid entries -> ``(B,)`` and ``(B,)`` bool."""
    values = torch.where(valid, values, values.new_zeros(()))
    dims = tuple(range(1, values.dim()))
    count = valid.sum(dims)
    return values.sum(dims) / count.clamp(min=1), count > 0


def lpr_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    link: Link = "sigmoid",
    link_params: Mapping[str, float] | None = None,
    ignore_index: int | None = -100,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""Label pair regulariser (LPR; SPA paper eqs. 19–21; METHODS §4.7), stable softplus form.

    With ``z_t = logit(η̂_t)`` the calibrated log-odds of the link, the plug-in pairwise posterior
    is ``β̂^{tt'} = σ(z_t − z_{t'})`` and

    .. math::
        L_{LPR} = \frac{2}{T(T-1)} \sum_{t \ne t'} \mathbb{1}[y_t = 1, y_{t'} = 0]\,
                  \operatorname{softplus}(z_{t'} - z_t)

    per example. The normaliser depends only on the number T of (valid) labels, not on how many
    positive/negative pairs the example has. With the sigmoid link ``z = v`` and LPR is the
    pairwise logistic ranking loss. Gradients flow through the link.

    Ignored labels are removed from the example (T counts valid labels only). Each position of
    ``(B, *spatial)`` is an example; examples with fewer than 2 valid labels contribute nothing.

    Args:
        logits: ``(B, T, *spatial)``.
        target: same shape, values in {0, 1} or ``ignore_index``.
        link: ``"sigmoid"``, ``"spa"`` (with ``link_params`` for :func:`spa_logit`) or a callable
            mapping logits to log-odds z.
        link_params: parameters of the SPA link.
        ignore_index: target value to ignore, or ``None``.
        reduction: ``"none"`` gives one value per sample ``(B,)`` (the mean over its valid
            examples when there are spatial dims); ``"mean"`` averages over samples with a valid
            example; ``"sum"`` sums over samples.

    Shape:
        ``"none"`` returns ``(B,)``; otherwise a scalar.

    Example:
        >>> v, y = torch.tensor([[2.0, -1.0, 0.0]]), torch.tensor([[1, 0, 0]])
        >>> lpr_loss(v, y, reduction="none").shape
        torch.Size([1])

    Reference:
        Cheng & Vasconcelos, "Towards calibrated multi-label deep neural networks", CVPR 2024.
    """
    check_choice("reduction", reduction, REDUCTIONS)
    with float32(logits):
        x, y, valid = multilabel_inputs(logits, target, ignore_index)
        z = _link_logit(x, link, link_params)
        pos = (valid & (y > 0.5)).to(z.dtype)
        neg = (valid & (y < 0.5)).to(z.dtype)
        # pair[b, t, t', *] = softplus(z_t' - z_t) for positive t, negative t'
        diff = z.unsqueeze(1) - z.unsqueeze(2)
        weight = pos.unsqueeze(2) * neg.unsqueeze(1)
        pairs = torch.where(weight > 0, F.softplus(diff), torch.zeros_like(diff))
        total = (pairs * weight).sum((1, 2))  # (B, *spatial)
        n_valid = valid.sum(1).to(z.dtype)
        example_ok = n_valid >= 2
        per_example = 2.0 * total / (n_valid * (n_valid - 1.0)).clamp(min=1.0)
        per_sample, sample_ok = _per_sample_mean(per_example.unsqueeze(1), example_ok.unsqueeze(1))
        return reduce(per_sample, sample_ok, reduction)


@LOSSES.register("lpr", task="multilabel", granularity="sample", spatial=False)
class LPRLoss(ThinLoss):
    """Module form of :func:`lpr_loss`."""

    _fn = staticmethod(lpr_loss)

    def __init__(
        self,
        *,
        link: Link = "sigmoid",
        link_params: Mapping[str, float] | None = None,
        ignore_index: int | None = -100,
        reduction: str = "mean",
    ) -> None:
        if not callable(link):
            check_choice("link", link, ("sigmoid", "spa"))
        link_params = dict(link_params) if link_params else None  # a copy, stored as given
        super().__init__()


class SampleMean(nn.Module):
    r"""Turn an element-wise multi-label loss into one value per sample, then reduce.

    .. math::
        L_b = \frac{1}{|V_b|}\sum_{(t, s) \in V_b} \ell_{b t s}

    over the valid entries ``V_b`` of sample b (eq. 21's ``(1/T)Σ_t``). Used to add per-sample
    terms such as LPR to an element-wise loss in a :class:`WeightedSum`.

    Args:
        base: an element-wise loss module built with ``reduction="none"``.
        ignore_index: the target value ``base`` ignores.
        reduction: ``"none"`` gives ``(B,)``; ``"mean"`` averages over samples with a valid
            entry; ``"sum"`` sums over samples.

    Example:
        >>> loss = SampleMean(BCELoss(reduction="none"))
        >>> loss(torch.zeros(2, 3), torch.ones(2, 3))
        tensor(0.6931)
    """

    def __init__(
        self, base: nn.Module, *, ignore_index: int | None = -100, reduction: str = "mean"
    ) -> None:
        super().__init__()
        check_choice("reduction", reduction, REDUCTIONS)
        self.base, self.ignore_index, self.reduction = base, ignore_index, reduction

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per-sample mean of ``base(logits, target)`` over valid entries, then reduced."""
        values = self.base(logits, target)
        if values.shape != target.shape:
            raise ValueError(
                f"SampleMean needs an element-wise base loss with reduction='none'; got values "
                f"of shape {tuple(values.shape)} for target {tuple(target.shape)}"
            )
        per_sample, ok = _per_sample_mean(values, multilabel_valid(target, self.ignore_index))
        return reduce(per_sample, ok, self.reduction)


# ----------------------------------------------------------------------------------------------
# registry
# ----------------------------------------------------------------------------------------------


def _with_lpr(
    base: nn.Module, link: str, link_params: Mapping[str, float] | None, lam: float, **kw: Any
) -> WeightedSum:
    ignore_index, reduction = kw.get("ignore_index", -100), kw.get("reduction", "mean")
    return WeightedSum(
        {
            "task": SampleMean(base, ignore_index=ignore_index, reduction=reduction),
            "lpr": LPRLoss(
                link=link, link_params=link_params, ignore_index=ignore_index, reduction=reduction
            ),
        },
        weights={"lpr": lam},
    )


@LOSSES.register("spa_lpr", task="multilabel", granularity="sample", spatial=False, link="spa_link")
def _build_spa_lpr(
    *, lam: float = 1.0, ignore_index: int | None = -100, reduction: str = "mean", **spa: float
) -> WeightedSum:
    """SPA + λ·LPR through the SPA link (eq. 21); λ = 1 is a placeholder (METHODS §10.C5)."""
    params = {**SPA_DEFAULTS, **spa}
    base = SPALoss(**params, ignore_index=ignore_index, reduction="none")
    return _with_lpr(base, "spa", params, lam, ignore_index=ignore_index, reduction=reduction)


@LOSSES.register("bce_lpr", task="multilabel", granularity="sample", spatial=False)
def _build_bce_lpr(
    *, lam: float = 1.0, ignore_index: int | None = -100, reduction: str = "mean"
) -> WeightedSum:
    """BCE + λ·LPR with the sigmoid link (Table 4's BCE+LPR)."""
    base = BCELoss(ignore_index=ignore_index, reduction="none")
    return _with_lpr(base, "sigmoid", None, lam, ignore_index=ignore_index, reduction=reduction)
