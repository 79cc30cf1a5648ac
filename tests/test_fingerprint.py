"""Refactors change no number: every loss, ALM objective and metric against its stored fingerprint.

The store (``tests/data/fingerprint.npz``) was written by ``python -m tests.fingerprint`` before
the layering refactor of issue #17. Values must be bitwise identical, except where two bodies of
one formula were merged into one: those keys are listed in ``MERGED`` with the reason, and are
held to 1e-6 relative. A loss or metric added later is simply not in the store; one removed or
renamed fails here.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.fingerprint import STORE, compute

# key prefix -> why its bits may differ (checked to rtol 1e-6)
MERGED: dict[str, str] = {}
# key prefix -> why it is no longer computed
RETIRED: dict[str, str] = {
    "alm/nacl/": "the ALM preset 'nacl' computed the loss 'nacl' by a second code path; NACL has "
    "one implementation now (test_alm: the loss equals the fixed-rule ALM term)",
}


@pytest.fixture(scope="module")
def fresh() -> dict[str, np.ndarray]:
    return compute()


@pytest.fixture(scope="module")
def stored() -> dict[str, np.ndarray]:
    with np.load(STORE) as data:
        return {k: data[k] for k in data.files}


def test_nothing_fingerprinted_has_disappeared(fresh, stored):
    gone = set(stored) - set(fresh)
    assert not sorted(k for k in gone if not any(k.startswith(p) for p in RETIRED))


def test_every_number_is_unchanged(fresh, stored):
    changed = []
    for key in sorted(set(stored) & set(fresh)):
        old, new = stored[key], fresh[key]
        assert old.shape == new.shape and old.dtype == new.dtype, key
        if any(key.startswith(p) for p in MERGED):
            ok = np.allclose(new, old, rtol=1e-6, atol=1e-12, equal_nan=True)
        else:
            ok = np.array_equal(new, old, equal_nan=True)
        if not ok:
            changed.append(key)
    assert not changed, f"changed numbers: {changed}"


def test_the_fingerprint_can_fail(fresh, stored):
    key = next(k for k in sorted(stored) if stored[k].dtype.kind == "f" and stored[k].size)
    nudged = np.nextafter(stored[key], np.inf)
    assert not np.array_equal(nudged, fresh[key])
