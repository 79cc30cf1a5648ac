"""Shared fixtures: seeded generators, the real-data root, doctest namespace."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from calibrant._paths import DATA_ENV

REQUIRE_DATA = os.environ.get("CALIBRANT_REQUIRE_DATA") == "1"


@pytest.fixture(autouse=True)
def _add_doctest_namespace(doctest_namespace):
    doctest_namespace["torch"] = torch
    doctest_namespace["np"] = np


@pytest.fixture
def generator() -> torch.Generator:
    """A fresh seeded CPU generator for each test."""
    return torch.Generator().manual_seed(0)


def _data_root() -> Path | None:
    env = os.environ.get(DATA_ENV)
    if env and Path(env).is_dir():
        return Path(env)
    default = Path(__file__).resolve().parents[2] / "shared" / "data"
    return default if default.is_dir() else None


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The real-data root. In CI (CALIBRANT_REQUIRE_DATA=1) a missing root fails the test."""
    root = _data_root()
    if root is None:
        msg = f"real data not found: set {DATA_ENV} to the shared data folder"
        if REQUIRE_DATA:
            pytest.fail(msg)
        pytest.skip(msg)
    return root


def require_dataset(root: Path, *parts: str) -> Path:
    """Path of a dataset below the root; fails in CI and skips elsewhere when it is missing."""
    path = root.joinpath(*parts)
    if not path.exists():
        msg = f"dataset not found at {path}"
        if REQUIRE_DATA:
            pytest.fail(msg)
        pytest.skip(msg)
    return path
