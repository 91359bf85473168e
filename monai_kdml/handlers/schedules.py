"""Warm-up of loss weights and temperature: MONAI's ``ParamSchedulerHandler`` aimed at an attribute of the loss."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ignite.engine import Events
from monai.handlers import LrScheduleHandler, ParamSchedulerHandler

if TYPE_CHECKING:
    from ignite.engine import Engine

__all__ = [
    "RAMP_SHAPES",
    "AttributeSetter",
    "LrScheduleHandlerGroup",
    "RampHandler",
    "WarmupHandler",
    "check_ramp_shape",
    "ramp_fraction",
]


class AttributeSetter:
    """``setter(value)`` sets ``target.<attribute> = value`` (a named callable, so configs need no lambda).

    Args:
        target: the object to change, e.g. a :class:`monai_kdml.losses.KDMLLoss`.
        attribute: the attribute's name; it must exist already (a typo fails at construction).
    """

    def __init__(self, target: Any, attribute: str) -> None:
        if not hasattr(target, attribute):
            raise ValueError(f"`attribute`: {type(target).__name__} has no attribute {attribute!r}.")
        self.target = target
        self.attribute = attribute

    def __call__(self, value: float) -> None:
        setattr(self.target, self.attribute, value)


class WarmupHandler(ParamSchedulerHandler):
    """Ramp ``target.<attribute>`` linearly from ``start_value`` to ``end_value`` over the first epochs (or iterations).

    The value is set at ``ITERATION_STARTED`` from the engine's epoch (iteration) counter alone, so a resumed run gets
    the same schedule. With ``warmup_steps = W`` (epoch level): epoch 1 uses ``start_value``, epoch ``1 + W`` and later
    use ``end_value``, linearly in between. Typical uses: ``kd_weight``/``ml_weight`` from 0 while the teacher and
    peers are still random, or ``temperature`` annealed from a high value.

    Args:
        target: the object holding the attribute (usually the loss).
        attribute: e.g. ``"kd_weight"``, ``"ml_weight"``, ``"temperature"``.
        warmup_steps: number of epochs (or iterations) of the ramp; 0 applies ``end_value`` at once.
        start_value: value at the first epoch (iteration).
        end_value: value after the ramp; defaults to the attribute's value at construction.
        epoch_level: count epochs (default) or iterations.

    Example::

        WarmupHandler(loss, "kd_weight", warmup_steps=3).attach(trainer)
    """

    def __init__(
        self,
        target: Any,
        attribute: str,
        warmup_steps: int,
        start_value: float = 0.0,
        end_value: float | None = None,
        epoch_level: bool = True,
    ) -> None:
        if warmup_steps < 0:
            raise ValueError(f"`warmup_steps` must be >= 0, got {warmup_steps}.")
        setter = AttributeSetter(target, attribute)
        end = float(getattr(target, attribute)) if end_value is None else end_value
        super().__init__(
            parameter_setter=setter,
            value_calculator="linear",
            vc_kwargs={
                "initial_value": start_value if warmup_steps > 0 else end,
                "step_constant": 1,
                "step_max_value": 1 + max(warmup_steps, 1),
                "max_value": end,
            },
            epoch_level=epoch_level,
            event=Events.ITERATION_STARTED,  # type: ignore[arg-type]  # MONAI annotates str; ignite needs the enum
        )


RAMP_SHAPES = ("linear", "cosine", "sigmoid")
"""Shapes of :class:`RampHandler`: the fraction of the way from start to end value at progress ``t`` in ``[0, 1]``."""


def check_ramp_shape(shape: Any, key: str = "shape") -> str:
    """``shape`` when it is one of :data:`RAMP_SHAPES`.

    Raises:
        ValueError: naming ``key`` (e.g. the bundle key ``ramp_shape``) and the shapes.
    """
    if shape not in RAMP_SHAPES:
        raise ValueError(f"`{key}` must be one of {RAMP_SHAPES}, got {shape!r}.")
    return shape


def ramp_fraction(progress: float, shape: str) -> float:
    """How far a ramp of ``shape`` is at ``progress`` (clipped to ``[0, 1]``).

    - ``linear``: ``t``;
    - ``cosine``: ``(1 - cos(pi t)) / 2`` (half a cosine: slow start and end);
    - ``sigmoid``: ``exp(-5 (1 - t)^2)``, the ramp-up of Laine & Aila (ICLR 2017) and Tarvainen & Valpola
      (NeurIPS 2017) that ONE (Lan et al., NeurIPS 2018) and OKDDip (Chen et al., AAAI 2020) use for their
      distillation weight (over 80 of 300 epochs); it is ``exp(-5) ~ 0.007`` at ``t = 0``, not 0.
    """
    check_ramp_shape(shape)
    t = min(1.0, max(0.0, float(progress)))
    if shape == "linear":
        return t
    if shape == "cosine":
        return 0.5 * (1.0 - math.cos(math.pi * t))
    return math.exp(-5.0 * (1.0 - t) ** 2)


class RampHandler(ParamSchedulerHandler):
    """Ramp ``target.<attribute>`` from ``start_value`` to ``end_value`` at iteration level, over ``steps`` iterations
    or ``epochs`` epochs (converted with the loader's length when the run starts), in one of :data:`RAMP_SHAPES`.

    The value is set at ``ITERATION_STARTED`` from the engine's iteration counter alone (``t = (iteration - 1) /
    span``), so a resumed run gets the same schedule; after the span the value stays at ``end_value``. Unlike
    :class:`WarmupHandler` (epoch-level steps), the weight grows smoothly within epochs, and long spans (a large
    share of training, as in ONE/OKDDip) are the point: KD from a lagging online teacher is what hurts early.

    Args:
        target: the object holding the attribute (usually the loss).
        attribute: e.g. ``"kd_weight"``, ``"ml_weight"``.
        steps: span in iterations (give this or ``epochs``).
        epochs: span in epochs, may be fractional (give this or ``steps``).
        shape: ``linear``, ``cosine`` or ``sigmoid`` (:func:`ramp_fraction`).
        start_value: value at the first iteration.
        end_value: value after the span; defaults to the attribute's value at construction.

    Example::

        RampHandler(loss, "kd_weight", epochs=10, shape="cosine").attach(trainer)
    """

    def __init__(
        self,
        target: Any,
        attribute: str,
        steps: int | None = None,
        epochs: float | None = None,
        shape: str = "linear",
        start_value: float = 0.0,
        end_value: float | None = None,
    ) -> None:
        if (steps is None) == (epochs is None):
            raise ValueError(f"RampHandler: give exactly one of `steps` and `epochs`, got {steps} and {epochs}.")
        span = steps if steps is not None else epochs
        if span is None or span < 0:
            raise ValueError(f"RampHandler: the span must be >= 0, got steps={steps}, epochs={epochs}.")
        ramp_fraction(0.0, shape)  # validates the shape now, not at the first iteration
        self.shape, self.steps, self.epochs = shape, steps, epochs
        self.start_value = start_value
        self.end_value = float(getattr(target, attribute)) if end_value is None else end_value
        self.span_iterations = float(steps) if steps is not None else None
        super().__init__(
            parameter_setter=AttributeSetter(target, attribute),
            value_calculator=self._value,
            vc_kwargs={},
            epoch_level=False,
            event=Events.ITERATION_STARTED,  # type: ignore[arg-type]  # MONAI annotates str; ignite needs the enum
        )

    def _value(self, current_step: int) -> float:
        span = self.span_iterations or 0.0
        progress = 1.0 if span <= 0 else (current_step - 1) / span
        return self.start_value + (self.end_value - self.start_value) * ramp_fraction(progress, self.shape)

    def _resolve_span(self, engine: Engine) -> None:
        if self.epochs is not None:
            self.span_iterations = self.epochs * float(engine.state.epoch_length or 0)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._resolve_span)
        super().attach(engine)


class LrScheduleHandlerGroup:
    """MONAI's ``LrScheduleHandler`` for several schedulers at once (one per network's optimizer).

    A bundle's handler list is static while the number of students is a parameter; this one entry expands to one
    ``LrScheduleHandler`` per scheduler.

    Args:
        lr_schedulers: the schedulers, e.g. one per optimizer of ``KDMLTrainer.trainable_optimizers``.
        epoch_level: step once per epoch (default) or per iteration.
        print_lr: log each learning rate when it changes.
    """

    def __init__(self, lr_schedulers: Sequence[Any], epoch_level: bool = True, print_lr: bool = False) -> None:
        self.handlers = [LrScheduleHandler(s, print_lr=print_lr, epoch_level=epoch_level) for s in lr_schedulers]

    def attach(self, engine: Engine) -> None:
        for handler in self.handlers:
            handler.attach(engine)
