"""KD that follows the teacher's standing: the distillation weight opens as the online teacher overtakes its students.

An online teacher trained from scratch beside its students is, early on (and for small data sets, sometimes
throughout), no better than they are; distilling from it at full weight then pulls the students toward a worse
network. :class:`TeacherStandingGate` reads the evaluator's metrics after each validation and sets the loss's KD
weight from the margin ``teacher - best student`` of one validation metric: 0 while the teacher trails, the full
weight once it leads by ``threshold + span``, linearly in between (``span = 0``: a hard gate at ``threshold``).

Related work: online distillation that weighs its targets by their current quality, e.g. the gated, learnt
aggregation of ONE (Lan et al., NeurIPS 2018) and OKDDip (Chen et al., AAAI 2020), and the "teacher correctness"
weighting of soft labels (Zhou et al., ICLR 2021; see :func:`monai_kdml.losses.teacher_true_class_weight` for the
per-sample form). The validation-driven, run-level gate here is our simplification: one scalar per epoch, no learnt
parameters, decided on validation data only.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ignite.engine import Events

from monai_kdml.handlers.schedules import AttributeSetter
from monai_kdml.keys import TEACHER, split_cohort

if TYPE_CHECKING:
    from ignite.engine import Engine

__all__ = ["TeacherStandingGate", "check_gate_metric", "teacher_margin"]

logger = logging.getLogger(__name__)


def teacher_margin(metrics: Mapping[str, Any], metric: str) -> float:
    """``teacher_<metric> - max_k student_<k>_<metric>`` over every student of every cohort (``kd/student_0_auc``);
    ``nan`` when the teacher's or every student's value is missing or not finite.

    Args:
        metrics: the evaluator's ``state.metrics``.
        metric: the metric's suffix, e.g. ``"auc"`` (MSI) or ``"map"`` (polyp).
    """
    teacher = _finite(metrics.get(f"{TEACHER}_{metric}"))
    students = []
    for key, value in metrics.items():
        _, name = split_cohort(str(key))
        head, sep, tail = name.partition("_")
        index, sep2, rest = tail.partition("_")
        if head == "student" and sep and sep2 and index.isdigit() and rest == metric:
            students.append(_finite(value))
    best = max((s for s in students if math.isfinite(s)), default=math.nan)
    return teacher - best


def check_gate_metric(metric: str, metrics: Mapping[str, Any], key: str = "teacher_gate_metric") -> str:
    """``metric`` when the validation computes ``teacher_<metric>``: a suffix it does not compute would leave the gate
    shut for the whole run (a missing margin keeps the value), KD silently off.

    Args:
        metric: the metric suffix, e.g. ``"auc"``.
        metrics: the validation's metric names (an evaluator's ``state.metrics``, or a bundle's metric dict).
        key: the option's name in messages.

    Raises:
        ValueError: naming ``key``, the value and the suffixes the teacher has.
    """
    if f"{TEACHER}_{metric}" not in metrics:
        suffixes = (str(k)[len(TEACHER) + 1 :] for k in metrics if str(k).startswith(f"{TEACHER}_"))
        valid = sorted(s for s in suffixes if not s[:1].isdigit())  # not a teacher ensemble member's (teacher_0_auc)
        raise ValueError(f"`{key}` is {metric!r}: the validation computes no `{TEACHER}_{metric}`. Valid: {valid}.")
    return metric


class TeacherStandingGate:
    """Set ``target.<attribute>`` (the KD weight) after each validation from the teacher's validation margin.

    With ``margin = teacher_<metric> - best student_<metric>`` (:func:`teacher_margin`):
    ``value = end_value * clip((margin - threshold) / span, 0, 1)`` (``span = 0``: ``end_value`` when
    ``margin > threshold``, else 0). Before the first validation the value is ``start_value``. The value follows the
    standing both ways: a teacher that falls behind again is silenced again. A missing or non-finite margin keeps the
    previous value (logged); a ``metric`` the validation does not compute for the teacher is an error at the first
    validation (:func:`check_gate_metric`; the bundles check it before training).

    Attach it to the trainer (it goes in ``train#handlers``); it listens to the evaluator's ``COMPLETED`` event, so it
    runs after the validation metrics exist regardless of handler order. Do not also ramp the same attribute.

    Args:
        target: the object holding the attribute (usually the loss).
        attribute: e.g. ``"kd_weight"``.
        evaluator: the validation engine whose ``state.metrics`` hold ``teacher_<metric>`` and the students'.
        metric: the metric suffix compared (e.g. ``"auc"``, ``"map"``).
        threshold: the margin at which the gate starts to open.
        span: the margin over which it opens fully (0: a step).
        start_value: the value until the first validation (default 0: no KD from an unproven teacher).
        end_value: the full value; defaults to the attribute's value at construction.

    Example::

        TeacherStandingGate(loss, "kd_weight", evaluator, metric="auc", span=0.05).attach(trainer)
    """

    def __init__(
        self,
        target: Any,
        attribute: str,
        evaluator: Engine,
        metric: str,
        threshold: float = 0.0,
        span: float = 0.0,
        start_value: float = 0.0,
        end_value: float | None = None,
    ) -> None:
        if span < 0:
            raise ValueError(f"TeacherStandingGate: `span` must be >= 0, got {span}.")
        self.setter = AttributeSetter(target, attribute)
        self.evaluator, self.metric = evaluator, metric
        self.threshold, self.span = threshold, span
        self.start_value = start_value
        self.end_value = float(getattr(target, attribute)) if end_value is None else end_value
        self.state_key = f"teacher_gate_{attribute}"
        self.engine: Engine | None = None
        self._value = start_value
        self.margins: list[float] = []

    @property
    def value(self) -> float:
        """The current value; kept in the trainer's state once attached, so the training checkpoint holds it."""
        return float(getattr(self.engine.state, self.state_key)) if self.engine is not None else self._value

    @value.setter
    def value(self, value: float) -> None:
        self._value = value
        if self.engine is not None:
            setattr(self.engine.state, self.state_key, value)

    def gate(self, margin: float) -> float:
        """The value for a teacher margin."""
        if self.span == 0:
            return self.end_value if margin > self.threshold else 0.0
        return self.end_value * min(1.0, max(0.0, (margin - self.threshold) / self.span))

    def attach(self, engine: Engine) -> None:
        """Register the value as a user key of the trainer's ``state_dict`` (Ignite saves and restores it with the
        engine, so a resumed run continues with the gate where it was), set it at every epoch start, and update it
        after each validation."""
        self.engine = engine
        if self.state_key not in engine.state_dict_user_keys:
            engine.state_dict_user_keys.append(self.state_key)
        self.value = self._value
        engine.add_event_handler(Events.STARTED, self._apply)
        engine.add_event_handler(Events.EPOCH_STARTED, self._apply)
        self.evaluator.add_event_handler(Events.COMPLETED, self._update)

    def _apply(self, engine: Engine) -> None:
        self.setter(self.value)

    def _update(self, evaluator: Engine) -> None:
        check_gate_metric(self.metric, evaluator.state.metrics, "metric")
        margin = teacher_margin(evaluator.state.metrics, self.metric)
        self.margins.append(margin)
        if not math.isfinite(margin):
            logger.warning("TeacherStandingGate: no finite teacher/student `%s` margin; keeping %s.", self.metric,
                           self.value)  # fmt: skip
            return
        self.value = self.gate(margin)
        self.setter(self.value)
        logger.info("TeacherStandingGate: teacher - best student %s = %+.4f -> %s = %.3f", self.metric, margin,
                    self.setter.attribute, self.value)  # fmt: skip

    def state_dict(self) -> dict[str, float]:
        """The current value (the trainer's checkpoint already holds it through the engine's state)."""
        return {"value": self.value}

    def load_state_dict(self, state: Mapping[str, float]) -> None:
        self.value = float(state["value"])
        self.setter(self.value)


def _finite(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan
