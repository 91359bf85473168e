"""Test-session settings: tiny tensors and two pytest-xdist workers on 2 cores want one thread per process."""

from __future__ import annotations

import os

# OpenMP threads that spin while waiting make small ops ~100x slower when another process holds a core
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # after the OpenMP setting

# intra-op threads only add overhead on the tests' tiny tensors, and oversubscribe the cores under xdist
torch.set_num_threads(1)
