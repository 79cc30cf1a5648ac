"""The shared loss plumbing (``calibrant.losses._base``) and the one thin-module shape."""

from __future__ import annotations

import copy
import inspect
import pickle

import pytest
import torch
from torch import nn

import calibrant.losses as L
from calibrant.losses._base import ThinLoss, as_float

#: Modules that wrap other modules (combinators), not one pure function.
COMBINATORS = {"WeightedSum", "AdaptiveLogLoss", "SampleMean"}
MODULES = [n for n in L.__all__ if inspect.isclass(getattr(L, n))]
MODULES = [n for n in MODULES if issubclass(getattr(L, n), nn.Module)]


@pytest.mark.parametrize("name", MODULES)
def test_every_loss_module_has_the_one_thin_shape(name):
    """A loss module is a ThinLoss over its pure function, unless it combines other modules."""
    cls = getattr(L, name)
    if name in COMBINATORS:
        assert not issubclass(cls, ThinLoss)
        return
    assert issubclass(cls, ThinLoss), name
    assert "forward" not in vars(cls), f"{name}: forward comes from ThinLoss"
    module = cls()
    params = inspect.signature(cls).parameters
    own = [p for p, v in params.items() if v.kind is not v.VAR_KEYWORD]
    assert set(own) <= set(module.hparams), name
    fn = inspect.signature(cls._fn).parameters
    takes_any = any(v.kind is v.VAR_KEYWORD for v in fn.values())
    assert takes_any or set(module.hparams) <= set(fn), f"{name}: hparams its function refuses"


def test_thin_loss_records_the_init_arguments():
    class Shift(ThinLoss):
        _fn = staticmethod(lambda logits, target, *, by, scale, reduction: (logits + by) * scale)

        def __init__(self, by: float = 1.0, *, reduction: str = "mean", **extra) -> None:
            by = float(by)  # a checked or normalised value is stored as it is at the call
            super().__init__()

    loss = Shift(2, scale=3.0)
    assert list(loss.hparams) == ["scale", "by", "reduction"]  # **kwargs first, then the named
    assert loss.by == 2.0 and isinstance(loss.by, float)
    assert repr(loss) == "Shift(scale=3.0, by=2.0, reduction='mean')"
    assert float(loss(torch.tensor(1.0), None)) == 9.0
    loss.by = 0.0  # an attribute write is a hyper-parameter write
    assert loss.hparams["by"] == 0.0 and "by" not in vars(loss)
    assert float(loss(torch.tensor(1.0), None)) == 3.0
    with pytest.raises(ValueError, match="reduction"):
        Shift(reduction="average")


def test_thin_loss_needs_its_own_init():
    class NoInit(ThinLoss):
        _fn = staticmethod(lambda logits, target: logits)

    def build(unrelated=1):
        return NoInit()

    with pytest.raises(TypeError, match="needs an __init__"):
        build()


def test_thin_loss_copies_and_pickles():
    loss = L.LogitMarginPenalty(5.0, "l2")
    for other in (copy.deepcopy(loss), pickle.loads(pickle.dumps(loss))):
        assert other.hparams == loss.hparams and other.hparams is not loss.hparams
        assert (other.margin, other.norm) == (5.0, "l2")


@pytest.mark.parametrize(
    ("dtype", "expected"),
    [
        (torch.float16, torch.float32),
        (torch.bfloat16, torch.float32),
        (torch.float32, torch.float32),
        (torch.float64, torch.float64),
        (torch.int64, torch.float32),
    ],
)
def test_as_float(dtype, expected):
    assert as_float(torch.zeros(2, dtype=dtype)).dtype == expected
