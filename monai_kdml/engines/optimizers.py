"""One optimizer per network and one LR scheduler per optimizer, from factories a bundle declares once.

A bundle names the optimizer as a ``_mode_: callable`` component (``{"_target_": "torch.optim.AdamW", "_mode_":
"callable", "lr": ...}``), so ``--student_optimizer#_target_ torch.optim.SGD`` swaps it for every student; these
functions apply it to each network.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from torch import nn
from torch.optim import Optimizer

__all__ = ["network_optimizers", "optimizer_schedulers", "trainable_optimizers"]


def network_optimizers(optimizer: Callable[..., Optimizer], networks: Iterable[nn.Module]) -> list[Optimizer]:
    """``[optimizer(net.parameters()) for net in networks]``: each network gets its own optimizer, in order."""
    return [optimizer(network.parameters()) for network in networks]


def trainable_optimizers(
    teacher_optimizer: Optimizer | None, student_optimizers: Sequence[Optimizer]
) -> list[Optimizer]:
    """The optimizers a trainer steps, in its order: the online teacher's (absent when frozen), then each student's."""
    return ([] if teacher_optimizer is None else [teacher_optimizer]) + list(student_optimizers)


def optimizer_schedulers(scheduler: Callable[[Optimizer], Any], optimizers: Iterable[Optimizer]) -> list[Any]:
    """``[scheduler(o) for o in optimizers]``: one LR scheduler per optimizer (e.g. a ``CosineAnnealingLR`` partial)."""
    return [scheduler(optimizer) for optimizer in optimizers]
