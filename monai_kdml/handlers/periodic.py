"""The periodic checkpoint files of a run on Ignite's ``Checkpoint``: keep the newest ``n_saved`` with its own record
(``include_self``), write through a save handler that fsyncs and removes an old file only once the new one is
complete, and delete nothing but this run's own files, whatever a checkpoint's record lists."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ignite.distributed as idist
from ignite.engine import Events
from ignite.handlers.checkpoint import BaseSaveHandler, Checkpoint
from torch import nn

from monai_kdml.handlers.atomic import atomic_save
from monai_kdml.networks.ensemble import unwrap_module

if TYPE_CHECKING:
    from ignite.engine import Engine

__all__ = ["FORMAT_VERSION", "FsyncDiskSaver", "KeepNewestCheckpoint", "plain_objects"]

FORMAT_VERSION = 2
"""1: the record listed its files under ``saved``; 2: Ignite's ``_saved``, plus ``pending`` removals."""


def plain_objects(objects: Any) -> Any:
    """``objects`` with every network unwrapped (DDP, ``torch.compile``) and tuples as lists, so that Ignite's state
    walk saves plain weight names and its loading walk (dicts and lists only) reaches every object."""
    if isinstance(objects, Mapping):
        return {key: plain_objects(value) for key, value in objects.items()}
    if isinstance(objects, (list, tuple)):
        return [plain_objects(value) for value in objects]
    return unwrap_module(objects) if isinstance(objects, nn.Module) else objects


class FsyncDiskSaver(BaseSaveHandler):
    """Ignite save handler writing with :func:`~monai_kdml.handlers.atomic.atomic_save` (temporary file, fsync,
    rename; rank 0 only).

    Ignite's ``Checkpoint`` asks to remove the oldest file *before* it writes the new one; a kill in between would
    leave nothing to resume from. Removals therefore wait in :attr:`pending` until the next write is complete, and
    only names that ``is_own`` accepts are ever deleted.

    Args:
        dirname: the folder.
        is_own: whether a file name is one this run writes (and so may delete).
    """

    def __init__(self, dirname: str | Path, is_own: Callable[[str], bool]) -> None:
        self.dirname = Path(dirname)
        self.is_own = is_own
        self.pending: list[str] = []

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        if idist.get_rank() == 0:
            atomic_save(checkpoint, self.dirname / filename)
        self.flush(keep=filename)

    def remove(self, filename: str) -> None:
        if filename not in self.pending:
            self.pending.append(filename)

    def flush(self, keep: str | None = None) -> None:
        """Delete the pending files (except ``keep``, just written), if this run wrote them."""
        for name in self.pending:
            if name != keep and idist.get_rank() == 0 and self.is_own(name):
                with contextlib.suppress(FileNotFoundError):
                    (self.dirname / name).unlink()
        self.pending = []


class KeepNewestCheckpoint(Checkpoint):
    """Ignite's ``Checkpoint`` keeping the newest ``n_saved`` files ``<prefix>_epoch=N.pt`` (at ``EPOCH_COMPLETED``)
    and ``<prefix>_iteration=I.pt`` (at ``ITERATION_COMPLETED``), ordered by the iteration whose state they hold.

    Its record (``include_self``, under ``"checkpointer"``) holds Ignite's ``_saved`` list and the run's own facts:
    ``run_id``, ``run_started`` (tells runs in a shared folder apart), why the file was written, the RNG states at
    that point and the removals still ``pending``. A record read back is input like any other: only names of this
    saver's own pattern are taken (:meth:`is_own`), others are dropped with a warning.

    Args:
        to_save: the objects (see :func:`plain_objects`), nested in dicts/lists.
        save_dir: the folder.
        point: ``() -> (iteration, RNG states)`` of the state in memory (:class:`~monai_kdml.handlers.StopGuard`).
        file_prefix: prefix of the file names.
        n_saved: files kept (``None``: all).
        logger: where dropped record entries are reported.
    """

    def __init__(
        self,
        to_save: dict[str, Any],
        save_dir: str | Path,
        point: Callable[[], tuple[int, Any]],
        file_prefix: str = "checkpoint",
        n_saved: int | None = 1,
        logger: logging.Logger | None = None,
    ) -> None:
        self.saver = FsyncDiskSaver(save_dir, self.is_own)
        super().__init__(
            to_save,
            self.saver,
            filename_prefix=file_prefix,
            score_function=lambda _engine: point()[0],  # the priority: files ordered by the iteration they hold
            n_saved=n_saved,
            global_step_transform=self._step,
            filename_pattern="{filename_prefix}_{global_step}.{ext}",
            include_self=True,
        )
        self.save_dir, self.point, self.logger = Path(save_dir), point, logger or logging.getLogger(__name__)
        self.run_id, self.run_started, self.reason = "", 0.0, "periodic"

    @staticmethod
    def _step(engine: Engine, event: Any) -> str:
        # the name part: ``epoch=N`` at an epoch's end, ``iteration=I`` inside one (the file names of release 1)
        return (
            f"epoch={engine.state.epoch}" if event == Events.EPOCH_COMPLETED else f"iteration={engine.state.iteration}"
        )

    def start_run(self) -> None:
        """A fresh run: a new run id and start time (a resume takes them from the record instead)."""
        if not self.run_id:
            self.run_id, self.run_started = uuid.uuid4().hex, time.time()

    def is_own(self, name: str) -> bool:
        """Whether ``name`` is a periodic file this saver writes: a plain name of its pattern, inside ``save_dir``."""
        pattern = rf"{re.escape(self.filename_prefix)}_(epoch|iteration)=\d+\.{self.ext}"
        if not re.fullmatch(pattern, name) or Path(name).name != name:
            return False
        folder = os.path.normpath(os.path.abspath(self.save_dir))
        return os.path.dirname(os.path.normpath(os.path.join(folder, name))) == folder

    def payload(self, reason: str) -> dict[str, Any]:
        """What a file holds: the objects' states and this record (for the final file, outside the kept list)."""
        self.reason = reason
        return {**self._setup_checkpoint(), "checkpointer": self.state_dict()}

    def state_dict(self) -> dict[str, Any]:  # type: ignore[override]
        return {
            **super().state_dict(),
            "version": FORMAT_VERSION,
            "run_id": self.run_id,
            "run_started": self.run_started,
            "reason": self.reason,
            "rng": self.point()[1],
            "pending": list(self.saver.pending),  # a process killed before removing them: the next one does
        }

    def load_state_dict(self, state_dict: Mapping) -> None:
        """Take the kept files (Ignite's ``_saved``; ``saved`` in records of release 1), the pending removals and
        the run's id and start; then remove what exceeds ``n_saved``. Only this saver's own files are taken."""
        entries = state_dict.get("_saved", state_dict.get("saved", []))
        self._saved = [Checkpoint.Item(i, n) for i, n in self._own_entries(entries, state_dict)]
        pending = state_dict.get("pending", [])
        self.saver.pending = [n for _, n in self._own_entries([[0, n] for n in pending], state_dict)]
        self.run_id = str(state_dict.get("run_id") or uuid.uuid4().hex)
        self.run_started = float(state_dict.get("run_started") or time.time())
        self._saved.sort(key=lambda item: item.priority)
        while self.n_saved is not None and len(self._saved) > self.n_saved:
            self.saver.remove(self._saved.pop(0).filename)
        self.saver.flush()

    def _own_entries(self, entries: Any, source: Mapping) -> list[tuple[int, str]]:
        kept: list[tuple[int, str]] = []
        for entry in entries if isinstance(entries, (list, tuple)) else [entries]:
            try:
                iteration, name = int(entry[0]), entry[1]
            except (TypeError, ValueError, IndexError, KeyError):
                iteration, name = -1, None
            if isinstance(name, str) and self.is_own(name):
                kept.append((iteration, name))
            else:
                self.logger.warning(
                    "Ignoring %r in the record of the checkpoint resumed from (run %s): not a checkpoint file of this "
                    "run in %s (named %s_epoch=N.pt or %s_iteration=N.pt); it will not be deleted.",
                    entry,
                    source.get("run_id", "?"),
                    self.save_dir,
                    self.filename_prefix,
                    self.filename_prefix,
                )
        return kept


class TrainerAtPoint:
    """The trainer's engine state as of the iteration whose weights memory holds (:attr:`StopGuard.point`): a crash
    in the middle of iteration ``i`` saves the state after ``i - 1``."""

    def __init__(self, engine: Any, point: Callable[[], tuple[int, Any]]) -> None:
        self.engine, self.point = engine, point

    def state_dict(self) -> dict[str, Any]:
        return {**self.engine.state_dict(), "iteration": self.point()[0]}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        self.engine.load_state_dict(state_dict)
