"""Shared fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def cifar_root() -> Path:
    """The data root holding cifar-100-python/: $MIXKD_DATA_ROOT (relative paths from the checkout, as CI
    sets it), else <repo>/../shared/data. Tests that need it skip, saying so, when the data is missing
    (and fail under CI, where it must be there)."""
    root = REPO / os.environ.get("MIXKD_DATA_ROOT", "../shared/data")
    if not (root / "cifar-100-python").is_dir():
        if os.environ.get("CI"):  # CI has the files beside the checkout: their absence is a failure there
            pytest.fail(f"CIFAR-100 data missing under {root.resolve()} (MIXKD_DATA_ROOT)")
        pytest.skip(f"CIFAR-100 data missing: no cifar-100-python/ under {root.resolve()} (set MIXKD_DATA_ROOT)")
    return root.resolve()
