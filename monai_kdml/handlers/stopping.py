"""Stopping a training run at a resumable point: stop signals, the last consistent state, exception-hook order, RNG.

Used by :class:`~monai_kdml.handlers.TrainingCheckpoint`; usable by any handler that must act on a stop or a crash.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import signal
import threading
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import ignite.distributed as idist
import numpy as np
import torch
from ignite.engine import Events
from monai.engines.utils import IterationEvents

if TYPE_CHECKING:
    from ignite.engine import Engine

__all__ = ["StopGuard", "TrainingInterrupted", "capture_rng", "restore_rng", "run_first_on_exception"]

logger = logging.getLogger(__name__)


class TrainingInterrupted(SystemExit):
    """Raised out of ``trainer.run()`` once a stop signal has been handled and the checkpoint written.

    A ``SystemExit`` with status ``128 + signal`` (143 for SIGTERM, 130 for SIGINT), the shell's convention for a
    process ended by a signal: uncaught it ends the process quietly, and ``except Exception`` blocks (code that goes
    on to evaluate or export) do not swallow it.
    """

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(128 + signum)
        self.signum = signum
        self.message = message

    def __str__(self) -> str:
        return self.message


def capture_rng() -> dict[str, Any]:
    """The global RNG states (Python, NumPy, torch, the current CUDA device if initialised), in types that
    ``weights_only`` loading accepts."""
    name, keys, pos, has_gauss, cached = np.random.get_state()  # type: ignore[misc]
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": [name, torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()  # this process's device only: others may be other ranks'
    return state


def restore_rng(state: Mapping[str, Any]) -> None:
    """Set the global RNG states captured by :func:`capture_rng`."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.cpu().numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"].cpu())


def run_first_on_exception(engine: Engine, handler: Callable) -> None:
    """Register ``handler`` for ``EXCEPTION_RAISED`` ahead of every handler already registered.

    Ignite calls ``EXCEPTION_RAISED`` handlers in registration order, and MONAI's ``StatsHandler`` (like its
    ``CheckpointSaver``) re-raises, which ends the chain: a crash hook registered after it never runs. Ignite has no
    public way to prepend a handler, so this moves the entry that ``add_event_handler`` appended to the front of
    ignite's handler list (``Engine._event_handlers``, unchanged since ignite 0.4). This is the one place in
    monai-kdml that touches an ignite private; if it ever changes, the handler stays appended and a warning says so.
    """
    engine.add_event_handler(Events.EXCEPTION_RAISED, handler)
    entries = getattr(engine, "_event_handlers", {}).get(Events.EXCEPTION_RAISED)
    if isinstance(entries, list) and entries and entries[-1][0] == handler:
        entries.insert(0, entries.pop())
    else:
        warnings.warn(
            "could not register the crash-checkpoint hook ahead of other EXCEPTION_RAISED handlers (ignite changed "
            "its handler list); attach TrainingCheckpoint before StatsHandler.",
            stacklevel=2,
        )


class StopGuard:
    """Knows when the trainer's memory is a resumable state, and turns stop signals and crashes into calls there.

    The state is *consistent* after an iteration's ``ITERATION_COMPLETED`` handlers inside an epoch, after all
    ``EPOCH_COMPLETED`` handlers, and from ``ITERATION_STARTED`` until the optimizer steps begin (MONAI's
    ``BACKWARD_COMPLETED``; on other engines, until ``ITERATION_STARTED``): the weights then are those after
    :attr:`point`'s iteration. During the steps, and between the last iteration of an epoch and the end of its
    ``EPOCH_COMPLETED`` handlers (validation, schedulers), it is not.

    A stop signal only sets a flag (handlers must call :meth:`stop_requested` at their safe points); a second one
    restores the previous handlers and re-sends itself, which stops at once. Exceptions call ``on_exception`` before
    any other ``EXCEPTION_RAISED`` handler and are re-raised after all of them, so none is swallowed.

    Args:
        signals: signal names, e.g. ``("SIGTERM", "SIGINT")``.
        on_exception: ``(engine, exception)``, called once per exception while the run is started.
    """

    def __init__(self, signals: Sequence[str], on_exception: Callable[[Engine, BaseException], None]) -> None:
        unknown = [s for s in signals if not isinstance(getattr(signal, s, None), signal.Signals)]
        if unknown:
            raise ValueError(f"`signals`: unknown signal name(s) {unknown}, e.g. 'SIGTERM', 'SIGINT', 'SIGUSR1'.")
        self.signals = [getattr(signal, s) for s in signals]
        self.on_exception = on_exception
        self.point: tuple[int, dict | None] | None = None  # (iteration, RNG states) of the consistent state
        self.first_iteration = 0  # the iteration count when the run started (after any resume)
        self.requested: int | None = None
        self._previous: dict[int, Any] = {}
        self._running = False
        self._handled: BaseException | None = None

    @property
    def consistent(self) -> bool:
        """Whether memory holds a resumable state (:attr:`point`)."""
        return self.point is not None

    def attach(self, engine: Engine) -> None:
        run_first_on_exception(engine, self._exception)
        engine.add_event_handler(Events.EXCEPTION_RAISED, self._reraise)
        if engine.has_registered_events(IterationEvents.BACKWARD_COMPLETED):
            engine.add_event_handler(IterationEvents.BACKWARD_COMPLETED, self._stepping)
        else:
            engine.add_event_handler(Events.ITERATION_STARTED, self._stepping)
        engine.add_event_handler(Events.TERMINATE, self.finished)

    def started(self, engine: Engine) -> None:
        """Call at ``STARTED`` (after any resume): consistent at the current iteration; signals installed."""
        if engine.has_event_handler(self._reraise, Events.EXCEPTION_RAISED):  # keep it last (public API only)
            engine.remove_event_handler(self._reraise, Events.EXCEPTION_RAISED)
        engine.add_event_handler(Events.EXCEPTION_RAISED, self._reraise)
        self.first_iteration = engine.state.iteration
        self.point = (engine.state.iteration, capture_rng())
        self.requested, self._running, self._handled = None, True, None
        self._install()

    def iteration_completed(self, engine: Engine) -> None:
        """Call last at ``ITERATION_COMPLETED``."""
        length, iteration = engine.state.epoch_length, engine.state.iteration
        inside = length is not None and iteration % length != 0
        self.point = (iteration, capture_rng()) if inside else None  # at an epoch's end: once its handlers ran

    def epoch_completed(self, engine: Engine) -> None:
        """Call last at ``EPOCH_COMPLETED``."""
        self.point = (engine.state.iteration, capture_rng())

    def stop_requested(self) -> int | None:
        """The stop signal received (by any rank: all ranks call this at the same points), or ``None``."""
        signum = self.requested or 0
        if self.signals and idist.get_world_size() > 1:
            signum = int(idist.all_reduce(torch.tensor(signum), op="MAX"))
        return signum or None

    def finished(self, *_: Any) -> None:
        """Call when the run ends: the previous signal handlers come back."""
        self._running = False
        for signum, previous in self._previous.items():
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()

    def _install(self) -> None:
        if not self.signals or threading.current_thread() is not threading.main_thread():
            return
        for signum in self.signals:
            if signum not in self._previous:
                self._previous[signum] = signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, _frame: Any) -> None:
        if self.requested is not None:  # the second one: previous behaviour, at once
            self.finished()
            signal.raise_signal(signum)
            return
        self.requested = signum
        with contextlib.suppress(OSError):  # no logging here: a signal may interrupt a write to the same stream
            os.write(2, f"{signal.Signals(signum).name} received: stopping after the current iteration, with a "
                        "checkpoint; send it again to stop at once.\n".encode())  # fmt: skip

    def _stepping(self, *_: Any) -> None:
        self.point = None

    def _exception(self, engine: Engine, e: BaseException) -> None:
        if isinstance(e, TrainingInterrupted):
            raise e  # our own clean stop: already saved and logged, the other hooks would report a crash
        if e is self._handled or not self._running:
            return  # ignite fires EXCEPTION_RAISED twice for errors inside an epoch; none before STARTED ends
        self._handled = e
        self.finished()
        self.on_exception(engine, e)

    @staticmethod
    def _reraise(_engine: Engine, e: BaseException) -> None:
        raise e
