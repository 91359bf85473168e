"""Progress with an ETA for long loops: a tqdm bar on a terminal, a log line every ``interval`` seconds otherwise.

A log file must not fill with carriage-return redraws, and a terminal user should not wait a minute without a word,
so :class:`Progress` picks the form from where the output goes (:func:`on_terminal`).

Example::

    with Progress(len(items), "demo tiles", logger=logger) as progress:
        for item in items:
            render(item)
            progress.update()
"""

from __future__ import annotations

import logging
import sys
import time
from types import TracebackType
from typing import Any

__all__ = ["Progress", "format_duration", "on_terminal"]

_LOGGER = logging.getLogger("monai_kdml.progress")  # the logger name users filter on; kept across the module rename


def on_terminal() -> bool:
    """Whether standard error is an interactive terminal (where a progress bar can redraw itself)."""
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


def format_duration(seconds: float) -> str:
    """``"42 s"``, ``"3 min 05 s"``, ``"2 h 07 min"``: short, for log lines and summaries."""
    seconds = max(0.0, float(seconds))
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


class Progress:
    """Count finished steps of a loop of ``total`` steps and report the rate and the time left.

    Args:
        total: number of steps.
        desc: what is counted, e.g. ``"train 3/14"`` or ``"MSI demo tiles"``.
        unit: one step, singular, for the rate (``"it"``, ``"tile"``, ``"batch"``).
        logger: where the periodic lines go (default ``monai_kdml.progress``).
        interval: seconds between log lines when not on a terminal.
        bar: a tqdm bar (default: when on a terminal); ``False`` logs lines instead.
        report_first: log the first step (the user learns early how long one step takes); otherwise the first
            line comes after ``interval`` seconds, so short loops stay silent.
        extra_eta: seconds known to follow this loop (e.g. the epochs after this one), added to the run ETA.
    """

    def __init__(
        self,
        total: int,
        desc: str,
        unit: str = "it",
        logger: logging.Logger | None = None,
        interval: float = 30.0,
        bar: bool | None = None,
        extra_eta: float | None = None,
        report_first: bool = True,
    ) -> None:
        self.total, self.desc, self.unit = int(total), desc, unit
        self.logger = logger or _LOGGER
        self.interval = interval
        self.extra_eta = extra_eta
        self.report_first = report_first
        self.done = 0
        self.start = time.perf_counter()
        self._last_log = self.start
        self._bar: Any = None
        if on_terminal() if bar is None else bar:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self.total, desc=desc, unit=unit, leave=False, dynamic_ncols=True)

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def eta(self) -> float | None:
        """Seconds left in this loop at the mean rate so far (``None`` before the first step)."""
        if self.done == 0:
            return None
        return self.elapsed / self.done * max(0, self.total - self.done)

    def update(self, steps: int = 1, **postfix: float) -> None:
        """Record ``steps`` finished steps; ``postfix`` values (e.g. ``loss=0.7``) go into the bar or the line."""
        self.done += steps
        if self._bar is not None:
            if postfix:
                self._bar.set_postfix({k: f"{v:.4g}" for k, v in postfix.items()}, refresh=False)
            self._bar.update(steps)
            return
        now = time.perf_counter()
        if (self.report_first and self.done == steps) or now - self._last_log >= self.interval:
            self._last_log = now
            self.logger.info(self.line(**postfix))

    def line(self, **postfix: float) -> str:
        """``"<desc>: 120/576 (21 %), 0.45 s/it, ETA 3 min 25 s"`` (+ run ETA and ``postfix``)."""
        rate = self.elapsed / max(self.done, 1)
        speed = f"{rate:.2f} s/{self.unit}" if rate >= 0.1 else f"{1 / max(rate, 1e-9):.1f} {self.unit}/s"
        percent = 100 * self.done / max(self.total, 1)
        parts = [f"{self.desc}: {self.done}/{self.total} ({percent:.0f} %)", speed]
        eta = self.eta()
        if eta is not None and self.done < self.total:
            parts.append(f"ETA {format_duration(eta)}")
        if eta is not None and self.extra_eta is not None:
            parts.append(f"run ETA {format_duration(eta + self.extra_eta)}")
        parts += [f"{k} {v:.4f}" for k, v in postfix.items()]
        return ", ".join(parts)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
