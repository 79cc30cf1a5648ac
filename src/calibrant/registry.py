"""Name registries: the only place where calibrant dispatches on strings.

Each family the CLI can name (losses, metrics, calibrators, models, datasets, benchmark
suites) has one :class:`Registry`. Entries are registered at their definition site with a decorator
and carry optional metadata (for example the task a loss expects), which the test harness and the
CLI read.

Example:
    >>> from calibrant.registry import Registry
    >>> SHAPES = Registry("shape")
    >>> @SHAPES.register("square", sides=4)
    ... def square(size=1.0):
    ...     return size * size
    >>> SHAPES.build("square", size=3.0)
    9.0
    >>> SHAPES.meta("square")["sides"]
    4
    >>> SHAPES.build("sqare")
    Traceback (most recent call last):
    ...
    KeyError: "unknown shape 'sqare'; did you mean 'square'? Known: square"
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Registry",
    "Entry",
    "LOSSES",
    "METRICS",
    "CALIBRATORS",
    "MODELS",
    "DATASETS",
    "SUITES",
]


@dataclass(frozen=True)
class Entry:
    """One registered object: its name, the callable that builds it and free-form metadata."""

    name: str
    factory: Callable[..., Any]
    meta: dict[str, Any] = field(default_factory=dict)


class Registry:
    """A name -> factory table filled by a decorator at the definition site.

    Args:
        kind: what the registry holds, used in error messages ("loss", "dataset", ...).
        providers: modules whose import registers the entries, imported on the first lookup
            (for entries that live in a higher layer that ``import calibrant`` does not load,
            such as the benchmark suites).
    """

    def __init__(self, kind: str, *, providers: tuple[str, ...] = ()) -> None:
        self.kind = kind
        self.providers = providers
        self._registered: dict[str, Entry] = {}

    @property
    def _entries(self) -> dict[str, Entry]:
        """The table, after importing the providers once."""
        while self.providers:
            module, self.providers = self.providers[0], self.providers[1:]
            importlib.import_module(module)
        return self._registered

    def register(self, name: str | None = None, **meta: Any) -> Callable[[Callable], Callable]:
        """Decorator registering ``factory`` under ``name`` (default: its ``__name__``).

        Args:
            name: registry key; lowercase by convention.
            **meta: metadata stored with the entry (for example ``task="multiclass"``).

        Raises:
            ValueError: if the name is already taken.
        """

        def decorator(factory: Callable) -> Callable:
            key = name or factory.__name__
            if key in self._registered:
                raise ValueError(f"{self.kind} {key!r} is already registered")
            self._registered[key] = Entry(key, factory, dict(meta))
            return factory

        return decorator

    def get(self, name: str) -> Entry:
        """Return the entry for ``name``; unknown names raise ``KeyError`` with close matches."""
        try:
            return self._entries[name]
        except KeyError:
            known = sorted(self._entries)
            close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
            hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
            raise KeyError(
                f"unknown {self.kind} {name!r}{hint} Known: {', '.join(known) or '(none)'}"
            ) from None

    def build(self, name: str, /, **kwargs: Any) -> Any:
        """Build the entry ``name`` with ``kwargs``."""
        return self.get(name).factory(**kwargs)

    def meta(self, name: str) -> dict[str, Any]:
        """Metadata stored with ``name``."""
        return self.get(name).meta

    def names(self, **where: Any) -> list[str]:
        """Sorted names, optionally only those whose metadata matches every ``where`` item."""
        return sorted(
            n for n, e in self._entries.items() if all(e.meta.get(k) == v for k, v in where.items())
        )

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {len(self)} entries)"


LOSSES = Registry("loss")
METRICS = Registry("metric")
CALIBRATORS = Registry("calibrator")
MODELS = Registry("model")
DATASETS = Registry("dataset")
SUITES = Registry("benchmark suite", providers=("calibrant.bench.suites",))  # bench is not public
