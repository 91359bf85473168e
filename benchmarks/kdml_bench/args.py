"""Command-line arguments (no torch import here: the OpenMP environment must be set before torch loads)."""

from __future__ import annotations

import argparse
from pathlib import Path

from kdml_bench import SECTIONS

__all__ = ["parse_args"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="benchmarks/run.py",
        description="monai-kdml benchmarks: ratios timed side by side, interleaved; median and spread over repeats.",
    )
    p.add_argument(
        "--profile",
        choices=("smoke", "default", "full"),
        default="default",
        help="sizes: smoke (harness check, < 1 min), default (2-core CPU, ~10 min), full (GPU / quiet)",
    )
    p.add_argument("--smoke", action="store_true", help="same as --profile smoke")
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    p.add_argument("--repeats", type=int, default=None, help="override the profile's repeats")
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads in this process (0: torch's default)")
    p.add_argument(
        "--omp-wait-policy",
        choices=("PASSIVE", "ACTIVE"),
        default=None,
        help="set OMP_WAIT_POLICY before torch loads (default: leave the environment as it is)",
    )
    p.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="wall: elapsed time; cpu: this process's CPU time, steadier on a shared machine with "
        "--threads 1 (not for CUDA, DataLoader workers or the threads section, which always uses wall)",
    )
    p.add_argument("--num-workers", type=int, default=0, help="DataLoader workers of the pipeline section")
    p.add_argument("--memory-limit-gib", type=float, default=None, help="per-probe RSS limit (default: profile's)")
    p.add_argument("--cache-dir", type=Path, default=Path("benchmarks/.cache"), help="demo tiles are generated here")
    p.add_argument("--out", type=Path, default=None, help="write the run as JSON here")
    p.add_argument("--append", type=Path, default=None, help="append the run as one line to this JSON-lines file")
    p.add_argument("--compare", type=Path, default=None, help="print new / old medians against this earlier run")
    args = p.parse_args(argv)
    if args.smoke:
        args.profile = "smoke"
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(args.sections) - set(SECTIONS))
    if unknown:
        p.error(f"unknown sections {unknown}; choose from {list(SECTIONS)}")
    return args
