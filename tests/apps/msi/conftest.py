"""Fixtures of the MSI app's tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def real_tiles(shared_data: Path) -> Path:
    """The 72 real H&E tiles in Kather's layout in ``../shared``; skips without them."""
    path = shared_data / "he-tiles-real"
    if not path.is_dir():
        pytest.skip(f"real H&E tiles not found at {path}")
    return path
