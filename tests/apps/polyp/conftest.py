"""Fixtures of the polyp app's tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def kvasir(shared_data: Path) -> Path:
    """The real Kvasir-SEG frames in ``../shared`` (research use only: read there, never copied); skips without."""
    path = shared_data / "kvasir-seg"
    if not (path / "kavsir_bboxes.json").is_file():
        pytest.skip(f"real Kvasir-SEG not found at {path}")
    return path
