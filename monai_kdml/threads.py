"""OpenMP settings that do not collapse on a shared CPU: passive waits, chosen before torch loads its OpenMP runtime.

torch's CPU operators run on an OpenMP thread pool (GNU libgomp in the Linux wheels). Without ``OMP_WAIT_POLICY``,
each pool thread spins for about 300,000 iterations after every parallel region before it sleeps; when other
processes hold the cores, those spinning threads take the time slices the work needs, and small operators get many
times slower (one MSI demo epoch: 259-263 s by default, 54-63 s with ``OMP_WAIT_POLICY=PASSIVE`` at a load average
of 5; ``benchmarks/thread_wait_policy.py``, ``docs/threads.md``).

The OpenMP runtime reads the policy once, when it is loaded, which is at ``import torch``; setting the variable later
changes nothing in that process. So:

- importing :mod:`monai_kdml` sets ``OMP_WAIT_POLICY=PASSIVE`` in ``os.environ`` (unless the user chose a wait
  setting: ``OMP_WAIT_POLICY``, ``GOMP_SPINCOUNT`` or ``KMP_BLOCKTIME``), which takes effect when torch is imported
  after it, and in every child process;
- ``python -m monai.bundle`` imports torch before any bundle config is read, so when a bundle imports monai_kdml
  into a process whose OpenMP pool already spins (more than one thread), the process restarts itself once, at once,
  with the setting in its environment (:func:`restart_with_passive_waits`).

LLVM/Intel OpenMP read the same variable (``PASSIVE`` sets their ``KMP_BLOCKTIME`` to 0), so one variable covers
every runtime torch ships with.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import MutableMapping

from monai_kdml._cli import bundle_cli_argv

__all__ = ["USER_WAIT_SETTINGS", "configure_threads", "openmp_spin_ms", "passive_wait_defaults"]

logger = logging.getLogger(__name__)

USER_WAIT_SETTINGS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")
"""Variables by which a user chooses how OpenMP threads wait; when any is set, monai-kdml sets nothing."""


def passive_wait_defaults(environ: MutableMapping[str, str] = os.environ) -> dict[str, str]:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` in ``environ`` unless one of :data:`USER_WAIT_SETTINGS` is there.

    Returns:
        What was set (empty when the user's own setting was kept).
    """
    if any(name in environ for name in USER_WAIT_SETTINGS):
        return {}
    environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return {"OMP_WAIT_POLICY": "PASSIVE"}


def configure_threads() -> None:
    """Passive OpenMP waits for this process (see the module docstring); called when monai_kdml is imported.

    Before torch is imported, setting the variable is enough. Under ``python -m monai.bundle`` with torch already
    loaded and more than one intra-op thread, the process is restarted with the variable set (POSIX only).
    """
    torch_loaded = "torch" in sys.modules
    chosen = passive_wait_defaults()
    if not chosen or not torch_loaded or os.name != "posix" or bundle_cli_argv() is None:
        return
    torch = sys.modules["torch"]
    get_num_threads = getattr(torch, "get_num_threads", None)
    if get_num_threads is None or get_num_threads() < 2:
        return  # a single thread has no pool that could spin
    restart_with_passive_waits()


def restart_with_passive_waits() -> None:
    """Replace this process by the same command with ``OMP_WAIT_POLICY=PASSIVE`` in its environment (same pid)."""
    logger.info(
        "torch was loaded before monai_kdml, with spinning OpenMP waits: restarting once with OMP_WAIT_POLICY=PASSIVE "
        "(set OMP_WAIT_POLICY yourself to keep your choice; docs/threads.md)."
    )
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    # MONAI's config-security warning was shown in this start already: the restarted command need not repeat it
    warnings = [w for w in (env.get("PYTHONWARNINGS", ""), "ignore:parsing config_file:UserWarning") if w]
    env["PYTHONWARNINGS"] = ",".join(warnings)
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)


def openmp_spin_ms(repeats: int = 15, idle_s: float = 0.02) -> float:
    """CPU time (ms, median) this process burns during ``idle_s`` of sleep right after a parallel torch operator.

    About 0 when OpenMP threads wait passively; several ms per idle thread while they spin. A diagnostic for this
    process's effective wait policy (it needs ``torch.get_num_threads() > 1`` to show anything).
    """
    import torch

    x = torch.rand(2_000_000)
    burnt = []
    for _ in range(repeats):
        (x * 2).sum()
        start = time.process_time()
        time.sleep(idle_s)
        burnt.append((time.process_time() - start) * 1000)
    return sorted(burnt)[len(burnt) // 2]
