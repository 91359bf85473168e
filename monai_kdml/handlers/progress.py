"""Progress of training, validation, evaluation and inference with an ETA, and ignite's run messages made true.

ignite logs "Engine run resuming from iteration 0, epoch 0 until 14 epochs" at every start of a MONAI workflow
(MONAI builds the engine state before ``run()``, which ignite reads as a resume), and every validation inside a
training adds four routine lines. :class:`EngineLogFilter` rewrites the first as ignite's own fresh-run message and,
for validations whose results :class:`~monai_kdml.handlers.EpochSummary` reports, drops the routine lines.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import ignite.distributed as idist
from ignite.engine import Events

from monai_kdml.loop_progress import Progress

if TYPE_CHECKING:
    from ignite.engine import Engine

__all__ = ["EngineLogFilter", "ProgressHandler"]

_RESUMING_AT_ZERO = re.compile(r"^Engine run resuming from iteration 0, epoch \d+ until (\d+) (epochs|iterations)$")
_ROUTINE = re.compile(r"^(Engine run (starting|resuming|finished)|Epoch\[\d+\] Complete|Got new best metric)")


class EngineLogFilter(logging.Filter):
    """A filter for an engine's logger (``engine.logger.addFilter(EngineLogFilter())``).

    - "Engine run resuming from iteration 0, ..." becomes "Engine run starting with max_epochs=N." (what ignite
      writes for a fresh run): nothing has been trained at that point. A checkpoint handler that resumes at
      ``STARTED`` says so itself, afterwards.
    - ``quiet=True`` (validation inside a training) drops ignite's start, finish and epoch-time lines and MONAI's
      "Got new best metric" line of that engine: the epoch summary reports the validation instead.
    """

    def __init__(self, quiet: bool = False) -> None:
        super().__init__()
        self.quiet = quiet

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if self.quiet and _ROUTINE.match(message):
            return False
        match = _RESUMING_AT_ZERO.match(message)
        if match:
            record.msg, record.args = f"Engine run starting with max_{match[2]}={match[1]}.", None
        return True


def add_log_filter(engine: Engine, quiet: bool = False) -> None:
    """Add one :class:`EngineLogFilter` to ``engine.logger`` (a quiet one replaces a plain one, never the reverse)."""
    filters = [f for f in engine.logger.filters if isinstance(f, EngineLogFilter)]
    if not filters:
        engine.logger.addFilter(EngineLogFilter(quiet))
    elif quiet:
        filters[0].quiet = True


class ProgressHandler:
    """An engine's progress per epoch: a tqdm bar on a terminal, a log line every ``interval`` seconds otherwise.

    Each line gives the iteration, the time per iteration, the ETA of the epoch and (``run_eta``, for a trainer) of
    the whole run, measured from the epochs done so far (validation included), and the values of
    ``output_transform`` (e.g. :func:`~monai_kdml.handlers.total_loss`). The first iteration of each epoch is always
    reported unless ``report_first`` is false (validation inside training: silent unless it takes ``interval``).
    Only rank 0 reports. Attaching adds an :class:`EngineLogFilter` to the engine's logger.

    Args:
        desc: label of the progress, ``{epoch}`` and ``{max_epochs}`` filled in: ``"train {epoch}/{max_epochs}"``.
        unit: name of one iteration in the lines.
        interval: seconds between log lines when not on a terminal.
        output_transform: ``engine.state.output -> float or {name: float}``, shown with each update.
        run_eta: add the ETA of the remaining epochs.
        bar: force (``True``) or refuse (``False``) the tqdm bar; default: on a terminal.
        report_first: log the first iteration of each epoch.
        name: logger name; default: the engine's logger.
    """

    def __init__(
        self,
        desc: str = "train {epoch}/{max_epochs}",
        unit: str = "it",
        interval: float = 30.0,
        output_transform: Callable[[Any], Any] | None = None,
        run_eta: bool = False,
        bar: bool | None = None,
        report_first: bool = True,
        name: str | None = None,
    ) -> None:
        self.desc, self.unit, self.interval, self.report_first = desc, unit, interval, report_first
        self.output_transform, self.run_eta, self.bar = output_transform, run_eta, bar
        self.logger = logging.getLogger(name) if name else None
        self.progress: Progress | None = None
        self._run_start = 0.0
        self._epochs_done = 0
        self._engine: Engine | None = None

    def attach(self, engine: Engine) -> None:
        add_log_filter(engine)
        if idist.get_rank() != 0:
            return
        self._engine = engine
        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.EPOCH_STARTED, self._epoch_started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration_completed)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch_completed)
        engine.add_event_handler(Events.COMPLETED, self._close)

    def _started(self, engine: Engine) -> None:
        self._run_start, self._epochs_done = time.perf_counter(), 0

    def _epoch_started(self, engine: Engine) -> None:
        self._close(engine)
        state = engine.state
        total = state.epoch_length or 0
        desc = self.desc.format(epoch=state.epoch, max_epochs=state.max_epochs)
        logger = self.logger or engine.logger
        self.progress = Progress(
            total, desc, self.unit, logger, self.interval, self.bar, report_first=self.report_first
        )

    def _remaining_epochs_s(self, engine: Engine) -> float | None:
        """Seconds for the epochs after the current one: their mean so far, or this epoch's projection."""
        if not self.run_eta or self.progress is None or engine.state.max_epochs is None:
            return None
        later = engine.state.max_epochs - engine.state.epoch
        if self._epochs_done:
            return later * (time.perf_counter() - self._run_start - self.progress.elapsed) / self._epochs_done
        eta = self.progress.eta()
        return None if eta is None else later * (self.progress.elapsed + eta)

    def _iteration_completed(self, engine: Engine) -> None:
        if self.progress is None:
            return
        values = {} if self.output_transform is None else self.output_transform(engine.state.output)
        values = values if isinstance(values, dict) else {"loss": float(values)}
        self.progress.extra_eta = self._remaining_epochs_s(engine)
        self.progress.update(**values)
        if self.progress.done >= self.progress.total:
            self.progress.close()  # the bar leaves before validation and the epoch summary write their lines

    def _epoch_completed(self, engine: Engine) -> None:
        self._epochs_done += 1
        self._close(engine)

    def _close(self, engine: Engine) -> None:
        if self.progress is not None:
            self.progress.close()
            self.progress = None
