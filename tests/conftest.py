"""Test-session settings: keep two pytest-xdist workers from oversubscribing a 2-core machine."""

from __future__ import annotations

import os

# OpenMP threads that spin while waiting make small ops ~100x slower when another process holds a core
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # after the OpenMP setting

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)
