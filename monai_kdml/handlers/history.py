"""One CSV row per validation, so every epoch's metrics stay readable without TensorBoard (read back and analysed by
:mod:`monai_kdml.metrics.history_analysis`)."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import TYPE_CHECKING

import ignite.distributed as idist
from ignite.engine import Events
from monai.utils import is_scalar

from monai_kdml.data.csv_cells import escape_rows

if TYPE_CHECKING:
    from ignite.engine import Engine

__all__ = ["MetricsHistoryWriter"]


class MetricsHistoryWriter:
    """Append ``epoch`` and every scalar of ``engine.state.metrics`` to a CSV at each ``EPOCH_COMPLETED``.

    MONAI's ``MetricsSaver`` rewrites ``metrics.csv`` with the latest values; this keeps the history (one row per
    validation, the evaluator's epoch being the trainer's). Only rank 0 writes. New metric names extend the header.
    Rows of this epoch and later ones are replaced, so a resumed run that redoes an epoch leaves one row per epoch;
    the file is replaced atomically, so a kill never leaves half of it.

    Args:
        path: the CSV file; its folder is created.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if idist.get_rank() != 0:
            return
        row: dict[str, float] = {"epoch": engine.state.epoch}
        row.update({k: float(v) for k, v in engine.state.metrics.items() if is_scalar(v)})
        rows = []
        if self.path.is_file():
            with self.path.open(newline="") as f:
                rows = [r for r in csv.DictReader(f) if _epoch(r) < engine.state.epoch]
        rows.append({k: str(v) for k, v in row.items()})
        header = list(dict.fromkeys(k for r in rows for k in r))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        with tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=header)
            writer.writeheader()
            writer.writerows(escape_rows(rows))
        os.replace(tmp, self.path)


def _epoch(row: dict[str, str]) -> float:
    try:
        return float(row.get("epoch") or "inf")
    except ValueError:
        return float("inf")
