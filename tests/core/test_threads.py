"""Passive OpenMP waits: set before torch loads its OpenMP runtime, effective in the process, the user's choice kept."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from monai_kdml.threads import USER_WAIT_SETTINGS, passive_wait_defaults

REPO = Path(__file__).resolve().parents[2]
PROBE = "import os, monai_kdml.threads as t; print('PROBE', os.environ.get('OMP_WAIT_POLICY'), t.openmp_spin_ms())"


def bare_env(**extra: str) -> dict[str, str]:
    """This environment without any wait setting (what a user's shell has), two intra-op threads, this checkout."""
    env = {k: v for k, v in os.environ.items() if k not in USER_WAIT_SETTINGS}
    return {**env, "OMP_NUM_THREADS": "2", "PYTHONPATH": str(REPO), **extra}


def probe(args: list[str], env: dict[str, str]) -> tuple[str | None, float, str]:
    """Run ``python <args>``; returns the probed policy, the idle CPU burnt (ms) and stderr."""
    out = subprocess.run([sys.executable, *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    line = next(line for line in out.stdout.splitlines() if line.startswith("PROBE"))
    _, policy, spin = line.split()
    return (None if policy == "None" else policy), float(spin), out.stderr


def bundle_probe(tmp_path: Path) -> list[str]:
    """A bundle config that imports monai_kdml (as both bundles do) and runs the probe."""
    config = tmp_path / "probe.json"
    config.write_text(json.dumps({"imports": ["$import monai_kdml"], "run": [f"$exec({PROBE!r})"]}))
    return ["-m", "monai.bundle", "run", "--config_file", str(config)]


def test_passive_waits_unless_the_user_chose() -> None:
    env: dict[str, str] = {}
    assert passive_wait_defaults(env) == {"OMP_WAIT_POLICY": "PASSIVE"} and env == {"OMP_WAIT_POLICY": "PASSIVE"}
    for name, value in (("OMP_WAIT_POLICY", "ACTIVE"), ("GOMP_SPINCOUNT", "300000"), ("KMP_BLOCKTIME", "200")):
        env = {name: value}
        assert passive_wait_defaults(env) == {} and env == {name: value}


def test_importing_monai_kdml_first_makes_torch_wait_passively() -> None:
    """Measured in the process: CPU burnt while idle right after a parallel operator (spinning threads burn it)."""
    policy, passive, _ = probe(["-c", f"import monai_kdml, torch; {PROBE}"], bare_env())
    assert policy == "PASSIVE"
    _, spinning, _ = probe(["-c", f"import monai_kdml, torch; {PROBE}"], bare_env(GOMP_SPINCOUNT="300000"))
    assert passive < 1.0 and spinning > 3 * max(passive, 0.1), (passive, spinning)


def test_the_bundle_command_line_restarts_once_with_passive_waits(tmp_path: Path) -> None:
    """``python -m monai.bundle`` loads torch before any config: the bundle's import of monai_kdml restarts it."""
    policy, spin, stderr = probe(bundle_probe(tmp_path), bare_env())
    assert policy == "PASSIVE" and spin < 1.0
    assert stderr.count("parsing config_file") == 1  # MONAI's warning, shown by the first start only (issue 15 #29)


def test_a_users_policy_is_kept_without_restart(tmp_path: Path) -> None:
    policy, _, stderr = probe(bundle_probe(tmp_path), bare_env(OMP_WAIT_POLICY="ACTIVE"))
    assert policy == "ACTIVE" and stderr.count("parsing config_file") == 1
