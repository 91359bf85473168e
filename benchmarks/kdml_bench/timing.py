"""Interleaved timing and robust statistics: the only clock the suite reads."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch

__all__ = ["CLOCKS", "clock_name", "interleave", "loadavg", "paired_ratios", "set_clock", "stats", "sync", "timed"]

CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
"""``wall``: elapsed time (what a user waits). ``cpu``: CPU time of this process, all its threads; on a shared
machine it ignores the time other processes hold the cores, so with one intra-op thread it is the steadier clock
(it omits DataLoader worker processes and GPU time: use ``wall`` with workers or CUDA)."""
_clock = ["wall"]


def set_clock(name: str) -> None:
    """Choose the clock every measurement of this process reads (see :data:`CLOCKS`)."""
    if name not in CLOCKS:
        raise ValueError(f"unknown clock {name!r}; choose from {sorted(CLOCKS)}.")
    _clock[0] = name


def clock_name() -> str:
    """The clock in use."""
    return _clock[0]


def sync(device: torch.device) -> None:
    """Wait for queued CUDA work, so a clock read after it measures the work itself."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds of one call of ``fn`` on the chosen clock (synchronised on CUDA)."""
    now = CLOCKS[_clock[0]]
    sync(device)
    start = now()
    fn()
    sync(device)
    return now() - start


def interleave(
    cases: Mapping[str, Callable[[], object]], repeats: int, device: torch.device, warmup: int = 1
) -> dict[str, list[float]]:
    """Time every case once per repeat, cases interleaved, the order rotated each repeat (A B, B A, A B, ...).

    Rotation cancels what running first or second costs (warm caches, a neighbour's burst of load); pairing repeats
    lets :func:`paired_ratios` divide measurements taken seconds apart.

    Args:
        cases: name -> a call doing the whole measured work once.
        repeats: measured rounds.
        device: for synchronisation.
        warmup: untimed rounds before (first calls allocate, build kernels and caches).

    Returns:
        name -> ``repeats`` seconds, in round order.
    """
    names = list(cases)
    for _ in range(warmup):
        for name in names:
            cases[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            times[name].append(timed(cases[name], device))
    return times


def paired_ratios(numerator: Sequence[float], denominator: Sequence[float]) -> list[float]:
    """Round-by-round ratios of two interleaved series."""
    return [a / b if b > 0 else math.inf for a, b in zip(numerator, denominator, strict=True)]


def stats(values: Sequence[float]) -> dict[str, float]:
    """Median, quartiles, min and max (``nan`` for no values); ``n`` is the number of values."""
    if len(values) == 0:
        nan = float("nan")
        return {"median": nan, "q1": nan, "q3": nan, "min": nan, "max": nan, "n": 0}
    arr = np.asarray(values, dtype=float)
    q1, med, q3 = np.percentile(arr, [25, 50, 75])
    return {
        "median": float(med),
        "q1": float(q1),
        "q3": float(q3),
        "min": float(arr.min()),
        "max": float(arr.max()),
        "n": len(values),
    }


def loadavg() -> list[float]:
    """The 1, 5 and 15 minute load averages (empty where the OS has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []
