"""Fixtures of the core tests: the toy checkpoint run (``toy_run.py``), in-process and as a script."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

TOY_RUN = Path(__file__).resolve().parent / "toy_run.py"


@pytest.fixture(scope="session")
def toy_run() -> ModuleType:
    """``tests/core/toy_run.py`` as a module (``build``, ``train``, ``weights``, ``checkpoint_weights``); its file is
    ``toy_run.__file__``, for subprocesses and the kill driver."""
    if "kdml_toy_run" not in sys.modules:
        spec = importlib.util.spec_from_file_location("kdml_toy_run", TOY_RUN)
        module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
        sys.modules["kdml_toy_run"] = module
        spec.loader.exec_module(module)  # type: ignore[union-attr]
    return sys.modules["kdml_toy_run"]
