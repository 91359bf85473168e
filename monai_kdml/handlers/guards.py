"""Stop a run on a non-finite loss before the optimizer step can spoil the weights (or a later checkpoint)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from monai.engines.utils import IterationEvents
from monai.utils import CommonKeys

if TYPE_CHECKING:
    from ignite.engine import Engine

__all__ = ["NonFiniteLossError", "NonFiniteLossGuard"]


class NonFiniteLossError(FloatingPointError):
    """A loss became NaN or infinite; the message names the network(s), the term(s) and the iteration."""


class NonFiniteLossGuard:
    """Raise :class:`NonFiniteLossError` at ``LOSS_COMPLETED`` when the total loss is not finite.

    It runs after the loss and before backward and the optimizer steps, so the weights in memory are still those of
    the last good iteration; checkpoints already written stay intact (MONAI's ``CheckpointSaver`` writes its
    exception-time checkpoint under a separate ``final`` name). Attach it to every trainer (the bundles list it
    among their training handlers); engines never attach handlers themselves.
    """

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(IterationEvents.LOSS_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        output: dict = engine.state.output  # type: ignore[assignment]  # ignite types output loosely
        total = output[CommonKeys.LOSS]
        if bool(torch.isfinite(total.detach()).all()):  # one device sync per iteration
            return
        bad = [
            f"{key}={float(value):g}"
            for key, value in output.items()
            if key != CommonKeys.LOSS
            and isinstance(value, torch.Tensor)
            and value.numel() == 1
            and not math.isfinite(float(value))
        ]
        raise NonFiniteLossError(
            f"non-finite loss at iteration {engine.state.iteration} (epoch {engine.state.epoch}): "
            f"{', '.join(bad) or f'loss={float(total):g}'}. Training stopped before the optimizer step; the weights "
            "and the last checkpoint are those of the last good iteration. Lower the learning rate, check the inputs "
            "and labels of this batch, or disable amp."
        )
