"""Named output transforms for MONAI's stats handlers (no ``$lambda`` in configs). The rules that split output and
metric names into a term or metric and a network live beside the rules that build them, in :mod:`monai_kdml.keys`
(re-exported here)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from monai_kdml.keys import is_loss_key, split_loss_key, split_metric_key

__all__ = ["loss_terms", "split_loss_key", "split_metric_key", "total_loss"]


def _first(output: Any) -> Mapping:
    if isinstance(output, Sequence) and not isinstance(output, Mapping):
        return output[0] if output else {}
    return output


def loss_terms(output: Any) -> dict[str, float]:
    """Every scalar loss entry of a ``KDMLTrainer`` output: ``loss``, ``loss_<network>``, ``<term>_<network>``
    (and a cohort run's ``<mode>/loss``, ``<mode>/loss_<network>``, ``<mode>/<term>_<network>``).

    Give it as ``output_transform`` to ``StatsHandler``/``TensorBoardStatsHandler`` to get each network's losses as
    their own curves. Works on the decollated list MONAI produces (first item; the scalars are replicated) and on a
    plain dict.
    """
    return {
        key: float(value)
        for key, value in _first(output).items()
        if is_loss_key(key) and isinstance(value, (torch.Tensor, float, int)) and _is_scalar(value)
    }


def total_loss(output: Any) -> float:
    """The backpropagated total (``loss``) of a trainer's output: a short per-iteration log line."""
    return float(_first(output)["loss"])


def _is_scalar(value: Any) -> bool:
    return not isinstance(value, torch.Tensor) or value.numel() == 1
