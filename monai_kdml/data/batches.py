"""Batch sizes a network with BatchNorm can train on, whatever the data set's size.

In training mode, ``BatchNorm`` normalises each channel over the batch and the spatial positions; with one sample and
a 1 x 1 feature map (a 32-pixel tile after five halvings, or any network a user brings at its own size) a channel has
one value and PyTorch stops ("Expected more than 1 value per channel when training"). Two rules keep that from ending
a run: a last training batch of one sample is dropped (:func:`drop_last_batch_of_one`, counted in the log), and a
``batch_size`` of 1 is refused before training when a BatchNorm layer would see a 1 x 1 map
(:func:`check_single_sample_batches`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

__all__ = ["check_single_sample_batches", "drop_last_batch_of_one"]

logger = logging.getLogger(__name__)

_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def drop_last_batch_of_one(num_samples: int, batch_size: int, description: str = "training samples") -> bool:
    """``DataLoader(drop_last=...)`` for a training loader: ``True`` only when the last batch would hold one sample.

    Only that sample is left out (a different one every epoch, the order being shuffled); any other remainder is
    trained on. The answer depends only on the sizes, so a resumed run has the same iterations per epoch.

    Args:
        num_samples: samples per epoch (the data set's length, or the sampler's: one rank's share under DDP).
        batch_size: the loader's batch size.
        description: what a sample is, for the log line.

    Returns:
        Whether to drop the last batch; when ``True`` an INFO line says so, with the counts.

    Example::

        >>> drop_last_batch_of_one(33, 32), drop_last_batch_of_one(34, 32), drop_last_batch_of_one(32, 32)
        (True, False, False)
    """
    if batch_size < 2 or num_samples <= batch_size or num_samples % batch_size != 1:
        return False
    logger.info(
        "%d %s, batch size %d: the last batch of each epoch would hold 1 sample, which BatchNorm cannot train on; it "
        "is left out (1 sample per epoch, %d batches of %d trained).",
        num_samples,
        description,
        batch_size,
        num_samples // batch_size,
        batch_size,
    )
    return True


def check_single_sample_batches(
    batch_size: int,
    teacher: nn.Module,
    students: Sequence[nn.Module],
    image_size: int,
    frozen_teacher: bool = False,
    in_channels: int = 3,
) -> None:
    """Refuse ``batch_size`` 1 when a trained network's BatchNorm would see one value per channel at ``image_size``.

    Only when ``batch_size`` is 1: runs each trained network once on a zero sample (eval mode, no gradient) and records
    the input shape of every BatchNorm layer; the networks' modes are restored.

    Args:
        batch_size: the configured training batch size.
        teacher: the teacher (its BatchNorm stays in eval mode when ``frozen_teacher``, so it is not checked then).
        students: the students.
        image_size: the square side of a sample.
        frozen_teacher: whether the teacher is frozen.
        in_channels: image channels.

    Raises:
        ValueError: naming ``batch_size``, the network, the layer and its map size, and the ways out.
    """
    if batch_size != 1:
        return
    trained = {} if frozen_teacher else {"teacher": teacher}
    trained |= {f"student_{k}": s for k, s in enumerate(students)}
    for name, network in trained.items():
        single = _single_value_batch_norms(network, image_size, in_channels)
        if single:
            key, size = single[0]
            raise ValueError(
                f"`batch_size` 1: the {name}'s BatchNorm layer `{key}` sees a {size} map at `image_size` {image_size}, "
                "so a batch of one sample has a single value per channel and training would stop ('Expected more "
                "than 1 value per channel when training'). Use `batch_size` 2 or more, or a larger `image_size`."
            )


def _single_value_batch_norms(network: nn.Module, image_size: int, in_channels: int) -> list[tuple[str, str]]:
    """``(layer name, map size)`` of the BatchNorm layers whose input has one position per sample."""
    shapes: dict[str, torch.Size] = {}

    def record(key: str) -> Any:
        def hook(_module: nn.Module, args: tuple[torch.Tensor, ...], _output: torch.Tensor) -> None:
            shapes.setdefault(key, args[0].shape)  # returns None: the output stays the layer's

        return hook

    hooks = [m.register_forward_hook(record(k)) for k, m in network.named_modules() if isinstance(m, _BATCH_NORMS)]
    was_training = network.training
    try:
        device = next(network.parameters()).device
        network.eval()
        with torch.no_grad():
            network(torch.zeros(1, in_channels, image_size, image_size, device=device))
    finally:
        network.train(was_training)
        for hook in hooks:
            hook.remove()
    return [(k, " x ".join(map(str, s[2:])) or "1 x 1") for k, s in shapes.items() if math.prod(s[2:]) == 1]
