"""Reseed every random source at each epoch start so an interrupted run resumes bit for bit."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

import numpy as np
import torch
from ignite.engine import Events
from monai.data.utils import set_rnd

if TYPE_CHECKING:
    from ignite.engine import Engine
    from torch.utils.data import Dataset

__all__ = ["EpochSeedHandler"]


class EpochSeedHandler:
    """At ``EPOCH_STARTED``, seed Python, NumPy, torch and the dataset's MONAI random transforms with
    ``seed + epoch`` (+ ``1000003 * rank`` in distributed runs, so ranks augment differently).

    Ignite creates each epoch's data iterator after ``EPOCH_STARTED``, so shuffling, worker seeds, augmentation and
    dropout of epoch ``e`` depend on ``e`` alone, not on what ran before: a run resumed from the checkpoint of epoch
    ``e - 1`` sees exactly the batches and random draws of the uninterrupted run.

    Args:
        seed: base seed.
        dataset: the training dataset; its ``Randomizable`` transforms (which keep their own random state) are
            reseeded too. With ``num_workers > 0`` they are seeded per worker from torch's seed anyway.
    """

    def __init__(self, seed: int = 0, dataset: Dataset | None = None) -> None:
        self.seed = seed
        self.dataset = dataset

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        rank = getattr(engine.state, "rank", 0) or 0
        seed = (self.seed + engine.state.epoch + 1000003 * rank) % 2**32
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        if self.dataset is not None:
            set_rnd(self.dataset, seed)
