"""What the wait policy of torch's OpenMP threads costs the README's main command, with and without competing load.

Runs a short MSI demo training through the README's command (``python -m monai.bundle run --config_file
bundles/msi/train.json``, one epoch on a smaller demo set) in two settings:

- ``spinning``: ``GOMP_SPINCOUNT=300000``, libgomp's own behaviour when no wait policy is set, i.e. what every run
  did before monai-kdml chose one (a user's own OpenMP setting, so monai-kdml leaves it alone);
- ``passive``: no OpenMP variable at all, i.e. monai-kdml's default (``OMP_WAIT_POLICY=PASSIVE``; the bundle command
  restarts itself once to get it, and that restart is part of the measured time);

each on an otherwise unchanged machine and with a busy loop on one core, interleaved, ``--repeats`` times. Prints
the median wall time of the whole command and of the training itself (ignite's "Engine run finished" line of the
trainer), and the ratio spinning / passive.

    python benchmarks/thread_wait_policy.py --repeats 3
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WAIT_SETTINGS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME", "OMP_NUM_THREADS")
SETTINGS = {"spinning": {"GOMP_SPINCOUNT": "300000"}, "passive": {}}
_TRAINED = re.compile(r"KDMLTrainer - INFO - Engine run finished\. Time taken: (\d+):(\d+):([\d.]+)")


def run_once(root: Path, cache: Path, setting: str, args: list[str]) -> tuple[float, float]:
    """One training run; returns (seconds of the whole command, seconds of the training)."""
    env = {k: v for k, v in os.environ.items() if k not in WAIT_SETTINGS}
    env.update({"PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", **SETTINGS[setting]})
    # --teacher_stage false: one process and one training, as when the thread settings were measured
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", "bundles/msi/train.json",
           "--bundle_root", str(root), "--cache_dir", str(cache), "--teacher_stage", "false", *args]  # fmt: skip
    start = time.perf_counter()
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    total = time.perf_counter() - start
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    hours, minutes, seconds = _TRAINED.findall(out.stdout + out.stderr)[-1]
    return total, int(hours) * 3600 + int(minutes) * 60 + float(seconds)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--demo-patients", type=int, default=24)
    parser.add_argument("--demo-tiles-per-patient", type=int, default=10)
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temporary folder")
    opts = parser.parse_args(argv)
    args = ["--max_epochs", "1", "--demo_patients", str(opts.demo_patients),
            "--demo_tiles_per_patient", str(opts.demo_tiles_per_patient)]  # fmt: skip
    work = opts.workdir or Path(tempfile.mkdtemp(prefix="kdml_threads_"))
    cache = work / "cache"
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start; runs in {work}", flush=True)
    run_once(work / "warmup", cache, "passive", args)  # demo tiles generated once, files in the page cache
    results: dict[tuple[str, str], list[tuple[float, float]]] = {}
    count = 0
    for repeat in range(opts.repeats):
        for load in ("no extra load", "busy loop on 1 core"):
            for setting in SETTINGS if repeat % 2 == 0 else list(SETTINGS)[::-1]:
                busy = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if "busy" in load else None
                try:
                    count += 1
                    times = run_once(work / f"run{count}", cache, setting, args)
                finally:
                    if busy is not None:
                        busy.kill()
                        busy.wait()
                results.setdefault((load, setting), []).append(times)
                print(f"  {load:20s} {setting:9s} total {times[0]:6.1f} s  training {times[1]:6.1f} s "
                      f"(load average {os.getloadavg()[0]:.1f})", flush=True)  # fmt: skip
    print(f"\nmedian of {opts.repeats} interleaved runs, {' '.join(args)}:\n")
    print("| load | spinning: total / training (s) | passive: total / training (s) | ratio total | ratio training |")
    print("|---|---:|---:|---:|---:|")
    for load in ("no extra load", "busy loop on 1 core"):
        spin = [statistics.median(t[i] for t in results[(load, "spinning")]) for i in (0, 1)]
        passive = [statistics.median(t[i] for t in results[(load, "passive")]) for i in (0, 1)]
        print(f"| {load} | {spin[0]:.1f} / {spin[1]:.1f} | {passive[0]:.1f} / {passive[1]:.1f} | "
              f"{spin[0] / passive[0]:.2f}x | {spin[1] / passive[1]:.2f}x |")  # fmt: skip


if __name__ == "__main__":
    main()
