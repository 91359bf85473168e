"""Kill a training run at random moments with SIGKILL (also while a checkpoint is being written), resume it, repeat,
and check that nothing was lost. Used through the ``kill_driver`` fixture (``tests/conftest.py``); run as a script:

    python tests/killing.py '<json spec>'

The spec names an *entry*: a Python file with ``train(workdir, resume, **kwargs)`` that trains (a toy run, or a bundle
through ``ConfigWorkflow``) and resumes from the newest checkpoint in ``workdir/<ckpt_subdir>`` when ``resume``. The
driver imports it once, then forks one child per attempt, so a kill costs no interpreter start. Per seed it runs an
uninterrupted reference, then kills and resumes ``kills_per_seed`` times (half of the kills, ``write_fraction``, are
timed by watching for the saver's temporary file), lets the last attempt finish and compares. Printed report (JSON):
kills, kills while a temporary file existed, resumes, fresh starts (after a kill that came before the first checkpoint,
where ``--resume true`` refuses: nothing to resume), failed attempts, files left damaged, regressions (the newest
readable checkpoint going back), and whether the final checkpoint and the ``compare`` files equal the reference.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import random
import shutil
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch

CHECKPOINTER_KEY = "checkpointer"  # the saver's own record (run id, times): differs between runs by design


def _load_entry(path: str) -> Any:
    spec = importlib.util.spec_from_file_location("kill_entry", path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules["kill_entry"] = module
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def _fork(entry: Any, workdir: Path, resume: bool, kwargs: dict, log: Path) -> int:
    pid = os.fork()
    if pid:
        return pid
    code = 0
    try:  # the child: its output goes to a log file, it ends with os._exit (no driver cleanup runs twice)
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        logging.basicConfig(level=logging.INFO, format="%(name)s %(levelname)s %(message)s", force=True)
        entry.train(str(workdir), resume=resume, **kwargs)
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _wait(pid: int, timeout: float) -> int:
    """Exit status of ``pid`` (negative: killed by that signal)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.005)
    os.kill(pid, signal.SIGKILL)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def _temporaries(folder: Path) -> list[str]:
    try:
        return [name for name in os.listdir(folder) if ".tmp-" in name]
    except FileNotFoundError:
        return []


def _scan(folder: Path, prefix: str, compare: list[str]) -> tuple[list[str], int]:
    """Damaged files under final names, and the newest readable training checkpoint's iteration (-1: none)."""
    damaged, newest = [], -1
    names = sorted(p.name for p in folder.glob(f"{prefix}*.pt")) if folder.is_dir() else []
    for name in names + [c for c in compare if (folder / c).exists()]:
        try:
            content = torch.load(folder / name, weights_only=True, map_location="cpu")
        except Exception as err:
            damaged.append(f"{name}: {type(err).__name__}")
            continue
        if name in names and isinstance(content, dict) and "trainer" in content:
            newest = max(newest, int(content["trainer"]["iteration"]))
    return damaged, newest


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and bool(torch.equal(a, b))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(map(_equal, a, b))
    return a == b


def _same_final(reference: Path, run: Path) -> bool:
    """Whether two final checkpoints hold the same state (the saver's own record aside); unreadable: not."""
    try:
        a, b = (torch.load(p, weights_only=True, map_location="cpu") for p in (reference, run))
    except Exception:
        return False
    for content in (a, b):
        content.pop(CHECKPOINTER_KEY, None)
    return _equal(a, b)


def _same_bytes(a: Path, b: Path) -> bool:
    return a.is_file() and b.is_file() and a.read_bytes() == b.read_bytes()


def drive(spec: dict) -> dict:
    """Run the kill campaign of ``spec`` (see the module docstring); returns the report."""
    entry = _load_entry(spec["entry"])
    root, subdir, prefix = Path(spec["workdir"]), spec.get("ckpt_subdir", "models"), spec.get("prefix", "checkpoint")
    compare, final = list(spec.get("compare", [])), spec.get("final", f"{prefix}_final.pt")
    timeout, write_fraction = float(spec.get("timeout", 120)), float(spec.get("write_fraction", 0.5))
    report: dict[str, Any] = {"seeds": [], "started": time.time()}
    for seed in spec["seeds"]:
        rng = random.Random(seed)
        kwargs = {**spec.get("kwargs", {}), "seed": seed}
        ref_dir, run_dir = root / f"seed{seed}" / "reference", root / f"seed{seed}" / "killed"
        for d in (ref_dir, run_dir):
            d.mkdir(parents=True, exist_ok=True)
        start = time.monotonic()
        status = _wait(_fork(entry, ref_dir, False, kwargs, ref_dir / "log.txt"), timeout)
        duration = time.monotonic() - start
        result: dict[str, Any] = {"seed": seed, "reference_status": status, "reference_s": round(duration, 2)}
        kills = during_write = resumes = fresh_starts = 0
        failures, damaged, regressions, newest_seen = [], [], [], -1
        attempt = restarts = 0
        while kills < spec["kills_per_seed"]:
            resume = attempt > 0
            resumes += resume
            stale = set(_temporaries(run_dir / subdir))  # left by an earlier kill: not a write of this attempt
            pid = _fork(entry, run_dir, resume, kwargs, run_dir / "log.txt")
            deadline, killed, watch = time.monotonic() + duration * 1.5 + 5, False, rng.random() < write_fraction
            delay = rng.uniform(0.02, duration)
            begun, status = time.monotonic(), None
            while time.monotonic() < deadline and not killed:
                done, raw = os.waitpid(pid, os.WNOHANG)
                if done:
                    status = os.waitstatus_to_exitcode(raw)
                    break
                writing = bool(set(_temporaries(run_dir / subdir)) - stale)
                if (watch and writing) or (not watch and time.monotonic() - begun > delay):
                    if watch:
                        time.sleep(rng.uniform(0.0, 0.003))
                    os.kill(pid, signal.SIGKILL)
                    during_write += bool(set(_temporaries(run_dir / subdir)) - stale)
                    killed = True
                time.sleep(0.0005 if watch else 0.002)
            if status is None:
                status = _wait(pid, timeout)
            attempt += 1
            if killed:
                kills += 1
            elif status == 0:
                # finished before the kill came: start over in a fresh folder so every kill still counts (named by
                # the restart, never reused: a folder holding a finished run refuses a fresh start)
                restarts += 1
                run_dir = root / f"seed{seed}" / f"killed{restarts}"
                run_dir.mkdir(parents=True, exist_ok=True)
                attempt, newest_seen = 0, -1
                continue
            bad, newest = _scan(run_dir / subdir, prefix, compare)
            damaged += [f"after kill {kills}: {b}" for b in bad if not any(b in d for d in damaged)]
            if not killed:
                failures.append(f"attempt {attempt} (after kill {kills}): exit status {status}")
                break  # it cannot resume: no point killing further
            if newest < 0:
                # killed before its first checkpoint: `--resume true` refuses (nothing to resume from), and the user
                # starts over, replacing what the killed run wrote (`--overwrite true`); the next attempt is fresh
                shutil.rmtree(run_dir / subdir, ignore_errors=True)
                attempt, newest_seen = 0, -1
                fresh_starts += 1
                continue
            if newest < newest_seen:
                regressions.append(
                    f"after kill {kills}: newest readable checkpoint went from {newest_seen} to {newest}"
                )
            newest_seen = max(newest_seen, newest)
        status = _wait(_fork(entry, run_dir, attempt > 0, kwargs, run_dir / "log.txt"), timeout)
        resumes += attempt > 0
        if status != 0:
            failures.append(f"final attempt: exit status {status}")
        ref_final, run_final = ref_dir / subdir / final, run_dir / subdir / final
        same_state = _same_final(ref_final, run_final)
        identical = {c: _same_bytes(ref_dir / subdir / c, run_dir / subdir / c) for c in compare}
        logs = "".join(p.read_text() for p in (root / f"seed{seed}").glob("killed*/log.txt"))
        result.update(
            mid_epoch_resumes=logs.count(" at batch "),  # TrainingCheckpoint: "continues with epoch N at batch b"
            kills=kills,
            kills_during_write=during_write,
            resumes=resumes,
            fresh_starts=fresh_starts,
            failures=failures,
            damaged=damaged,
            regressions=regressions,
            final_state_equal=same_state,
            final_exists=run_final.is_file(),
            identical_files=identical,
            log_tail=(run_dir / "log.txt").read_text()[-3000:] if failures or not same_state else "",
        )
        report["seeds"].append(result)
    report["elapsed_s"] = round(time.time() - report.pop("started"), 1)
    for key in ("kills", "kills_during_write", "resumes", "fresh_starts", "mid_epoch_resumes"):
        report[key] = sum(s[key] for s in report["seeds"])
    for key in ("failures", "damaged", "regressions"):
        report[key] = [f"seed {s['seed']}: {x}" for s in report["seeds"] for x in s[key]]
    report["all_equal"] = all(s["final_state_equal"] and all(s["identical_files"].values()) for s in report["seeds"])
    return report


if __name__ == "__main__":
    print(json.dumps(drive(json.loads(sys.argv[1]))))
