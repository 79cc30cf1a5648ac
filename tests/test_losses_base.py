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


def _shift(logits, target, *, by: float = 1.0, scale: float = 2.0, reduction: str = "mean"):
    return (logits + by) * scale


def _check_by(by, **_):
    if by < 0:
        raise ValueError(f"by must be >= 0, got {by}")


class _Shift(ThinLoss, fn=_shift, check=_check_by, positional=True):
    """Module form of ``_shift``."""


class _WrittenShift(ThinLoss):  # the same module with its __init__ written out
    _fn = staticmethod(_shift)

    def __init__(self, by: float = 1.0, scale: float = 2.0, *, reduction: str = "mean") -> None:
        _check_by(by)
        super().__init__()


class _KeywordShift(ThinLoss, fn=_shift):
    """Module form of ``_shift``, keyword arguments only."""


def test_thin_loss_takes_its_hyper_parameters_from_its_function():
    assert inspect.signature(_Shift) == inspect.signature(_WrittenShift)
    assert [p.kind for p in inspect.signature(_KeywordShift).parameters.values()] == [
        inspect.Parameter.KEYWORD_ONLY
    ] * 3
    loss = _Shift(3.0, reduction="sum")
    assert loss.hparams == _WrittenShift(3.0, reduction="sum").hparams
    assert loss.hparams == {"by": 3.0, "scale": 2.0, "reduction": "sum"}
    assert repr(loss) == "_Shift(by=3.0, scale=2.0, reduction='sum')"
    assert float(loss(torch.tensor(1.0), None)) == 8.0
    assert loss._fn is _shift and "forward" not in vars(_Shift)
    with pytest.raises(ValueError, match="by must be"):
        _Shift(-1.0)
    with pytest.raises(ValueError, match="reduction"):
        _Shift(reduction="average")


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        ((1.0, 2.0, 3.0), {}),
        ((1.0,), {"by": 2.0}),
        ((), {"bye": 2.0}),
        ((), {"scale": 1.0, "x": 1}),
    ],
)
def test_thin_loss_from_a_function_refuses_bad_calls_as_a_written_init(args, kwargs):
    with pytest.raises(TypeError) as written:
        _WrittenShift(*args, **kwargs)
    with pytest.raises(TypeError) as derived:
        _Shift(*args, **kwargs)
    assert str(derived.value) == str(written.value).replace("_WrittenShift", "_Shift")


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
