"""Training checkpoints that survive kills: atomic files, resume from the newest complete one, exact continuation.

:class:`TrainingCheckpoint` replaces the trainer's MONAI ``CheckpointSaver`` + ``CheckpointLoader`` pair. It is built
on Ignite: the periodic files are an Ignite ``Checkpoint`` (keep the newest ``n_saved``, its record included) in
:mod:`~monai_kdml.handlers.periodic`, loading is ``Checkpoint.load_objects``; this module adds what Ignite lacks.
Choosing and checking the file to resume from is in :mod:`~monai_kdml.handlers.resume`; signals, the consistent-state
rule and the RNG states in :mod:`~monai_kdml.handlers.stopping`; atomic writes and the full-disk error in
:mod:`~monai_kdml.handlers.atomic`.
"""

from __future__ import annotations

import contextlib
import logging
import signal
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ignite.distributed as idist
from ignite.engine import Events
from ignite.handlers import Checkpoint

from monai_kdml.handlers.atomic import DiskFullError, atomic_save, previous_state, remove_stale_temporaries, state_tree
from monai_kdml.handlers.periodic import KeepNewestCheckpoint, TrainerAtPoint, plain_objects
from monai_kdml.handlers.resume import CHECKPOINTER_KEY, TRAINER_KEY, check_checkpoint, read_checkpoint
from monai_kdml.handlers.stopping import StopGuard, TrainingInterrupted, restore_rng

if TYPE_CHECKING:
    from ignite.engine import Engine

__all__ = ["DiskFullError", "TrainingCheckpoint", "atomic_save", "remove_stale_temporaries", "state_tree"]

logger = logging.getLogger(__name__)


class _SkipBatches:
    """``data`` whose first iterator skips ``skip`` batches and then restores RNG states (mid-epoch resume)."""

    def __init__(self, data: Iterable | Any, skip: int, rng: Mapping | None) -> None:
        self.data, self.skip, self.rng = data, skip, rng

    def __len__(self) -> int:
        return len(self.data)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator:
        iterator = iter(self.data)
        for _ in range(self.skip):  # the same batches, in the same order, with the same random draws
            next(iterator)
        self.skip = 0
        if self.rng is not None:
            restore_rng(self.rng)
            self.rng = None
        return iterator


class TrainingCheckpoint:
    """Save and resume a whole training run so that a kill, a crash, SIGTERM or Ctrl-C never loses work.

    - **Atomic files** (:func:`atomic_save`): ``<prefix>_epoch=N.pt`` every ``epoch_interval`` epochs (and
      ``<prefix>_iteration=I.pt`` every ``iteration_interval`` iterations, if set), the newest ``n_saved`` kept
      (:class:`~monai_kdml.handlers.periodic.KeepNewestCheckpoint`, an Ignite ``Checkpoint``): older ones are removed
      only once the new one is complete, including those an earlier process of the run left, and only this run's
      own files, whatever a checkpoint's record lists.
      ``final_filename`` when the run completes, is stopped by a signal, or fails.
    - **One file holds everything**: ``save_dict`` (networks, optimizers, schedulers, a
      :class:`~monai_kdml.handlers.ModelSelectionState`), the trainer it is attached to (``"trainer"``: engine state,
      AMP scaler) and its own record (``"checkpointer"``: run id, kept files, RNG states).
    - **Resume** from ``resume_from`` (see :func:`~monai_kdml.handlers.resume_checkpoint`) at ``STARTED``: checked
      against the configuration first, then loaded whole or not at all. A checkpoint of an epoch's end continues
      with the next epoch; one written inside epoch ``e`` continues epoch ``e`` at the next batch (the batches already
      trained are drawn again and skipped, then the RNG states are restored), so with
      :class:`~monai_kdml.handlers.EpochSeedHandler` the resumed run ends with the uninterrupted run's weights.
    - **Stops** (``signals``): the current iteration finishes (or the epoch end, when validation is running), the
      state is saved, a warning says how to resume, and :class:`TrainingInterrupted` (exit status 128 + signal)
      leaves ``run()``. **Crashes**: the last consistent state is saved (the state after the previous iteration when
      the error came before the optimizer steps: data, forward, loss, the non-finite guard), from an exception hook
      that runs ahead of MONAI's ``StatsHandler``, so handler order cannot skip it. See
      :class:`~monai_kdml.handlers.stopping.StopGuard`.

    Epoch-end saving runs after every other ``EPOCH_COMPLETED`` handler (validation, LR schedulers) wherever this
    handler is listed: it registers when the run starts. Only rank 0 writes; every rank loads.

    Args:
        save_dir: folder of the checkpoints.
        save_dict: objects with ``state_dict``/``load_state_dict``, nested in dicts/lists. ``"checkpointer"`` is
            reserved; ``"trainer"`` is added: the engine this handler is attached to.
        resume_from: checkpoint to resume from, or ``None`` for a fresh run.
        n_saved: periodic checkpoints kept (``None``: all).
        epoch_interval: save every N epochs (0: never).
        iteration_interval: also save every N iterations inside epochs (0: never).
        file_prefix: prefix of the file names.
        final_filename: file written on completion, stop or crash; default ``<prefix>_final.pt``.
        signals: signal names that stop the run gracefully (``[]``: leave signals alone).
        map_location: as for ``torch.load`` when resuming.
        resume_hint: how the user resumes; ends the sentence "To continue, ...".
        name: logger name; default: the engine's logger.

    Raises:
        ValueError: an empty ``save_dict``, the reserved key, invalid counts or signal names.
    """

    def __init__(
        self,
        save_dir: str | Path,
        save_dict: Mapping[str, Any],
        resume_from: str | Path | None = None,
        n_saved: int | None = 1,
        epoch_interval: int = 1,
        iteration_interval: int = 0,
        file_prefix: str = "checkpoint",
        final_filename: str | None = None,
        signals: Sequence[str] = ("SIGTERM", "SIGINT"),
        map_location: Any = None,
        resume_hint: str = "run the same command again with `--resume true`",
        name: str | None = None,
    ) -> None:
        if not isinstance(save_dict, Mapping) or not save_dict:
            raise ValueError("`save_dict` must be a non-empty mapping of objects with state_dict().")
        if CHECKPOINTER_KEY in save_dict:
            raise ValueError(f"`save_dict`: the key '{CHECKPOINTER_KEY}' is reserved for the saver's own record.")
        if n_saved is not None and n_saved < 1:
            raise ValueError(f"`n_saved` must be None or >= 1, got {n_saved}.")
        if epoch_interval < 0 or iteration_interval < 0:
            raise ValueError("`epoch_interval` and `iteration_interval` must be >= 0.")
        self.save_dir = Path(save_dir)
        self.save_dict = save_dict
        self.resume_from = None if resume_from is None else Path(resume_from)
        self.n_saved = n_saved
        self.epoch_interval = epoch_interval
        self.iteration_interval = iteration_interval
        self.file_prefix = file_prefix
        self.final_filename = final_filename or f"{file_prefix}_final.pt"
        self.map_location = map_location
        self.resume_hint = resume_hint
        self.logger = logging.getLogger(name) if name else logger
        self._name = name
        self.guard = StopGuard(signals, on_exception=self._crashed)
        self._keeper: KeepNewestCheckpoint | None = None  # Ignite's Checkpoint, built at attach (it needs the engine)
        self.last_path: Path | None = None  # the newest checkpoint of this run on disk ...
        self.last_iteration = -1  # ... and the iteration it holds
        self._engine: Engine | None = None
        self._started_once = False
        self._skip: tuple[int, Any] | None = None
        self._loader: Any = None

    def attach(self, engine: Engine) -> None:
        """Register with ``engine`` (the trainer); the epoch-end hooks are added when the run starts."""
        if self._engine is not None:
            raise RuntimeError("TrainingCheckpoint is already attached; build one per trainer.")
        self._engine = engine
        if self._name is None:
            self.logger = engine.logger
        self._keeper = KeepNewestCheckpoint(
            plain_objects({**self.objects(), TRAINER_KEY: TrainerAtPoint(self.objects()[TRAINER_KEY], self._point)}),
            self.save_dir,
            self._point,
            self.file_prefix,
            self.n_saved,
            self.logger,
        )
        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.COMPLETED, self._completed)
        self.guard.attach(engine)

    def objects(self) -> dict[str, Any]:
        """What is saved and loaded: ``save_dict`` plus the attached trainer under ``"trainer"``."""
        if self._engine is None:
            raise RuntimeError("attach TrainingCheckpoint to the trainer first.")
        return {**self.save_dict, TRAINER_KEY: self.save_dict.get(TRAINER_KEY, self._engine)}

    @property
    def keeper(self) -> KeepNewestCheckpoint:
        """The Ignite ``Checkpoint`` keeping the periodic files and writing every file, with the run's record."""
        if self._keeper is None:
            raise RuntimeError("attach TrainingCheckpoint to the trainer first.")
        return self._keeper

    def _point(self) -> tuple[int, Any]:
        """(iteration, RNG states) of the resumable state in memory."""
        return self.guard.point  # type: ignore[return-value]

    # ------------------------------------------------------------------------------------------------ run start
    def _started(self, engine: Engine) -> None:
        if not self._started_once:
            self._started_once = True
            # added now, so they run after every handler attached before the run (validation, LR schedulers, seeding)
            engine.add_event_handler(Events.EPOCH_STARTED, self._epoch_started)
            engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration_completed)
            engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch_completed)
            if idist.get_rank() == 0:
                for path in remove_stale_temporaries(self.save_dir):
                    self.logger.info("Removed %s, left by a process killed while saving.", path.name)
            if self.resume_from is not None:
                self._resume(engine, self.resume_from)
        self.keeper.start_run()
        self.last_iteration = max(self.last_iteration, engine.state.iteration)
        self.guard.started(engine)

    def _resume(self, engine: Engine, path: Path) -> None:
        checkpoint = read_checkpoint(path, self.map_location)
        trainer_state = checkpoint.get(TRAINER_KEY)
        if not isinstance(trainer_state, Mapping) or "iteration" not in trainer_state:
            raise ValueError(f"{path} is not a training checkpoint: it has no `{TRAINER_KEY}` state.")
        iteration, length = int(trainer_state["iteration"]), trainer_state.get("epoch_length")
        if None not in (length, engine.state.epoch_length) and length != engine.state.epoch_length:
            raise ValueError(
                f"{path} was written with {length} iterations per epoch, the configuration has "
                f"{engine.state.epoch_length} (another dataset, batch size or epoch_length): resuming would misplace "
                "every epoch. Use the checkpoint's configuration, or start a fresh run."
            )
        max_epochs = engine.state.max_epochs
        epoch, done = divmod(iteration, length) if length else (0, 0)
        if max_epochs is not None and epoch > max_epochs:
            raise ValueError(f"{path} holds {epoch} epochs, more than max_epochs={max_epochs}: raise max_epochs.")
        keeper = self.keeper
        to_load = dict(keeper.to_save)
        check_checkpoint(checkpoint, to_load, str(path))  # all or nothing: Ignite would load up to the first misfit
        Checkpoint.load_objects(to_load, checkpoint)
        engine.state.max_epochs = max_epochs  # the configuration's: a finished run can be continued
        record = checkpoint.get(CHECKPOINTER_KEY)
        record = record if isinstance(record, Mapping) else {}  # files of MONAI's CheckpointSaver have none
        keeper.load_state_dict(record)  # (also removes files a killed process left)
        self.last_path, self.last_iteration = path, iteration
        rng = record.get("rng")
        if done:
            self._skip = (done, rng)
        elif rng is not None:
            restore_rng(rng)
        where = f"epoch {epoch + 1} at batch {done + 1} of {length}" if done else f"epoch {epoch + 1}"
        if max_epochs is not None and epoch >= max_epochs:
            where = f"nowhere: it already holds max_epochs={max_epochs}"
        self.logger.info("Resumed from %s (iteration %d): training continues with %s.", path, iteration, where)

    def _epoch_started(self, engine: Engine) -> None:
        if self._skip is not None:  # after the seeding handlers, before ignite builds this epoch's iterator
            done, rng = self._skip
            self._skip, self._loader = None, engine.state.dataloader
            engine.state.dataloader = _SkipBatches(self._loader, done, rng)

    # ------------------------------------------------------------------------------------------------ saving
    def _iteration_completed(self, engine: Engine) -> None:
        self.guard.iteration_completed(engine)
        iteration = engine.state.iteration
        if self.iteration_interval and iteration % self.iteration_interval == 0 and self.guard.consistent:
            self._save_periodic(engine)
        self._maybe_stop(engine)

    def _epoch_completed(self, engine: Engine) -> None:
        if self._loader is not None:
            engine.state.dataloader, self._loader = self._loader, None
        self.guard.epoch_completed(engine)
        if self.epoch_interval and engine.state.epoch % self.epoch_interval == 0:
            self._save_periodic(engine)
        self._maybe_stop(engine)

    def _completed(self, engine: Engine) -> None:
        self.guard.finished()
        if self.guard.consistent and (self._trained() or self._final_owed()):
            path = self._write(engine, self.final_filename, "completed")
            self.logger.info("Training completed: final checkpoint %s (%s).", path, self._where())

    def _trained(self) -> bool:
        return self.guard.point[0] > self.guard.first_iteration  # type: ignore[index]

    def _final_owed(self) -> bool:
        """Whether a resume that had nothing left to train still owes the final file: the process that finished
        training may have been killed while writing it, leaving it missing (or older) beside the last epoch's file."""
        final = self.save_dir / self.final_filename
        return self.resume_from is not None and self.resume_from.resolve() != final.resolve()

    def _save_periodic(self, engine: Engine) -> None:
        """``<prefix>_epoch=N.pt`` / ``<prefix>_iteration=I.pt`` through Ignite, which keeps the newest ``n_saved``."""
        self.keeper.reason = "periodic"
        with self._naming_disk_full():
            self.keeper(engine)
        self.last_path = self.save_dir / str(self.keeper.last_checkpoint)
        self.last_iteration = self.guard.point[0]  # type: ignore[index]

    def _write(self, engine: Engine, filename: str, reason: str) -> Path:
        """Write the file ``filename`` outside the kept list (the final, stop or crash checkpoint)."""
        with self._naming_disk_full():
            self.keeper.saver(self.keeper.payload(reason), filename)
        path = self.save_dir / filename
        self.last_path, self.last_iteration = path, self.guard.point[0]  # type: ignore[index]
        return path

    @contextlib.contextmanager
    def _naming_disk_full(self) -> Iterator[None]:
        """A full disk said with the checkpoint to resume from, not a file of the same name."""
        try:
            yield
        except DiskFullError as error:
            previous = previous_state(self.last_path, "checkpoint")
            at = f", holding {self._where(self.last_iteration)}" if self.last_path is not None else ""
            raise DiskFullError(
                f"disk full (ENOSPC) while writing the checkpoint {error.path}: nothing was written; {previous}{at}. "
                f"Free space on the disk of {self.save_dir}; to continue, {self.resume_hint}.",
                error.path,
            ) from error.__cause__

    def _save_now(self, engine: Engine, reason: str) -> Path | None:
        """The file holding the last consistent state, written unless the newest file already holds it."""
        if not self.guard.consistent:
            return None
        if self.guard.point[0] <= self.last_iteration:  # type: ignore[index]
            return self.last_path  # None when nothing was trained: a fresh start is the same
        return self._write(engine, self.final_filename, reason)

    # ------------------------------------------------------------------------------------------------ stop, crash
    def _maybe_stop(self, engine: Engine) -> None:
        signum = self.guard.stop_requested() if self.guard.consistent else None
        if signum is None:
            return
        path = self._save_now(engine, "interrupted")
        if idist.get_world_size() > 1:
            idist.barrier()  # no rank leaves (and gets the others killed) before rank 0 has written
        self.guard.finished()
        saved = f"checkpoint {path}" if path else "nothing trained yet, so no checkpoint"
        message = (
            f"{signal.Signals(signum).name} received: training stopped at {self._where()}; {saved}. "
            f"To continue, {self.resume_hint}."
        )
        self.logger.warning(message)
        raise TrainingInterrupted(signum, message)

    def _crashed(self, engine: Engine, e: BaseException) -> None:
        if isinstance(e, DiskFullError):  # another write would fail the same way; its message says what is kept
            self.logger.error("Training stopped: %s", e.strerror)
            return
        error = f"{type(e).__name__}: {e}"
        try:
            consistent, path = self.guard.consistent, self._save_now(engine, "exception")
        except Exception as save_error:  # never hide the original error behind a failed save
            self.logger.error(
                "Training failed (%s) and the crash checkpoint could not be written: %s", error, save_error
            )
            return
        if not consistent:
            self.logger.error(
                "Training failed (%s) during the optimizer steps or the epoch-end handlers, where the state in memory "
                "is not resumable: nothing new was saved. Resume point: %s.",
                error,
                self.last_path or "none (a fresh start)",
            )
        elif path is None:
            self.logger.error("Training failed (%s) before any iteration completed: nothing to save.", error)
        else:
            self.logger.error(
                "Training failed (%s). The state at %s is in %s. Fix the cause; to continue, %s.",
                error,
                self._where(),
                path,
                self.resume_hint,
            )

    def _where(self, iteration: int | None = None) -> str:
        state = self._engine.state  # type: ignore[union-attr]
        if iteration is None:
            iteration = self.guard.point[0] if self.guard.point is not None else state.iteration
        length = state.epoch_length
        if not length:
            return f"iteration {iteration}"
        epoch, done = divmod(iteration, length)
        if done:
            return f"epoch {epoch + 1}, after iteration {done} of {length} (iteration {iteration})"
        return f"the end of epoch {epoch} (iteration {iteration})"
