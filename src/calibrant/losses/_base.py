"""Plumbing shared by the loss files: inputs, the float caster, reductions, the module base.

Every loss file imports from here and from :mod:`calibrant._tensor` (the plumbing shared with the
metrics); nothing here knows a concrete loss.

- :func:`as_float` is the one float caster: float32 for every low-precision input, float64 stays
  float64 (so ``gradcheck`` sees double precision).
- :func:`prepare` (multi-class) and :func:`multilabel_inputs` (multi-label) validate a
  ``(logits, target)`` pair and return float logits, a safe target and the validity mask;
  :func:`partial_losses` is the body of every multi-label loss given by its two partial losses.
- :func:`reduce_classes` and :func:`reduce_total` are the class and batch reductions of the
  penalties; :func:`fused_inputs` and :func:`fused_finish` are what a term's ``ce_kernel`` hook
  (:mod:`calibrant.losses.fusion`) needs.
- :class:`ThinLoss` is the one shape of a loss module: it stores the hyper-parameters once and
  forwards them to its pure function; ``class X(ThinLoss, fn=f)`` takes them from ``f``.

Example:
    >>> import torch
    >>> from calibrant.losses._base import ThinLoss, as_float
    >>> as_float(torch.zeros(2).half()).dtype, as_float(torch.zeros(2).double()).dtype
    (torch.float32, torch.float64)
    >>> def shift(logits, target, *, by=1.0, reduction="sum"):
    ...     return (logits + by).sum()
    >>> class Shift(ThinLoss, fn=shift, positional=True):  # Shift(by=1.0, *, reduction="sum")
    ...     pass
    >>> loss = Shift(2.0)
    >>> loss, loss.by, loss(torch.zeros(3), None)
    (Shift(by=2.0, reduction='sum'), 2.0, tensor(6.))
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from calibrant._checks import check_choice, check_finite, check_logits_target
from calibrant._tensor import REDUCTIONS, finite_or_raise, float32, labels_and_mask, reduce

__all__ = [
    "CLASS_REDUCTIONS",
    "ThinLoss",
    "as_float",
    "fused_finish",
    "fused_inputs",
    "multilabel_inputs",
    "multilabel_valid",
    "partial_losses",
    "prepare",
    "reduce_classes",
    "reduce_total",
]

#: How a penalty combines its per-class values: ``"mean"`` (the published code) or ``"sum"``.
CLASS_REDUCTIONS = ("mean", "sum")


def as_float(x: torch.Tensor) -> torch.Tensor:
    """Float32 for any low-precision input; float64 stays float64 (for gradcheck)."""
    return x if x.dtype == torch.float64 else x.float()


# ----------------------------------------------------------------------------------------------
# inputs
# ----------------------------------------------------------------------------------------------


def prepare(
    logits: torch.Tensor, target: torch.Tensor, ignore_index: int | None, *, min_spatial: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Validate a multi-class pair and return ``(float logits, safe target, valid mask)``.

    ``mask`` is ``None`` when no element is ignored (so that :func:`calibrant._tensor.reduce`
    skips the masking passes). Call inside the :func:`calibrant._tensor.float32` context.
    Shared by every multi-class loss.

    Raises:
        ValueError: on non-finite logits, a shape/dtype mismatch or labels out of range.
    """
    check_logits_target(logits, target, min_dims=2 + min_spatial)
    finite_or_raise("logits", logits)
    safe, mask = labels_and_mask(target, logits.shape[1], ignore_index)
    return as_float(logits), safe, mask


def multilabel_valid(target: torch.Tensor, ignore_index: int | None) -> torch.Tensor:
    """The bool mask of the entries of a multi-label target that are not ``ignore_index``."""
    if ignore_index is None:
        return torch.ones_like(target, dtype=torch.bool)
    return target != ignore_index


def multilabel_inputs(
    logits: torch.Tensor, target: torch.Tensor, ignore_index: int | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Validate a multi-label pair; return float logits, safe {0,1} target and the validity mask.

    Raises:
        ValueError: non-floating or non-finite logits, a shape mismatch, fewer than 2 dims, or
            target values other than 0, 1 and ``ignore_index``.
    """
    if not torch.is_floating_point(logits):
        raise ValueError(f"logits must be a floating-point tensor, got dtype {logits.dtype}")
    if logits.dim() < 2:
        raise ValueError(
            f"multi-label logits must have shape (B, T, *spatial), got {tuple(logits.shape)}"
        )
    if logits.shape != target.shape:
        raise ValueError(
            f"multi-label target shape {tuple(target.shape)} must equal logits shape "
            f"{tuple(logits.shape)}"
        )
    check_finite("logits", logits)
    valid = multilabel_valid(target, ignore_index)
    if bool((valid & (target != 0) & (target != 1)).any()):
        raise ValueError(
            f"multi-label target must hold only 0, 1 (or ignore_index={ignore_index}); got "
            f"{torch.unique(target[valid & (target != 0) & (target != 1)])[:5].tolist()}"
        )
    x = as_float(logits)
    y = torch.where(valid, target, torch.zeros_like(target)).to(x.dtype)
    return x, y, valid


def partial_losses(
    logits: torch.Tensor,
    target: torch.Tensor,
    partials: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    *,
    ignore_index: int | None,
    reduction: str,
) -> torch.Tensor:
    r"""A multi-label loss from its partial losses: :math:`y\,\ell_{+1}(v) + (1-y)\,\ell_{-1}(v)`.

    ``partials(v) -> (ℓ+, ℓ−)`` maps the float logits to the two partial losses; the value is
    reduced over the valid entries (:func:`calibrant._tensor.reduce`), in float32.
    """
    with float32(logits):
        x, y, valid = multilabel_inputs(logits, target, ignore_index)
        pos, neg = partials(x)
        return reduce(y * pos + (1 - y) * neg, valid, reduction)


# ----------------------------------------------------------------------------------------------
# reductions
# ----------------------------------------------------------------------------------------------


def reduce_classes(values: torch.Tensor, class_reduction: str) -> torch.Tensor:
    """Sum ``(B, C, *)`` over classes, divided by ``C`` for ``class_reduction="mean"``."""
    check_choice("class_reduction", class_reduction, CLASS_REDUCTIONS)
    out = values.sum(1)
    return out / values.shape[1] if class_reduction == "mean" else out


def reduce_total(
    total: torch.Tensor, reduction: str, *, mask: torch.Tensor | None, numel: int
) -> torch.Tensor:
    """A loss summed over the valid elements, as ``reduction`` (``"sum"`` or ``"mean"``) asks.

    The mean divides by the number of valid elements: ``mask.sum()``, or ``numel`` when
    ``mask`` is ``None`` (nothing ignored); the mean of none is 0.
    """
    if reduction == "sum":
        return total
    count = numel if mask is None else mask.sum()
    return total / torch.clamp(torch.as_tensor(count, device=total.device), min=1)


# ----------------------------------------------------------------------------------------------
# the fused-CE hook (calibrant.losses.fusion)
# ----------------------------------------------------------------------------------------------


def fused_inputs(
    logits: torch.Tensor, target: torch.Tensor, ignore_index: int | None, *, min_dims: int
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(float logits, int64 labels)`` for a fused plan, or ``None`` if any element is ignored."""
    check_logits_target(logits, target, min_dims=min_dims)
    safe, mask = labels_and_mask(target, logits.shape[1], ignore_index)
    if mask is not None:
        return None
    return as_float(logits), safe


def fused_finish(
    num_classes: int, count: int, class_reduction: str, reduction: str
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The ``finish`` of a plan: a penalty's raw sum over elements and classes -> its value."""

    def finish(total: torch.Tensor) -> torch.Tensor:
        if class_reduction == "mean":
            total = total / num_classes
        return total if reduction == "sum" else total / max(count, 1)

    return finish


# ----------------------------------------------------------------------------------------------
# the module base
# ----------------------------------------------------------------------------------------------


class ThinLoss(nn.Module):
    """A loss module that stores its hyper-parameters once and forwards them to its function.

    The usual subclass names its pure function in the class statement,
    ``class FocalLoss(ThinLoss, fn=focal_loss, positional=True)``: its constructor then takes
    the function's keyword-only parameters (names, defaults and annotations, in order), keyword
    only, or with ``positional=True`` by position too, all but ``ignore_index`` and
    ``reduction``. ``check``, if given, is called with them by name (``**kwargs``) to refuse a
    bad value at construction.

    A subclass whose constructor is not its function's (``LPRLoss`` copies its ``link_params``,
    the overlap modules pass their options up) sets ``_fn`` (a ``staticmethod``) and an
    ``__init__`` with the public signature that checks what it must and then calls
    ``super().__init__()``: the arguments of that ``__init__``, as they are at the call, become
    :attr:`hparams` (those in its ``**kwargs`` first, then the named ones in signature order),
    the way ``LightningModule.save_hyperparameters`` collects them.

    Either way no hyper-parameter is written twice in the module. ``forward(*inputs)`` is
    ``_fn(*inputs, **hparams)``; each hyper-parameter reads (and writes) as an attribute
    (``loss.margin``), and the repr lists them. ``reduction``, where given, is checked here.
    """

    _fn: Callable[..., torch.Tensor]

    def __init_subclass__(
        cls,
        fn: Callable[..., torch.Tensor] | None = None,
        *,
        check: Callable[..., None] | None = None,
        positional: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init_subclass__(**kwargs)
        if fn is not None:
            cls._fn = staticmethod(fn)
            cls.__init__ = _init_from(cls, fn, check, positional)

    def __init__(self) -> None:
        super().__init__()
        caller = inspect.currentframe().f_back  # the subclass ``__init__`` that called us
        try:
            names, _, varkw, scope = inspect.getargvalues(caller)
            if not names or scope[names[0]] is not self:
                raise TypeError(
                    f"{type(self).__name__} needs an __init__ that calls super().__init__() "
                    "(ThinLoss stores that __init__'s arguments)"
                )
            hparams = dict(scope[varkw]) if varkw else {}  # a subclass's own, passed up
            hparams.update((name, scope[name]) for name in names[1:])  # all but ``self``
        finally:
            del caller
        self._keep(hparams)

    def _keep(self, hparams: dict[str, Any]) -> None:
        check_choice("reduction", hparams.get("reduction", "mean"), REDUCTIONS)
        self.hparams = hparams

    def __getattr__(self, name: str) -> Any:
        hparams = self.__dict__.get("hparams")
        if hparams is not None and name in hparams:
            return hparams[name]
        return super().__getattr__(name)

    def __setattr__(self, name: str, value: Any) -> None:
        hparams = self.__dict__.get("hparams")
        if hparams is not None and name in hparams:
            hparams[name] = value
        else:
            super().__setattr__(name, value)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        """The function with the stored hyper-parameters (``(logits, target)`` for most)."""
        return self._fn(*inputs, **self.hparams)

    def extra_repr(self) -> str:
        """Hyper-parameters shown in the module repr."""
        return ", ".join(f"{k}={v!r}" for k, v in self.hparams.items())


#: The keyword-only arguments of every loss, also where its hyper-parameters are positional.
_KEYWORD_ONLY = ("ignore_index", "reduction")


def _init_from(
    cls: type[ThinLoss],
    fn: Callable[..., torch.Tensor],
    check: Callable[..., None] | None,
    positional: bool,
) -> Callable[..., None]:
    """The ``__init__`` of ``class cls(ThinLoss, fn=fn)``: ``fn``'s keyword-only parameters."""
    params = [p for p in inspect.signature(fn).parameters.values() if p.kind is p.KEYWORD_ONLY]
    if positional:
        kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
        params = [p if p.name in _KEYWORD_ONLY else p.replace(kind=kind) for p in params]
    me = inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)
    signature = inspect.Signature([me, *params], return_annotation="None")
    name = f"{cls.__qualname__}.__init__"
    most = sum(p.kind is p.POSITIONAL_OR_KEYWORD for p in signature.parameters.values())
    takes = "1 positional argument" if most == 1 else f"from 1 to {most} positional arguments"

    def __init__(self: ThinLoss, *args: Any, **kwargs: Any) -> None:
        if len(args) >= most:  # the errors of a written ``__init__``
            raise TypeError(f"{name}() takes {takes} but {len(args) + 1} were given")
        try:
            bound = signature.bind(self, *args, **kwargs)
        except TypeError as error:
            said = str(error).replace("multiple values", "got multiple values")
            raise TypeError(f"{name}() {said}") from None
        bound.apply_defaults()
        hparams = dict(bound.arguments)
        del hparams["self"]
        if check is not None:
            check(**hparams)
        super(ThinLoss, self).__init__()  # what ThinLoss.__init__ runs first
        self._keep(hparams)

    __init__.__signature__ = signature
    __init__.__qualname__ = name
    __init__.__module__ = cls.__module__
    return __init__
