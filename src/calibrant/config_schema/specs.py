"""Typed values of the plain config sections (:class:`Spec` and its kinds) and :class:`ConfigError`.

Part of :mod:`calibrant.config_schema`: a :class:`Spec` checks one value of a ``train`` or
``eval`` key and names the key, what was expected and what it got.

Example:
    >>> Int(min=1).check("train.epochs", 3)
    >>> Nullable(Float(min=0, open_min=True)).expected()
    'a number > 0 or null'
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

__all__ = ["Bool", "ConfigError", "Float", "Int", "ListOf", "Nullable", "Spec", "Str"]


class ConfigError(ValueError):
    """A config key or value that calibrant cannot use; ``key`` is its dotted path."""

    __module__ = "calibrant.config_schema"  # its public name, in tracebacks and doctests

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


def _did_you_mean(name: str, known: Iterable[str], prefix: str = "") -> str:
    close = difflib.get_close_matches(name, sorted(set(known)), n=3, cutoff=0.6)
    return f"; did you mean {' or '.join(repr(prefix + c) for c in close)}?" if close else "."


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


# ------------------------------------------------------------------------------ value specs


class Spec:
    """A typed value of a plain section; ``check`` raises :class:`ConfigError` naming ``key``."""

    doc: str = ""

    def expected(self) -> str:
        """What the value must be, in words ("an integer >= 1")."""
        return self._expected()

    def accepts(self, value: Any) -> bool:
        """Whether ``value`` is valid."""
        return self._accepts(value)

    def check(self, key: str, value: Any) -> None:
        """Raise :class:`ConfigError` naming ``key`` unless ``value`` is valid."""
        self._check(key, value)

    def _expected(self) -> str:
        raise NotImplementedError

    def _accepts(self, value: Any) -> bool:
        raise NotImplementedError

    def _check(self, key: str, value: Any) -> None:
        if not self.accepts(value):
            raise ConfigError(key, f"{key} must be {self.expected()}, got {value!r}")


def _range(lo: Any, hi: Any, lo_open: bool = False) -> str:
    parts = []
    if lo is not None:
        parts.append(f"{'>' if lo_open else '>='} {lo}")
    if hi is not None:
        parts.append(f"<= {hi}")
    return (" " + " and ".join(parts)) if parts else ""


@dataclass(frozen=True)
class Int(Spec):
    """An integer (not a bool) in ``[min, max]``."""

    min: int | None = None
    max: int | None = None
    doc: str = ""

    def _expected(self) -> str:
        return "an integer" + _range(self.min, self.max)

    def _accepts(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, int):
            return False
        return (self.min is None or value >= self.min) and (self.max is None or value <= self.max)


@dataclass(frozen=True)
class Float(Spec):
    """A real number (an int is accepted) in ``[min, max]`` (``(min, max]`` with ``open_min``)."""

    min: float | None = None
    max: float | None = None
    open_min: bool = False
    doc: str = ""

    def _expected(self) -> str:
        return "a number" + _range(self.min, self.max, self.open_min)

    def _accepts(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if value != value:  # NaN
            return False
        if self.min is not None and (value <= self.min if self.open_min else value < self.min):
            return False
        return self.max is None or value <= self.max


@dataclass(frozen=True)
class Bool(Spec):
    """``true`` or ``false``."""

    doc: str = ""

    def _expected(self) -> str:
        return "true or false"

    def _accepts(self, value: Any) -> bool:
        return isinstance(value, bool)


@dataclass(frozen=True)
class Str(Spec):
    """A string, optionally one of ``choices``."""

    choices: tuple[str, ...] | None = None
    doc: str = ""

    def _expected(self) -> str:
        if self.choices:
            return "one of " + ", ".join(self.choices)
        return "a string"

    def _accepts(self, value: Any) -> bool:
        return isinstance(value, str) and (self.choices is None or value in self.choices)

    def _check(self, key: str, value: Any) -> None:
        if isinstance(value, str) and self.choices and value not in self.choices:
            hint = _did_you_mean(value, self.choices)
            raise ConfigError(key, f"{key} must be {self.expected()}, got {value!r}{hint}")
        super()._check(key, value)


@dataclass(frozen=True)
class Nullable(Spec):
    """``null`` or a value of ``inner``."""

    inner: Spec
    doc: str = ""

    def _expected(self) -> str:
        return f"{self.inner.expected()} or null"

    def _accepts(self, value: Any) -> bool:
        return value is None or self.inner.accepts(value)

    def _check(self, key: str, value: Any) -> None:
        if value is not None:
            try:
                self.inner.check(key, value)
            except ConfigError:
                super()._check(key, value)


@dataclass(frozen=True)
class ListOf(Spec):
    """A list of values of ``inner``, of length ``length`` when given."""

    inner: Spec
    length: int | None = None
    doc: str = ""

    def _expected(self) -> str:
        n = f"{self.length} " if self.length is not None else ""
        return f"a list of {n}values, each {self.inner.expected()}"

    def _accepts(self, value: Any) -> bool:
        return (
            isinstance(value, list)
            and (self.length is None or len(value) == self.length)
            and all(self.inner.accepts(v) for v in value)
        )
