"""What a run tells its user: one compact table per epoch, and at the end where the outputs are and what to run next."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ignite.distributed as idist
from ignite.engine import Events
from monai.utils import is_scalar

from monai_kdml.handlers.outputs import loss_terms, split_loss_key, split_metric_key
from monai_kdml.handlers.progress import add_log_filter
from monai_kdml.loop_progress import format_duration

if TYPE_CHECKING:
    from ignite.engine import Engine

__all__ = ["EpochSummary", "RunSummary"]


def _cell(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _table(rows: dict[str, dict[str, float]], columns: list[str], digits: int) -> list[list[str]]:
    return [[name, *(_cell(values.get(c), digits) for c in columns)] for name, values in rows.items()]


def _aligned(header: list[str], body: list[list[str]], sep: int | None = None) -> list[str]:
    """Rows of cells as text lines, the first column left-aligned, the others right-aligned; ``sep`` is the index of
    the first column after a ``|`` separator."""
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    lines = []
    for row in [header, *body]:
        cells = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)]
        if sep is not None:
            cells.insert(sep, "|")
        lines.append("  " + "  ".join(cells))
    return lines


class EpochSummary:
    """Log one block per training epoch: each network's mean loss terms and, when it validated, its metrics.

    ::

        Epoch 3/14 in 41 s (ETA 7 min 20 s); ensemble_auc 0.812 (new best)
          network      loss      ce      kd      ml  |    auc    acc  ...
          teacher    0.7421  0.7421       -       -  |  0.801  0.740  ...
          student_0  1.3603  0.5871  0.7293  0.0439  |  0.790  0.720  ...
          ensemble        -       -       -       -  |  0.812  0.750  ...
          disagreement 0.0086

    Attach to the trainer after the ``ValidationHandler`` (handlers run in order), with that ``evaluator``; its
    routine log lines are then dropped (:class:`~monai_kdml.handlers.EngineLogFilter`). Only rank 0 logs.

    Args:
        evaluator: the validation engine, or ``None`` (losses only).
        network_names: row order, e.g. ``network_names(K)``; default: the order names appear in.
        name: logger name; default: the trainer's logger.
    """

    def __init__(
        self, evaluator: Engine | None = None, network_names: Sequence[str] = (), name: str | None = None
    ) -> None:
        self.evaluator, self.networks = evaluator, list(network_names)
        self.logger = logging.getLogger(name) if name else None
        self._sums: dict[str, float] = {}
        self._count = 0
        self._epoch_start = self._run_start = 0.0
        self._epochs = 0

    def attach(self, engine: Engine) -> None:
        if self.evaluator is not None:
            add_log_filter(self.evaluator, quiet=True)
        if idist.get_rank() != 0:
            return
        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.EPOCH_STARTED, self._epoch_started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration_completed)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def _started(self, engine: Engine) -> None:
        self._run_start, self._epochs = time.perf_counter(), 0

    def _epoch_started(self, engine: Engine) -> None:
        self._sums, self._count, self._epoch_start = {}, 0, time.perf_counter()

    def _iteration_completed(self, engine: Engine) -> None:
        for key, value in loss_terms(engine.state.output).items():
            self._sums[key] = self._sums.get(key, 0.0) + value
        self._count += 1

    def losses(self) -> dict[str, dict[str, float]]:
        """Mean of every loss term of this epoch so far, as ``{network: {term: mean}}``."""
        rows: dict[str, dict[str, float]] = {}
        for key, total in self._sums.items():
            split = split_loss_key(key)
            if split is not None:
                rows.setdefault(split[1], {})[split[0]] = total / max(self._count, 1)
        return rows

    def __call__(self, engine: Engine) -> None:
        self._epochs += 1
        now = time.perf_counter()
        state = engine.state
        header = f"Epoch {state.epoch}/{state.max_epochs} in {format_duration(now - self._epoch_start)}"
        if state.max_epochs and state.epoch < state.max_epochs:
            left = (now - self._run_start) / self._epochs * (state.max_epochs - state.epoch)
            header += f" (ETA {format_duration(left)})"
        losses = self.losses()
        metrics = self._validation(state.epoch)
        if metrics is not None:
            header += "; " + self._key_metric()
        networks = list(dict.fromkeys([*self.networks, *losses, *self._metric_networks(metrics)]))
        terms = list(dict.fromkeys(t for row in losses.values() for t in sorted(row, key=lambda t: t != "loss")))
        lines = [header]
        if metrics:
            metric_rows = {n: {m: v for (net, m), v in metrics.items() if net == n} for n in networks}
            columns = list(dict.fromkeys(m for (net, m) in metrics if net is not None))
            body = [
                [n, *(_cell(losses.get(n, {}).get(t), 4) for t in terms)]
                + [_cell(metric_rows[n].get(c), 3) for c in columns]
                for n in networks
            ]
            lines += _aligned(["network", *terms, *columns], body, sep=1 + len(terms) if terms else None)
            loose = {m: v for (net, m), v in metrics.items() if net is None}
            if loose:
                lines.append("  " + "  ".join(f"{k} {v:.4f}" for k, v in loose.items()))
        elif losses:
            lines += _aligned(["network", *terms], _table({n: losses.get(n, {}) for n in networks}, terms, 4))
        (self.logger or engine.logger).info("\n".join(lines))

    def _validation(self, epoch: int) -> dict[tuple[str | None, str], float] | None:
        """The evaluator's metrics if it validated this epoch (MONAI's ValidationHandler sets its epoch to ours)."""
        if self.evaluator is None or self.evaluator.state.epoch != epoch:
            return None
        return {
            split_metric_key(k, self.networks): float(v)
            for k, v in self.evaluator.state.metrics.items()
            if is_scalar(v)
        }

    @staticmethod
    def _metric_networks(metrics: dict[tuple[str | None, str], float] | None) -> list[str]:
        return [n for (n, _) in metrics or {} if n is not None]

    def _key_metric(self) -> str:
        state: Any = self.evaluator.state  # type: ignore[union-attr]
        name = getattr(state, "key_metric_name", None)
        if name is None or name not in state.metrics:
            return "validated"
        value = f"{name} {float(state.metrics[name]):.3f}"
        if state.best_metric_epoch == state.epoch:
            return f"{value} (new best)"
        return f"{value}, best {state.best_metric:.3f} at epoch {state.best_metric_epoch}"


class RunSummary:
    """At the end of a run (rank 0): how long it took, the best key metric, the outputs that exist, what to run next.

    ::

        Training finished in 7 min 02 s; best ensemble_auc 0.791 at epoch 12.
        Outputs:
          deployed model (student ensemble)  ./models/model.pt
          TensorBoard logs                   ./eval
        Next:
          evaluate on the test split         python -m monai.bundle run --config_file "[...]"
          TensorBoard                        tensorboard --logdir ./eval

    It registers for ``COMPLETED`` when the run starts, so it comes after every handler attached before the run
    (a final checkpoint, report writers) wherever it is listed.

    Args:
        outputs: label -> file or folder; only those that exist (folders: not empty) are listed.
        commands: label -> command line to run next.
        evaluator: the engine whose key metric to report: the trainer's validator (its best value and epoch), or
            ``None``: the engine it is attached to (an evaluation: its value; an engine without a key metric: none).
        title: what finished, e.g. ``"Training"``, ``"Evaluation"``, ``"Inference"``.
        name: logger name; default: the engine's logger.
    """

    def __init__(
        self,
        outputs: Mapping[str, str | Path],
        commands: Mapping[str, str] | None = None,
        evaluator: Engine | None = None,
        title: str = "Run",
        name: str | None = None,
    ) -> None:
        self.outputs, self.commands = dict(outputs), dict(commands or {})
        self.evaluator, self.title = evaluator, title
        self.logger = logging.getLogger(name) if name else None
        self._start = 0.0
        self._registered = False

    def attach(self, engine: Engine) -> None:
        if idist.get_rank() == 0:
            self.evaluator = engine if self.evaluator is None else self.evaluator
            engine.add_event_handler(Events.STARTED, self._started)

    def _started(self, engine: Engine) -> None:
        self._start = time.perf_counter()
        if not self._registered:
            self._registered = True
            engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        (self.logger or engine.logger).info(self.text(engine))

    def text(self, engine: Engine | None = None) -> str:
        """The summary: header, existing outputs, next commands."""
        header = f"{self.title} finished in {format_duration(time.perf_counter() - self._start)}"
        metric = self._metric(engine)
        lines = [f"{header}; {metric}." if metric else f"{header}."]
        outputs = {label: str(path) for label, path in self.outputs.items() if _exists(Path(path))}
        if outputs:
            width = max(len(label) for label in outputs)
            lines += ["Outputs:", *(f"  {label.ljust(width)}  {path}" for label, path in outputs.items())]
        if self.commands:
            width = max(len(label) for label in self.commands)
            lines += ["Next:", *(f"  {label.ljust(width)}  {cmd}" for label, cmd in self.commands.items())]
        return "\n".join(lines)

    def _metric(self, engine: Engine | None) -> str:
        source = self.evaluator
        state: Any = getattr(source, "state", None)
        name = getattr(state, "key_metric_name", None)
        if state is None or name is None:
            return ""
        if source is engine:  # an evaluation: its own value
            value = state.metrics.get(name)
            return "" if value is None else f"{name} {float(value):.3f}"
        if state.best_metric_epoch < 1:
            return ""
        return f"best {name} {state.best_metric:.3f} at epoch {state.best_metric_epoch}"


def _exists(path: Path) -> bool:
    return path.is_file() or (path.is_dir() and any(path.iterdir()))
