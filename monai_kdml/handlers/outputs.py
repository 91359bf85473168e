"""Named output transforms for MONAI's stats handlers (no ``$lambda`` in configs)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch

__all__ = ["loss_terms"]

# ``loss`` and ``<term>_<network>`` entries, with a cohort's ``<mode>/`` prefix or without; predictions are not losses
_LOSS_KEY = re.compile(r"^(?:\w+/)?(?:loss|(?!pred_)\w+_(?:teacher|student_\d+))$")


def loss_terms(output: Any) -> dict[str, float]:
    """Every scalar loss entry of a ``KDMLTrainer`` output: ``loss``, ``loss_<network>``, ``<term>_<network>``
    (and a cohort run's ``<mode>/loss``, ``<mode>/loss_<network>``, ``<mode>/<term>_<network>``).

    Give it as ``output_transform`` to ``StatsHandler``/``TensorBoardStatsHandler`` to get each network's losses as
    their own curves. Works on the decollated list MONAI produces (first item; the scalars are replicated) and on a
    plain dict.
    """
    if isinstance(output, Sequence) and not isinstance(output, Mapping):
        if not output:
            return {}
        output = output[0]
    return {
        key: float(value)
        for key, value in output.items()
        if _LOSS_KEY.match(key) and isinstance(value, (torch.Tensor, float, int)) and _is_scalar(value)
    }


def _is_scalar(value: Any) -> bool:
    return not isinstance(value, torch.Tensor) or value.numel() == 1
