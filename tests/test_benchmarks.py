"""The benchmark suite end to end in smoke mode: every section reports and every figure is a finite number."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SECTIONS = ("overhead", "pipeline", "scaling", "validation", "deployment", "memory", "threads", "precision", "grouped")
CUDA_ONLY = ("precision",)


def test_smoke_run_reports_every_section(tmp_path: Path) -> None:
    out = tmp_path / "smoke.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    cmd = [sys.executable, str(REPO / "benchmarks" / "run.py"), "--smoke", "--threads", "1", "--clock", "cpu",
           "--omp-wait-policy", "PASSIVE", "--cache-dir", str(tmp_path / "cache"), "--out", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240, check=False)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    run = json.loads(out.read_text())
    assert run["meta"]["profile"] == "smoke" and run["meta"]["torch_threads"] == 1 and run["meta"]["loadavg_start"]
    assert tuple(run["sections"]) == SECTIONS
    for name, section in run["sections"].items():
        if name in CUDA_ONLY:
            assert section["skipped"], name
            continue
        assert not section["skipped"] and section["figures"], name
        for figure in section["figures"]:
            assert figure["n"] >= 1 and all(math.isfinite(v) for v in figure["values"]), (name, figure["name"])
    assert "| section" in proc.stdout and "verdict" in proc.stdout
