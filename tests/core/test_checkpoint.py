"""Checkpoints that never lose work (issue 8): atomic files, the newest readable checkpoint, model selection across a
resume, crash and stop checkpoints whatever the handler order, SIGTERM in a real process, ``n_saved`` across
processes, configuration mismatches, and SIGKILL at random moments.

The run is ``tests/core/toy_run.py``: a teacher with dropout and two students on augmented blobs, validated every
epoch with a key metric scripted to peak at epoch 2, MONAI's ``StatsHandler`` first in ``train_handlers`` and
:class:`TrainingCheckpoint` last.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import signal
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
from ignite.engine import Events
from monai.engines.utils import IterationEvents
from monai.handlers import CheckpointSaver

from monai_kdml.handlers import (
    CheckpointMismatchError,
    CheckpointReadError,
    DiskFullError,
    NonFiniteLossError,
    NothingToResumeError,
    TrainingInterrupted,
    atomic_save,
    remove_stale_temporaries,
    resume_checkpoint,
)

EPOCH = 6  # iterations per epoch of the toy run (48 samples, batches of 8)


class At:
    """A handler running ``action(engine)`` at ``event``."""

    def __init__(self, event: Any, action: Callable) -> None:
        self.event, self.action = event, action

    def attach(self, engine: Any) -> None:
        engine.add_event_handler(self.event, self.action)


def sigint(_engine: Any = None) -> None:
    # raise_signal delivers to this (the main) thread before it returns; os.kill may hand the signal to a torch or
    # OpenMP worker thread that a loaded machine schedules late, and two late SIGINTs merge into one (which made
    # test_a_second_signal_stops_at_once fail now and then in whole-file runs, before this change as well)
    signal.raise_signal(signal.SIGINT)


@pytest.fixture(scope="module")
def reference(toy_run: ModuleType, module_tmp: Callable[[str], Path]) -> Callable[[int], Any]:
    """``reference(max_epochs)``: the uninterrupted run's folder and final weights (computed once per length)."""
    cache: dict[int, Any] = {}

    def get(max_epochs: int) -> Any:
        if max_epochs not in cache:
            folder = module_tmp(f"reference{max_epochs}")
            run = toy_run.train(folder, max_epochs=max_epochs)
            cache[max_epochs] = (folder / "models", toy_run.weights([run.teacher, *run.students]))
        return cache[max_epochs]

    return get


def weights(toy_run: ModuleType, run: Any) -> torch.Tensor:
    return toy_run.weights([run.teacher, *run.students])


def test_atomic_save_keeps_the_previous_file_when_writing_fails(tmp_path: Path, monkeypatch: Any) -> None:
    path = tmp_path / "checkpoint_epoch=1.pt"
    atomic_save({"x": torch.ones(3)}, path)
    before = path.read_bytes()

    def dies_half_way(obj: Any, f: Any) -> None:
        f.write(before[: len(before) // 2])
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(OSError, match="No space"):
        atomic_save({"x": torch.zeros(3)}, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # the temporary file is gone too
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask  # group/others may read, as with torch.save


class FullDisk:
    """``os.fdopen`` whose files fail like a full disk (``OSError(ENOSPC)``) once ``room`` bytes are written, so the
    real ``torch.save`` meets it and raises what it raises on a full disk (``RuntimeError: ... unexpected pos``)."""

    def __init__(self, monkeypatch: Any, room: int = 1000) -> None:
        self.monkeypatch, self.room, self.fdopen = monkeypatch, room, os.fdopen

    def __call__(self, *_: Any) -> None:
        self.monkeypatch.setattr(os, "fdopen", self.open)

    def open(self, fd: int, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        f = self.fdopen(fd, mode, *args, **kwargs)
        room, write = self.room, f.write

        def write_until_full(data: Any) -> int:
            nonlocal room
            if len(data) > room:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            room -= len(data)
            return write(data)

        f.write = write_until_full
        return f


def test_atomic_save_on_a_full_disk_says_so_in_one_line(tmp_path: Path, monkeypatch: Any) -> None:
    """Issue 15 case 19 (``model.pt``, ``best_networks.pt``): ENOSPC named, the previous file checked intact."""
    path = tmp_path / "model.pt"
    atomic_save({"x": torch.ones(3)}, path)
    before = path.read_bytes()
    FullDisk(monkeypatch)()
    with pytest.raises(DiskFullError) as full:
        atomic_save({"x": torch.zeros(1000)}, path)
    message = str(full.value)
    assert full.value.errno == errno.ENOSPC and "\n" not in message
    assert f"disk full (ENOSPC) while writing {path}: nothing was written; the previous file model.pt is intact" in (
        message
    )
    assert "unexpected pos" in str(full.value.__cause__)  # what torch says on a full disk
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == [path.name]


def test_a_full_disk_at_a_checkpoint_keeps_the_previous_one_and_says_so(
    toy_run: ModuleType, reference: Callable, tmp_path: Path, monkeypatch: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 15 case 19: the disk fills up while epoch 2's checkpoint is written; the run ends with one line naming
    the disk, the file and the intact checkpoint of epoch 1, which then resumes to the uninterrupted result."""
    models = tmp_path / "models"
    fill = At(Events.EPOCH_COMPLETED(once=2), FullDisk(monkeypatch))  # after validation wrote model.pt
    with pytest.raises(DiskFullError) as full, caplog.at_level(logging.ERROR):
        toy_run.train(tmp_path, max_epochs=3, before_checkpoint=[fill])
    monkeypatch.undo()
    assert str(full.value) == (
        f"[Errno 28] disk full (ENOSPC) while writing the checkpoint {models / 'checkpoint_epoch=2.pt'}: nothing was "
        "written; the previous checkpoint checkpoint_epoch=1.pt is intact, holding the end of epoch 1 (iteration "
        f"{EPOCH}). "
        f"Free space on the disk of {models}; to continue, run the same command again with `--resume true`."
    )
    assert sorted(p.name for p in models.iterdir() if p.suffix == ".pt") == [
        "best_networks.pt",
        "checkpoint_epoch=1.pt",
        "model.pt",
    ]
    assert "could not be written" not in caplog.text  # no second write tried
    resumed = toy_run.train(tmp_path, resume=True, max_epochs=3)
    assert torch.equal(weights(toy_run, resumed), reference(3)[1])
    for name in ("model.pt", "best_networks.pt"):
        assert (models / name).read_bytes() == (reference(3)[0] / name).read_bytes()


def test_temporaries_of_killed_processes_are_removed(tmp_path: Path) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = tmp_path / f".checkpoint_epoch=3.pt.tmp-{dead.pid}-ab12cd34"
    live = tmp_path / f".model.pt.tmp-{os.getpid()}-ab12cd34"
    for p in (stale, live):
        p.write_bytes(b"partial")
    assert remove_stale_temporaries(tmp_path) == [stale]
    assert live.exists()


def test_resume_takes_the_newest_readable_checkpoint_by_content(
    toy_run: ModuleType, reference: Callable, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    toy_run.train(tmp_path, max_epochs=2, n_saved=2)
    models = tmp_path / "models"
    final = models / "checkpoint_final.pt"
    final.write_bytes(final.read_bytes()[:1000])  # what a crash left (the newest file by mtime)
    with caplog.at_level(logging.WARNING):
        assert Path(resume_checkpoint(models, resume=True)).name == "checkpoint_epoch=2.pt"  # type: ignore[arg-type]
    assert "checkpoint_final.pt" in caplog.text and "truncated" in caplog.text
    os.utime(models / "checkpoint_epoch=1.pt")  # touched last, but holds less training: content beats mtime
    assert Path(resume_checkpoint(models, resume=True)).name == "checkpoint_epoch=2.pt"  # type: ignore[arg-type]
    (models / "checkpoint_epoch=2.pt").write_bytes(b"")
    assert Path(resume_checkpoint(models, resume=True)).name == "checkpoint_epoch=1.pt"  # type: ignore[arg-type]
    resumed = toy_run.train(tmp_path, resume=True, max_epochs=3)
    assert torch.equal(weights(toy_run, resumed), reference(3)[1])


@pytest.mark.parametrize("entry", ["_saved", "saved", "pending"])
def test_resume_deletes_only_its_own_files_whatever_the_record_lists(
    toy_run: ModuleType, tmp_path: Path, caplog: pytest.LogCaptureFixture, entry: str
) -> None:
    """Issue 15 case 1: a record that loads with weights_only but lists files outside the run must delete nothing:
    neither among the kept files (Ignite's ``_saved``; ``saved`` in records of release 1) nor the pending removals."""
    run_dir = tmp_path / "run"
    toy_run.train(run_dir, max_epochs=1)
    precious, absolute = tmp_path / "precious.txt", tmp_path / "elsewhere" / "checkpoint_epoch=0.pt"
    absolute.parent.mkdir()
    for victim in (precious, absolute, run_dir / "notes.txt"):
        victim.write_text("keep me")
    path = run_dir / "models" / "checkpoint_epoch=1.pt"
    content = torch.load(path, weights_only=True)
    listed = ["../../precious.txt", str(absolute), "notes.txt", "../models/checkpoint_epoch=0.pt", "x/../notes.txt"]
    record = content["checkpointer"]
    if entry == "pending":
        record["pending"] = listed
    else:
        record.pop("_saved")
        record[entry] = [[k - 10, name] for k, name in enumerate(listed)] + [[6, path.name]]
    torch.save(content, path)
    with caplog.at_level(logging.WARNING):
        toy_run.train(run_dir, resume=True, max_epochs=2)
    assert all(v.read_text() == "keep me" for v in (precious, absolute, run_dir / "notes.txt"))
    assert all(repr(name) in caplog.text for name in listed), caplog.text
    assert not path.exists()  # its own files are still pruned (n_saved=1)


def test_a_fresh_run_beside_an_older_run_resumes_its_own_checkpoint(toy_run: ModuleType, tmp_path: Path) -> None:
    toy_run.train(tmp_path, max_epochs=3)  # leaves checkpoint_epoch=3.pt (iteration 18)
    with pytest.raises(TrainingInterrupted):
        toy_run.train(tmp_path, max_epochs=3, before_checkpoint=[At(Events.ITERATION_COMPLETED(once=9), sigint)])
    path = resume_checkpoint(tmp_path / "models", resume=True)
    assert Path(path).name == "checkpoint_final.pt"  # type: ignore[arg-type]
    assert torch.load(path, weights_only=True)["trainer"]["iteration"] == 9  # type: ignore[arg-type]


def test_hostile_pickle_is_refused_and_never_runs(
    toy_run: ModuleType, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    marker = tmp_path / "code-ran"

    class Exploit:
        def __reduce__(self) -> tuple:
            return (Path.touch, (marker,))

    toy_run.train(tmp_path, max_epochs=1)
    hostile = tmp_path / "models" / "checkpoint_epoch=9.pt"
    torch.save({"trainer": {"iteration": 999, "epoch_length": EPOCH}, "teacher": Exploit()}, hostile)
    with caplog.at_level(logging.WARNING):
        assert Path(resume_checkpoint(tmp_path / "models", resume=True)).name != hostile.name  # type: ignore[arg-type]
    assert hostile.name in caplog.text and "weights_only" in caplog.text
    run = toy_run.build(tmp_path, max_epochs=2, resume_from=hostile)
    with pytest.raises(CheckpointReadError, match="refused by weights_only"):
        run.trainer.run()
    assert not marker.exists()


STOPS = {
    "finished run continued": dict(max_epochs=3),
    "SIGINT inside epoch 4": dict(max_epochs=5, before_checkpoint=[At(Events.ITERATION_COMPLETED(once=20), sigint)]),
    "SIGINT at the end of epoch 3": dict(max_epochs=5, before_checkpoint=[At(Events.EPOCH_COMPLETED(once=3), sigint)]),
}


@pytest.mark.parametrize("stop", list(STOPS))
def test_resumed_run_keeps_model_selection_and_ends_byte_identical(
    toy_run: ModuleType, reference: Callable, tmp_path: Path, caplog: pytest.LogCaptureFixture, stop: str
) -> None:
    """Best score at epoch 2, every later epoch worse: no validation after the resume may replace ``model.pt``."""
    models, final_weights = reference(5)
    first = toy_run.build(tmp_path, **STOPS[stop])
    if stop.startswith("SIGINT"):
        with caplog.at_level(logging.WARNING), pytest.raises(TrainingInterrupted) as stopped:
            first.trainer.run()
        assert stopped.value.code == 128 + signal.SIGINT
        where = "epoch 4, after iteration 2 of 6" if "inside" in stop else "the end of epoch 3"
        assert f"SIGINT received: training stopped at {where}" in str(stopped.value)
        assert "To continue, run the same command again with `--resume true`." in caplog.text
        assert Path(re.search(r"checkpoint (\S+\.pt)", str(stopped.value))[1]).is_file()  # type: ignore[index]
    else:
        first.trainer.run()
    resumed = toy_run.train(tmp_path, resume=True, max_epochs=5)
    assert resumed.evaluator.state.best_metric_epoch == 2
    for name in ("model.pt", "best_networks.pt"):
        assert (tmp_path / "models" / name).read_bytes() == (models / name).read_bytes(), name
    assert torch.equal(weights(toy_run, resumed), final_weights)


@pytest.mark.parametrize("final_file", ["missing", "older"])
def test_a_resume_with_nothing_left_to_train_still_writes_the_final_file(
    toy_run: ModuleType, reference: Callable, tmp_path: Path, final_file: str
) -> None:
    """SIGKILL while the final file is written, after the last epoch's file: the resume trains nothing, yet the final
    file must hold the finished state (it was missing, or an earlier run's with fewer epochs)."""
    models, final_weights = reference(5)
    toy_run.train(tmp_path, max_epochs=3)
    older = (tmp_path / "models" / "checkpoint_final.pt").read_bytes()
    toy_run.train(tmp_path, resume=True, max_epochs=5)
    final = tmp_path / "models" / "checkpoint_final.pt"
    if final_file == "missing":
        final.unlink()
    else:
        final.write_bytes(older)  # what an atomic write leaves when killed: the previous file
    resumed = toy_run.train(tmp_path, resume=True, max_epochs=5)
    assert resumed.trainer.state.iteration == 5 * EPOCH
    state = torch.load(final, weights_only=True)
    assert state["trainer"]["iteration"] == 5 * EPOCH
    expected = torch.load(models / "checkpoint_final.pt", weights_only=True)
    for key in expected.keys() - {"checkpointer"}:  # the saver's own record (run id, times) differs by design
        assert list(_tensors(state[key])) == list(_tensors(expected[key])), key
    assert torch.equal(weights(toy_run, resumed), final_weights)


def _tensors(obj: Any) -> Any:
    """The tensors and plain values of a nested state, in order, tensors as exact byte strings."""
    if isinstance(obj, dict):
        for key in sorted(obj, key=str):
            yield key
            yield from _tensors(obj[key])
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            yield from _tensors(item)
    else:
        yield (obj.dtype, tuple(obj.shape), obj.numpy().tobytes()) if isinstance(obj, torch.Tensor) else obj


def test_crash_checkpoint_is_written_although_stats_handler_comes_first(
    toy_run: ModuleType, reference: Callable, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The non-finite guard raises before the optimizer steps, so the state after the previous iteration is saved."""
    breaks = At(Events.ITERATION_COMPLETED(once=8), lambda e: setattr(e.data_loader.dataset, "broken", True))
    run = toy_run.build(tmp_path, max_epochs=3, before_checkpoint=[breaks])
    with caplog.at_level(logging.ERROR), pytest.raises(NonFiniteLossError):
        run.trainer.run()
    final = tmp_path / "models" / "checkpoint_final.pt"
    assert torch.load(final, weights_only=True)["trainer"]["iteration"] == 8
    assert f"is in {final}. Fix the cause; to continue, run the same command again with `--resume true`" in caplog.text
    resumed = toy_run.train(tmp_path, resume=True, max_epochs=3)
    assert torch.equal(weights(toy_run, resumed), reference(3)[1])


def test_error_during_the_optimizer_steps_saves_nothing_misleading(
    toy_run: ModuleType, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def fail(engine: Any) -> None:
        if engine.state.iteration == 9:
            raise RuntimeError("CUDA error: an illegal memory access")

    run = toy_run.build(tmp_path, max_epochs=3, before_checkpoint=[At(IterationEvents.MODEL_COMPLETED, fail)])
    with caplog.at_level(logging.ERROR), pytest.raises(RuntimeError, match="illegal memory"):
        run.trainer.run()
    assert sorted(p.name for p in (tmp_path / "models").glob("checkpoint*")) == ["checkpoint_epoch=1.pt"]
    assert "nothing new was saved. Resume point:" in caplog.text and "checkpoint_epoch=1.pt" in caplog.text


def test_a_second_signal_stops_at_once(toy_run: ModuleType, tmp_path: Path) -> None:
    """The first SIGINT comes in an epoch's last iteration, so the stop waits for the epoch end; the second does not."""
    first, second = At(Events.ITERATION_COMPLETED(once=6), sigint), At(Events.EPOCH_COMPLETED(once=1), sigint)
    run = toy_run.build(tmp_path, max_epochs=3, before_checkpoint=[first, second])
    with pytest.raises(KeyboardInterrupt):
        run.trainer.run()
    assert list((tmp_path / "models").glob("checkpoint*")) == []  # stopped before the epoch's checkpoint
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the previous handler is back


def test_sigterm_to_a_real_process_ends_it_with_a_checkpoint_and_a_resume_hint(
    toy_run: ModuleType, reference: Callable, tmp_path: Path, child_env: dict
) -> None:
    cmd = [sys.executable, toy_run.__file__, "--workdir", str(tmp_path), "--max-epochs", "12"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=child_env)
    lines = []
    for line in proc.stdout:  # type: ignore[union-attr]
        lines.append(line)
        if line.startswith("iteration 9"):
            proc.send_signal(signal.SIGTERM)
            break
    output = "".join(lines) + proc.communicate(timeout=120)[0]
    assert proc.returncode == 128 + signal.SIGTERM, output[-3000:]
    message = re.search(r"SIGTERM received: training stopped at .*; checkpoint (\S+\.pt)\. To continue, (.*)", output)
    assert message is not None, output[-3000:]
    assert message[2] == "run the same command again with `--resume true`."
    assert Path(message[1]).is_file()
    resumed = toy_run.train(tmp_path, resume=True, max_epochs=12)
    assert torch.equal(weights(toy_run, resumed), reference(12)[1])


def test_n_saved_holds_across_a_resume(toy_run: ModuleType, tmp_path: Path) -> None:
    toy_run.train(tmp_path, max_epochs=2)
    toy_run.train(tmp_path, resume=True, max_epochs=4)
    names = sorted(p.name for p in (tmp_path / "models").glob("checkpoint*.pt"))
    assert names == ["checkpoint_epoch=4.pt", "checkpoint_final.pt"]


def test_resume_into_another_configuration_is_a_clear_error_and_loads_nothing(
    toy_run: ModuleType, tmp_path: Path
) -> None:
    toy_run.train(tmp_path, max_epochs=1)
    more = toy_run.build(tmp_path, resume=True, max_epochs=2, num_students=3)
    before = weights(toy_run, more)
    with pytest.raises(CheckpointMismatchError, match=r"models/checkpoint_final\.pt does not fit") as err:
        more.trainer.run()
    for line in ("2 `students` and the configuration 3", "3 `optimizers` and the configuration 4", "3 `lr_schedulers`"):
        assert f"the checkpoint holds {line}" in str(err.value)
    assert "nothing was loaded" in str(err.value)
    assert torch.equal(weights(toy_run, more), before)  # the teacher would fit: not loaded either

    wider = toy_run.build(tmp_path, resume=True, max_epochs=2, student_width=6)
    before = weights(toy_run, wider)
    with pytest.raises(CheckpointMismatchError) as err:
        wider.trainer.run()
    expected = "`students[0]` (Sequential) does not fit: other shapes (5): 0.weight (4, 1, 3, 3) in the checkpoint vs "
    assert expected + "(6, 1, 3, 3) configured" in str(err.value)
    assert "`students[1]`" in str(err.value)
    assert torch.equal(weights(toy_run, wider), before)


def test_resumes_a_checkpoint_of_monai_checkpoint_saver(
    toy_run: ModuleType, reference: Callable, tmp_path: Path
) -> None:
    """Runs started with today's bundles (MONAI's CheckpointSaver) can be continued with TrainingCheckpoint."""
    first = toy_run.build(tmp_path / "monai", max_epochs=2)
    objects = {**first.checkpoint.save_dict, "trainer": first.trainer}
    CheckpointSaver(str(tmp_path / "monai"), objects, save_interval=1, n_saved=1).attach(first.trainer)
    first.trainer.run()
    legacy = tmp_path / "monai" / "checkpoint_epoch=2.pt"
    assert "checkpointer" not in torch.load(legacy, weights_only=True)
    resumed = toy_run.build(tmp_path / "new", max_epochs=3, resume_from=legacy)
    resumed.trainer.run()
    assert torch.equal(weights(toy_run, resumed), reference(3)[1])


def test_resume_checkpoint_says_fresh_run_or_where_it_resumes(
    toy_run: ModuleType, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    models = tmp_path / "models"
    with pytest.raises(NothingToResumeError, match=r"nothing to resume from: .*models does not exist\. Start a fresh"):
        resume_checkpoint(models, resume=True)
    with caplog.at_level(logging.INFO):
        toy_run.train(tmp_path, max_epochs=1)
        caplog.clear()
        assert resume_checkpoint(models, resume=False) is None
        assert "Starting a fresh run" in caplog.text and "pass --resume true to continue" in caplog.text
        caplog.clear()
        assert resume_checkpoint(models, resume=True) is not None
        assert re.search(r"Resuming from \S+checkpoint_\w+(=1)?\.pt \(epoch 1, iteration 6\)", caplog.text)


def folder_state(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``folder`` with its bytes and modification time (ns)."""
    return {
        str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()
    }


@pytest.mark.parametrize("damage", ["truncated", "deleted"])
def test_resume_without_a_readable_checkpoint_refuses_and_changes_nothing(
    toy_run: ModuleType, tmp_path: Path, damage: str
) -> None:
    """Issue 15 case 3: every checkpoint truncated, or all deleted: refuse, naming what is there; keep model.pt."""
    toy_run.train(tmp_path, max_epochs=2, n_saved=1)
    models = tmp_path / "models"
    checkpoints = sorted(models.glob("checkpoint*.pt"))
    assert [p.name for p in checkpoints] == ["checkpoint_epoch=2.pt", "checkpoint_final.pt"]
    for path in checkpoints:
        if damage == "truncated":
            path.write_bytes(path.read_bytes()[:1000])
        else:
            path.unlink()
    before = folder_state(tmp_path)
    with pytest.raises(NothingToResumeError) as refused:
        toy_run.train(tmp_path, resume=True, max_epochs=3)
    message = str(refused.value)
    if damage == "truncated":
        assert "2 checkpoint files, both unreadable: checkpoint_epoch=2.pt is truncated or damaged" in message
        assert "checkpoint_final.pt is truncated or damaged" in message
    else:
        assert "holds no checkpoint*.pt, only best_networks.pt, model.pt, which a fresh run would overwrite" in message
    assert "every file was left as it was" in message
    assert folder_state(tmp_path) == before


def test_sigkill_at_random_moments_loses_nothing(kill_driver: Callable, toy_run: ModuleType, tmp_path: Path) -> None:
    """12 kills over 3 seeds, most while a checkpoint is written; the runs save every 4 iterations too, so resumes
    continue inside epochs. Every resume must work and the end must equal the uninterrupted run, files included."""
    report = kill_driver(
        {
            "entry": toy_run.__file__,
            "workdir": str(tmp_path),
            "seeds": [0, 1, 2],
            "kills_per_seed": 4,
            "write_fraction": 0.6,
            "kwargs": {"max_epochs": 6, "ballast_mb": 8, "iteration_interval": 4},
            "compare": ["model.pt", "best_networks.pt"],
        }
    )
    summary = {k: v for k, v in report.items() if k != "seeds"}
    assert report["kills"] >= 10 and report["kills_during_write"] >= 3, summary
    assert report["failures"] == [] and report["damaged"] == [] and report["regressions"] == [], summary
    assert report["all_equal"], report
