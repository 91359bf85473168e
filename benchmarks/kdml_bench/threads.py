"""7. Threads: OpenMP wait policy and intra-op thread count, with and without a competing CPU load.

One worker process per setting (``OMP_WAIT_POLICY`` unset = GNU OpenMP's default, which spins before sleeping, or
``PASSIVE``; ``torch.set_num_threads(n)``), all alive at once and asked in turn, so the settings are interleaved
round by round. In half the rounds a busy-loop process competes for one core. Every time is divided by the
reference of its round: default policy, the most threads, no competing load.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from kdml_bench.config import Profile
from kdml_bench.report import Figure, SectionResult, Table
from kdml_bench.timing import stats

__all__ = ["prestart", "run"]

LOADS = ("idle", "busy")
_started: dict[tuple[str, int], subprocess.Popen] = {}


def _settings(profile: Profile) -> list[tuple[str, int]]:
    return [(policy, n) for policy in ("default", "PASSIVE") for n in sorted(profile.threads_counts)]


def prestart(profile: Profile) -> None:
    """Start the workers now; they import in the background until :func:`run` asks them."""
    for s in _settings(profile):
        _started.setdefault(s, _start_worker(*s, profile))


def _start_worker(policy: str, threads: int, profile: Profile) -> subprocess.Popen:
    w = profile.threads_workload
    env = dict(os.environ)
    env.pop("OMP_WAIT_POLICY", None)
    if policy != "default":
        env["OMP_WAIT_POLICY"] = policy
    here = Path(__file__).resolve().parent
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(here.parent), str(here.parents[1]), env.get("PYTHONPATH")) if p)
    spec = {
        "preset": w.preset,
        "image_size": w.image_size,
        "batch": w.batch,
        "num_students": profile.num_students,
        "threads": threads,
    }
    return subprocess.Popen(
        [sys.executable, "-m", "kdml_bench.thread_worker", json.dumps(spec)],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def _ask(worker: subprocess.Popen, steps: int) -> float:
    assert worker.stdin is not None and worker.stdout is not None
    worker.stdin.write(f"{steps}\n")
    worker.stdin.flush()
    return float(json.loads(worker.stdout.readline())["seconds"])


def run(profile: Profile, device: torch.device) -> SectionResult:
    result = SectionResult()
    if device.type != "cpu":
        result.skipped = "CPU thread settings; run without --device cuda"
        return result
    counts = sorted(profile.threads_counts)
    settings = _settings(profile)
    workers = {s: _started.pop(s) if s in _started else _start_worker(*s, profile) for s in settings}
    times: dict[tuple[str, int, str], list[float]] = {(s[0], s[1], load): [] for s in settings for load in LOADS}
    try:
        for w in workers.values():
            assert w.stdout is not None
            if w.stdout.readline().strip() != "ready":
                raise RuntimeError("a thread worker failed to start")
        for r in range(profile.threads_repeats):
            for load in LOADS if r % 2 == 0 else LOADS[::-1]:
                busy = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if load == "busy" else None
                time.sleep(0.3 if busy else 0.0)
                k = r % len(settings)
                for s in settings[k:] + settings[:k]:
                    times[(s[0], s[1], load)].append(_ask(workers[s], profile.threads_iters) / profile.threads_iters)
                if busy is not None:
                    busy.kill()
                    busy.wait()
    finally:
        for w in workers.values():
            if w.poll() is None:
                assert w.stdin is not None
                w.stdin.write("quit\n")
                w.stdin.flush()
                w.wait(timeout=30)
    ref = times[("default", counts[-1], "idle")]
    ratio = {key: [a / b for a, b in zip(v, ref, strict=True)] for key, v in times.items()}
    for n in counts:
        for load in LOADS:
            result.figures.append(
                Figure(
                    f"OMP_WAIT_POLICY=PASSIVE / default, {n} thread(s), {load}",
                    [a / b for a, b in zip(times[("PASSIVE", n, load)], times[("default", n, load)], strict=True)],
                )
            )
    if len(counts) > 1:
        for policy in ("default", "PASSIVE"):
            for load in LOADS:
                result.figures.append(
                    Figure(
                        f"{counts[0]} / {counts[-1]} threads, {policy} policy, {load}",
                        [
                            a / b
                            for a, b in zip(
                                times[(policy, counts[0], load)], times[(policy, counts[-1], load)], strict=True
                            )
                        ],
                    )
                )
    rows = [
        [
            policy,
            n,
            *[f"{stats(ratio[(policy, n, load)])['median']:.2f}" for load in LOADS],
            *[f"{stats(times[(policy, n, load)])['median'] * 1000:.0f}" for load in LOADS],
        ]
        for policy, n in settings
    ]
    policy, n = min(settings, key=lambda s: stats(times[(s[0], s[1], "busy")])["median"])
    advice = (
        f"fastest with a competing load: OMP_WAIT_POLICY={policy}, {n} thread(s) "
        f"({stats(ratio[(policy, n, 'busy')])['median']:.2f}x the idle reference; idle it takes "
        f"{stats(ratio[(policy, n, 'idle')])['median']:.2f}x)"
    )
    work = profile.threads_workload
    result.tables.append(
        Table(
            f"time per kdml step ({work.label()}, {profile.num_students} students) relative to default policy, "
            f"{counts[-1]} threads, idle; {advice}",
            ["OMP_WAIT_POLICY", "threads", "x idle", "x busy (1 core taken)", "ms idle", "ms busy"],
            rows,
        )
    )
    result.details = {
        "seconds_per_step": {"/".join(map(str, k)): v for k, v in times.items()},
        "advice": advice,
        "cpu_count": os.cpu_count(),
    }
    return result
