"""Warm-up of loss weights and temperature: MONAI's ``ParamSchedulerHandler`` aimed at an attribute of the loss."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ignite.engine import Events
from monai.handlers import LrScheduleHandler, ParamSchedulerHandler

if TYPE_CHECKING:
    from ignite.engine import Engine

__all__ = ["AttributeSetter", "LrScheduleHandlerGroup", "WarmupHandler"]


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
