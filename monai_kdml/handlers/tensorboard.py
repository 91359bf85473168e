"""TensorBoard curves of a teacher-and-students run, grouped by what they measure, every network on one chart."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ignite.engine import Events
from monai.handlers import TensorBoardHandler
from monai.utils import is_scalar

from monai_kdml.handlers.outputs import loss_terms, split_loss_key, split_metric_key
from monai_kdml.keys import TEACHER, student_name

if TYPE_CHECKING:
    from ignite.engine import Engine
    from torch.optim import Optimizer
    from torch.utils.tensorboard import SummaryWriter

__all__ = ["TensorBoardCurves", "tag_layout"]


def tag_layout(tags: Sequence[str]) -> dict[str, dict[str, list]]:
    """The custom-scalars layout for ``tags``: one chart per ``<group>/<quantity>`` holding every ``.../<network>``.

    ``train/kd/student_0`` and ``train/kd/student_1`` share the chart "kd" of the category "training (per
    iteration)", ``val/auc/*`` the chart "auc" of "validation (per epoch)"; ``lr/*`` and ``warmup/*`` are one chart
    each in "schedules"; a tag without a network (``val/disagreement``) has a chart of its own.
    """
    categories = {"train": "training (per iteration)", "val": "validation (per epoch)"}
    layout: dict[str, dict[str, list]] = {}
    for tag in tags:
        parts = tag.split("/")
        if parts[0] in ("lr", "warmup"):
            category, chart, regex = "schedules", {"lr": "learning rate", "warmup": "warm-up"}[parts[0]], parts[0]
        elif len(parts) >= 3:
            category, chart, regex = categories.get(parts[0], parts[0]), parts[1], "/".join(parts[:2])
        else:
            category, chart, regex = categories.get(parts[0], parts[0]), parts[-1], tag
        pattern = f"^{re.escape(regex)}/.*" if regex != tag else f"^{re.escape(tag)}$"
        layout.setdefault(category, {})[chart] = ["Multiline", [pattern]]
    return layout


class TensorBoardCurves(TensorBoardHandler):
    """Write a KDML run's curves under grouped tags and a custom-scalars layout that overlays the networks.

    Tags (the scalars dashboard groups them by their first part; the "custom scalars" dashboard draws every network
    of a quantity on one chart):

    - ``train/loss/total`` (the backpropagated sum), ``train/loss/<network>`` and ``train/<term>/<network>`` for each
      loss term (``ce`` or whatever the loss names it, e.g. ``dice_ce``; ``kd``, ``ml``, ``cls``, ...), per iteration;
    - ``lr/<network>``: each optimizer's learning rate, and ``warmup/<attribute>``: the scheduled loss attributes
      (e.g. ``kd_weight``), per epoch, as used in that epoch;
    - ``val/<metric>/<network>`` (and ``val/<metric>`` for metrics of no network), at the validator's epoch.

    Args:
        summary_writer, log_dir: as :class:`monai.handlers.TensorBoardHandler`.
        evaluator: the validation engine; its metrics are written after each of its epochs.
        network_names: names to split metric names by (e.g. ``[..., "ensemble", "wbf"]``); standard names always work.
        optimizers: name -> optimizer; default: a ``KDMLTrainer``'s teacher and student optimizers (or ``optimizer``).
        schedule_target, schedule_attributes: the object whose attributes warm up (the loss) and their names.
        iteration_interval: write the per-iteration curves every N iterations.
    """

    def __init__(
        self,
        summary_writer: SummaryWriter | None = None,
        log_dir: str = "./runs",
        evaluator: Engine | None = None,
        network_names: Sequence[str] = (),
        optimizers: Mapping[str, Optimizer] | None = None,
        schedule_target: Any = None,
        schedule_attributes: Sequence[str] = (),
        iteration_interval: int = 1,
    ) -> None:
        super().__init__(summary_writer=summary_writer, log_dir=log_dir)
        self.evaluator, self.networks = evaluator, list(network_names)
        self.optimizers = None if optimizers is None else dict(optimizers)
        self.schedule_target, self.schedule_attributes = schedule_target, list(schedule_attributes)
        for attribute in self.schedule_attributes:
            if not hasattr(schedule_target, attribute):
                raise ValueError(f"`schedule_attributes`: {type(schedule_target).__name__} has no {attribute!r}.")
        self.iteration_interval = max(1, int(iteration_interval))
        self.tags: list[str] = []
        self._layout_size = 0
        self._schedules_due = False

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._epoch_started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration_completed)
        if self.evaluator is not None:
            self.evaluator.add_event_handler(Events.EPOCH_COMPLETED, self.write_metrics)

    def _scalar(self, tag: str, value: float, step: int) -> None:
        if tag not in self.tags:
            self.tags.append(tag)
        self._writer.add_scalar(tag, value, step)

    def _epoch_started(self, engine: Engine) -> None:
        self._schedules_due = True

    def _iteration_completed(self, engine: Engine) -> None:
        state = engine.state
        if self._schedules_due:  # after the first iteration: warm-up handlers set their values as it starts
            self._schedules_due = False
            # read when training runs: a trainer's own optimizers are set after its handlers are attached
            optimizers = _engine_optimizers(engine) if self.optimizers is None else self.optimizers
            for name, optimizer in optimizers.items():
                groups = optimizer.param_groups
                for g, group in enumerate(groups):
                    self._scalar(f"lr/{name}" + (f"/{g}" if len(groups) > 1 else ""), float(group["lr"]), state.epoch)
            for attribute in self.schedule_attributes:
                self._scalar(f"warmup/{attribute}", float(getattr(self.schedule_target, attribute)), state.epoch)
        if state.iteration % self.iteration_interval == 0:
            for key, value in loss_terms(state.output).items():
                split = split_loss_key(key)
                if split is not None:
                    self._scalar(f"train/{split[0]}/{split[1]}", value, state.iteration)
                elif key == "loss":
                    self._scalar("train/loss/total", value, state.iteration)
        self._update_layout()

    def write_metrics(self, engine: Engine) -> None:
        """``val/<metric>/<network>`` for every scalar metric of ``engine`` at its epoch (the trainer's)."""
        for key, value in engine.state.metrics.items():
            if is_scalar(value):
                network, metric = split_metric_key(key, self.networks)
                self._scalar(f"val/{metric}" + (f"/{network}" if network else ""), float(value), engine.state.epoch)
        self._update_layout()
        self._writer.flush()

    def _update_layout(self) -> None:
        if len(self.tags) > self._layout_size:  # a new tag: rewrite the layout (TensorBoard reads the latest)
            self._layout_size = len(self.tags)
            self._writer.add_custom_scalars(tag_layout(self.tags))


def _engine_optimizers(engine: Engine) -> dict[str, Optimizer]:
    """A ``KDMLTrainer``'s optimizers by network name (the online teacher's first), or a trainer's ``optimizer``."""
    if hasattr(engine, "student_optimizers"):
        cohorts = getattr(engine, "cohorts", None)
        names = [n for c in cohorts for n in c.names()] if cohorts else None
        named = {(names[k] if names else student_name(k)): o for k, o in enumerate(engine.student_optimizers)}
        teacher = getattr(engine, "teacher_optimizer", None)
        return {TEACHER: teacher, **named} if teacher is not None else named
    optimizer = getattr(engine, "optimizer", None)
    return {} if optimizer is None else {"optimizer": optimizer}
