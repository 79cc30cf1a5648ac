"""Compare training histories but for their wall time (the one field no two runs share)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


def untimed(history: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The epoch records without ``seconds``, after checking each epoch was timed."""
    records = list(history)
    assert all(r["seconds"] > 0 for r in records), "every epoch records its wall time"
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]
