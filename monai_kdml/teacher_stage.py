"""Offline KD in one command: train the teacher alone first (stage 1), then distil from it frozen (stage 2).

The ``frozen`` protocol of the teacher-protocols grid (``docs/results.md``) took two bundle commands. With
``--teacher_stage true`` the training bundle runs stage 1 itself, before it builds its networks: the same bundle, the
same data and overrides, in ``<bundle_root>/teacher_stage/``, with ``--mode independent --num_students 1 --key_metric
teacher_<metric>`` (one throw-away student; ``models/best_networks.pt`` keeps the teacher of its best validation epoch,
selected on the teacher's own metric). The cohort run then loads that teacher and keeps it frozen. A finished stage 1
is reused (``--resume true`` resumes an interrupted one; ``--overwrite true`` trains it again).

The stage runs only where it matters (:func:`stage_needed`): no ``teacher_weights`` given and some network distils
from the teacher. Under ``torchrun`` it runs before the process group exists: rank 0 trains it as one process, the
other ranks wait for it.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from monai_kdml._cli import bundle_cli_argv, literal, parse_fire_args
from monai_kdml.commands import cli_overrides
from monai_kdml.keys import Mode, parse_cohorts

__all__ = ["STAGE_FOLDER", "run_child", "stage_needed", "stage_one_overrides", "teacher_stage_weights"]

logger = logging.getLogger(__name__)

STAGE_FOLDER = "teacher_stage"
"""Stage 1's run folder, inside the cohort run's ``bundle_root``."""
STAGE_TWO_MESSAGE = "Teacher stage 2 of 2: distilling from the frozen teacher of"
"""Logged when stage 1 is finished (what the log says before the cohort run's own epochs)."""
STAGE_LOGS = "eval/logs"
"""Where stage 1's error logs go, inside :data:`STAGE_FOLDER`: the bundles' ``output_dir`` is ``<bundle_root>/eval``,
and stage 1 is given no other (``output_dir`` is not repeated)."""
DONE_NAME = "stage.done"
"""Written in :data:`STAGE_FOLDER` when stage 1 finished."""
_NOT_REPEATED = ("bundle_root", "ckpt_dir", "output_dir", "teacher_stage", "teacher_mode", "teacher_weights", "mode",
                 "num_students", "cohorts", "key_metric", "resume", "overwrite")  # fmt: skip


def stage_one_overrides(key_metric: str) -> dict[str, Any]:
    """The overrides that make a training run stage 1: the teacher, selected on ``key_metric`` (``teacher_auc``); its
    summary names no next commands (they are the cohort run's, printed when it ends)."""
    return {"mode": "independent", "num_students": 1, "cohorts": None, "key_metric": key_metric, "teacher_stage": False,
            "next_commands": {}}  # fmt: skip


def stage_needed(enabled: bool, teacher_weights: Any, mode: str | Mode, cohorts: Sequence[str] | None = None) -> bool:
    """Whether ``teacher_stage`` trains a teacher for this run: it is on, no ``teacher_weights`` are given (that
    teacher is used as given, with ``teacher_mode``) and some network distils from the teacher (``mode`` or one of
    ``cohorts`` is ``kd``/``kdml``). A skipped stage says why in the log."""
    if not enabled:
        return False
    if teacher_weights is not None:
        logger.info("Teacher stage skipped: `teacher_weights` are given; that teacher is used (teacher_mode applies).")
        return False
    modes = parse_cohorts(cohorts) or [Mode.parse(mode)]
    if not any(m.uses_kd for m in modes):
        logger.info("Teacher stage skipped: no network of this run distils from the teacher (%s).", ", ".join(modes))
        return False
    return True


_LAUNCHER_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE", "ROLE_RANK",
                 "ROLE_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID")  # fmt: skip
"""``torchrun``'s variables, which stage 1 (one process) must not see."""


def _wait_for_rank_zero(done: Path, weights: Path, since: float, poll_s: float = 2.0, remind_s: float = 600.0) -> str:
    """Ranks > 0 under ``torchrun``: wait until rank 0 has finished stage 1 (``done`` written after ``since``); if rank
    0 fails, ``torchrun`` stops this process. Stage 1 may take hours, so there is no deadline: a reminder every
    ``remind_s`` names the file awaited (on several nodes, ``bundle_root`` must be on a filesystem they share)."""
    logger.info("Teacher stage: waiting for rank 0 to train the teacher in %s ...", done.parent)
    start = last = time.monotonic()
    while not (done.is_file() and done.stat().st_mtime >= since and weights.is_file()):
        time.sleep(poll_s)
        if time.monotonic() - last >= remind_s:
            last = time.monotonic()
            logger.info(
                "Teacher stage: still waiting for rank 0 after %.0f min for %s; with several nodes, bundle_root "
                "must be on a filesystem all of them see.",
                (last - start) / 60,
                done,
            )
    return str(weights)


def _die_with_parent() -> Callable[[], None] | None:
    """Linux: a ``preexec_fn`` that makes the child receive SIGTERM when its parent dies (a killed cohort run must not
    leave stage 1 running). The C function is looked up here, in the parent, so the child only calls it between fork
    and exec."""
    if sys.platform != "linux":
        return None
    import ctypes
    import signal

    prctl, sigterm = ctypes.CDLL(None, use_errno=True).prctl, int(signal.SIGTERM)
    return lambda: prctl(1, sigterm)  # 1 = PR_SET_PDEATHSIG


def run_child(cmd: list[str], env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``cmd`` to completion; on Linux the child is terminated if this process dies first (e.g. SIGKILL)."""
    return subprocess.run(cmd, check=False, env=env, preexec_fn=_die_with_parent())


def _config_file() -> str | None:
    """The first config file of this process's ``python -m monai.bundle`` command line (the training config)."""
    argv = bundle_cli_argv()
    if argv is None:
        return None
    files = literal(parse_fire_args(argv[1:])[1].get("config_file"))
    first = files[0] if isinstance(files, (list, tuple)) and files else files
    return first if isinstance(first, str) and first else None


def teacher_stage_weights(
    enabled: bool,
    teacher_weights: Any,
    bundle_root: str | os.PathLike,
    key_metric: str,
    resume: bool = False,
    overwrite: bool = False,
    cache_dir: str | os.PathLike | None = None,
) -> Any:
    """The teacher weights a training run distils from: ``teacher_weights`` as given, or, when ``enabled``, the
    teacher of stage 1 (trained first, in a child process, unless already finished).

    Args:
        enabled: ``teacher_stage``.
        teacher_weights: the ``teacher_weights`` key (must be ``None`` when ``enabled``).
        bundle_root: the cohort run's ``bundle_root``; stage 1 runs in ``<bundle_root>/teacher_stage``.
        key_metric: the teacher's validation metric that selects its epoch, e.g. ``"teacher_auc"``.
        resume: the run's ``resume`` switch (an interrupted stage 1 continues from its checkpoint).
        overwrite: the run's ``overwrite`` switch (stage 1 is trained again).
        cache_dir: the run's data cache (generated demo data, cached items), which stage 1 shares rather than
            building its own under ``<bundle_root>/teacher_stage``.

    Raises:
        ValueError: ``teacher_weights`` given with ``teacher_stage true``.
        RuntimeError: stage 1 failed (its log is named), or it is not finished and cannot run here: in a
            multi-process run, or in a process that is not a ``python -m monai.bundle`` command line (stage 1 repeats
            that command line's overrides; in Python, train it with :func:`stage_one_overrides` and pass its
            ``best_networks.pt`` as ``teacher_weights`` with ``teacher_mode="frozen"``).
    """
    if not enabled:
        return teacher_weights
    if teacher_weights is not None:
        raise ValueError(
            "`--teacher_stage true` trains its own teacher; drop `--teacher_weights`, or keep it and use "
            "`--teacher_mode frozen` without the stage."
        )
    folder = Path(bundle_root) / STAGE_FOLDER
    weights, done = folder / "models" / "best_networks.pt", folder / DONE_NAME
    if done.is_file() and weights.is_file() and not overwrite:
        logger.info("Teacher stage: reusing the teacher of %s (finished).", weights)
        return str(weights)
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        raise RuntimeError(
            f"`--teacher_stage true`: stage 1 ({folder}) is not finished, and it cannot run once the process group "
            "exists; resolve `distil_teacher_weights` before `init_process_group` (as multi_gpu_train.json does), or "
            "run the single-process train.json with the same overrides first."
        )
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and int(os.environ.get("RANK", "0")) != 0:
        return _wait_for_rank_zero(done, weights, since=time.time() - 1.0)
    config_file = _config_file()
    if config_file is None:
        raise RuntimeError(
            "`teacher_stage true` runs stage 1 as the same `python -m monai.bundle run` command line; this process is "
            "not one. Train the teacher with monai_kdml.teacher_stage.stage_one_overrides(...) first, then pass its "
            "best_networks.pt as teacher_weights with teacher_mode='frozen'."
        )
    done.unlink(missing_ok=True)  # ours: written below when this stage finishes
    started = (folder / "models" / "network.json").is_file() or any((folder / "models").glob("checkpoint*.pt"))
    overrides = {k: v for k, v in cli_overrides().items() if k not in _NOT_REPEATED}
    overrides.update({k: str(v) for k, v in stage_one_overrides(key_metric).items()})
    if cache_dir is not None:
        overrides["cache_dir"] = str(cache_dir)
    overrides.update(resume=str(bool(resume and started and not overwrite)), overwrite=str(bool(overwrite)))
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", config_file]
    cmd += ["--bundle_root", str(folder)]
    for key, value in overrides.items():
        cmd += [f"--{key}", value]
    logger.info("Teacher stage 1 of 2: training the teacher alone in %s ...", folder)
    env = {k: v for k, v in os.environ.items() if k not in _LAUNCHER_ENV}  # rank 0 of torchrun: one process
    result = run_child(cmd, env)
    if result.returncode != 0 or not weights.is_file():
        raise RuntimeError(
            f"Teacher stage 1 failed (exit {result.returncode}); its output is above and its logs are in "
            f"{folder / STAGE_LOGS}. Fix it and run the same command again (`--resume true` continues stage 1)."
        )
    done.write_text("finished\n")
    logger.info("%s %s.", STAGE_TWO_MESSAGE, weights)
    return str(weights)
