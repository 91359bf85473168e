"""Run the selected sections, print one summary table (and the detail tables), write and compare the JSON record."""

from __future__ import annotations

import argparse
import logging
import os
import platform
import subprocess
import time
import traceback
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import ignite
import monai
import torch

from kdml_bench import (
    deployment,
    grouped,
    memory,
    overhead,
    pipeline,
    precision,
    probes,
    scaling,
    threads,
    validation,
)
from kdml_bench.config import Profile, get_profile
from kdml_bench.report import SectionResult, compare_runs, format_run, load_run, write_run
from kdml_bench.timing import clock_name, loadavg, set_clock

__all__ = ["main"]

ENV_KEYS = (
    "OMP_WAIT_POLICY",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "GOMP_SPINCOUNT",
    "KMP_BLOCKTIME",
    "CUDA_VISIBLE_DEVICES",
)


def _runners(args: argparse.Namespace) -> dict[str, Callable[[Profile, torch.device], SectionResult]]:
    return {
        "overhead": overhead.run,
        "pipeline": lambda p, d: pipeline.run(p, d, args.cache_dir, args.num_workers),
        "scaling": scaling.run,
        "validation": validation.run,
        "deployment": deployment.run,
        "memory": memory.run,
        "threads": threads.run,
        "precision": precision.run,
        "grouped": grouped.run,
    }


def _meta(args: argparse.Namespace, profile: Profile, device: torch.device) -> dict[str, Any]:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=False,
            cwd=Path(__file__).parent,
        ).stdout.strip()
    except OSError:
        commit = ""
    cpu = (
        next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            platform.processor(),
        )
        if Path("/proc/cpuinfo").exists()
        else ""
    )
    return {
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "git_commit": commit,
        "profile": profile.name,
        "device": str(device) + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "monai": monai.__version__,
        "ignite": ignite.__version__,
        "clock": clock_name(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "env": {k: os.environ.get(k) for k in ENV_KEYS},
        "args": {k: str(v) for k, v in vars(args).items()},
        "profile_settings": {k: str(v) for k, v in vars(profile).items()},
        "loadavg_start": loadavg(),
    }


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.clock == "cpu" and (device.type == "cuda" or args.num_workers > 0):
        raise SystemExit("--clock cpu misses GPU and DataLoader worker time; use --clock wall with them.")
    set_clock(args.clock)
    profile = get_profile(args.profile, args.repeats, args.memory_limit_gib)
    run: dict[str, Any] = {"meta": _meta(args, profile, device), "sections": {}}
    start, failed = time.perf_counter(), False
    runners = _runners(args)
    if profile.prestart:
        if {"deployment", "memory"} & set(args.sections):
            probes.prestart()
        if "threads" in args.sections and device.type == "cpu":
            threads.prestart(profile)
    for name in args.sections:
        t0, load0 = time.perf_counter(), loadavg()
        print(f"[{name}] running (load {load0}) ...", flush=True)
        try:
            result = runners[name](profile, device)
        except Exception:  # a failed section must not lose the others; it is reported and fails the run
            failed = True
            result = SectionResult(skipped="error: " + traceback.format_exc(limit=-3).strip().splitlines()[-1])
            traceback.print_exc()
        record = result.record()
        record["seconds"], record["loadavg_start"], record["loadavg_end"] = time.perf_counter() - t0, load0, loadavg()
        run["sections"][name] = record
        print(f"[{name}] done in {record['seconds']:.0f} s", flush=True)
    run["meta"]["seconds"], run["meta"]["loadavg_end"] = time.perf_counter() - start, loadavg()
    print(format_run(run))
    write_run(run, args.out, args.append)
    if args.compare is not None:
        print(compare_runs(load_run(args.compare), run))
    return 1 if failed else 0
