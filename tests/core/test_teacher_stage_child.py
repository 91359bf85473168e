"""Stage 1 of ``--teacher_stage`` runs as a child process: it must not outlive a killed parent; it runs only where a
network distils from the teacher and no teacher is given; under ``torchrun`` the ranks above 0 wait for rank 0's."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from monai_kdml.teacher_stage import DONE_NAME, _wait_for_rank_zero, stage_needed, teacher_stage_weights


@pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG is Linux's")
def test_the_child_dies_with_a_killed_parent(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    child_code = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(120)"
    parent = textwrap.dedent(f"""
        import sys
        from monai_kdml.teacher_stage import run_child
        run_child([sys.executable, "-c", {child_code!r}])
    """)
    proc = subprocess.Popen([sys.executable, "-c", parent], env={**os.environ, "PYTHONPATH": os.getcwd()})
    deadline = time.monotonic() + 60
    while not (pid_file.is_file() and pid_file.read_text()) and time.monotonic() < deadline:
        time.sleep(0.1)
    child = int(pid_file.read_text())
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.kill(child, signal.SIGKILL)
    pytest.fail("stage 1's process outlived its killed parent")


@pytest.mark.parametrize(
    ("enabled", "weights", "mode", "cohorts", "needed"),
    [
        (True, None, "kdml", None, True),
        (True, None, "kd", None, True),
        (False, None, "kdml", None, False),
        (True, "t.pt", "kdml", None, False),
        (True, None, "independent", None, False),
        (True, None, "ml", None, False),
        (True, None, "kdml", ["independent", "ml"], False),
        (True, None, "independent", ["independent", "kd"], True),
    ],
)
def test_the_stage_runs_only_where_a_network_distils(enabled, weights, mode, cohorts, needed) -> None:
    assert stage_needed(enabled, weights, mode, cohorts) is needed


def test_ranks_above_zero_wait_for_rank_zeros_stage(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    folder = tmp_path / "teacher_stage"
    (folder / "models").mkdir(parents=True)
    (folder / DONE_NAME).write_text("finished\n")  # an earlier stage, replaced by --overwrite true: not waited for
    os.utime(folder / DONE_NAME, (0, 0))
    writer = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time, pathlib
        time.sleep(1.5)
        folder = pathlib.Path({str(folder)!r})
        (folder / "models" / "best_networks.pt").write_bytes(b"weights")
        (folder / {DONE_NAME!r}).write_text("finished")
    """)])  # fmt: skip
    start = time.monotonic()
    weights = teacher_stage_weights(True, None, tmp_path, "teacher_auc", overwrite=True)
    writer.wait()
    assert weights == str(folder / "models" / "best_networks.pt") and time.monotonic() - start >= 1.0


def test_a_long_wait_for_rank_zero_reminds_what_it_waits_for(tmp_path: Path, caplog) -> None:
    """No deadline (stage 1 may take hours), but a rank > 0 says what it awaits and that nodes must share the folder."""
    import threading

    done, weights = tmp_path / DONE_NAME, tmp_path / "best_networks.pt"

    def finish() -> None:
        time.sleep(0.6)
        weights.write_bytes(b"weights")
        done.write_text("finished")

    writer = threading.Thread(target=finish)
    writer.start()
    with caplog.at_level(logging.INFO, logger="monai_kdml.teacher_stage"):
        assert _wait_for_rank_zero(done, weights, since=time.time() - 1.0, poll_s=0.05, remind_s=0.2) == str(weights)
    writer.join()
    reminders = [r.getMessage() for r in caplog.records if "still waiting for rank 0" in r.getMessage()]
    assert reminders and str(done) in reminders[0] and "filesystem all of them see" in reminders[0]
