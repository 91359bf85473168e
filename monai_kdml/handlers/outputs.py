"""Named output transforms for MONAI's stats handlers (no ``$lambda`` in configs), and the one rule that splits
output and metric names into a term or metric and a network."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch

__all__ = ["loss_terms", "split_loss_key", "split_metric_key", "total_loss"]

# ``loss`` and ``<term>_<network>`` entries, with a cohort's ``<mode>/`` prefix or without; predictions are not losses
_LOSS_KEY = re.compile(r"^(?:\w+/)?(?:loss|(?!pred_)\w+_(?:teacher|student_\d+))$")
# a cohort's prefix belongs to the network: ``kd/ml_student_1`` is term ``ml`` of network ``kd/student_1``
_TERM_NETWORK = re.compile(r"^(?:(?P<cohort>\w+)/)?(?P<term>\w+?)_(?P<network>teacher(?:_\d+)?|student_\d+)$")
_METRIC_NETWORK = re.compile(
    r"^(?:(?P<cohort>\w+)/)?(?P<network>teacher(?:_\d+)?|student_\d+|ensemble)_(?P<metric>.+)$"
)


def _network(match: re.Match) -> str:
    return f"{match['cohort']}/{match['network']}" if match["cohort"] else match["network"]


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
        if _LOSS_KEY.match(key) and isinstance(value, (torch.Tensor, float, int)) and _is_scalar(value)
    }


def total_loss(output: Any) -> float:
    """The backpropagated total (``loss``) of a trainer's output: a short per-iteration log line."""
    return float(_first(output)["loss"])


def split_loss_key(key: str) -> tuple[str, str] | None:
    """``(term, network)`` of a trainer output key: ``kd_cls_student_0`` -> ``("kd_cls", "student_0")``,
    ``loss_teacher`` -> ``("loss", "teacher")``, ``kd/ml_student_1`` -> ``("ml", "kd/student_1")``; ``None`` for
    other keys (``loss``, ``kd/loss``, ``pred_*``)."""
    if key.rpartition("/")[2].startswith("pred_"):
        return None
    match = _TERM_NETWORK.match(key)
    return (match["term"], _network(match)) if match else None


def split_metric_key(key: str, networks: Sequence[str] = ()) -> tuple[str | None, str]:
    """``(network, metric)`` of a metric name: ``student_1_patient_auc`` -> ``("student_1", "patient_auc")``.

    ``networks`` (e.g. ``["teacher", "student_0", "ensemble", "wbf"]``) are matched first, longest first; then the
    standard names. A metric of no network (``disagreement``) gives ``(None, key)``.
    """
    for name in sorted(networks, key=len, reverse=True):
        if key.startswith(f"{name}_"):
            return name, key[len(name) + 1 :]
    match = _METRIC_NETWORK.match(key)
    return (_network(match), match["metric"]) if match else (None, key)


def _is_scalar(value: Any) -> bool:
    return not isinstance(value, torch.Tensor) or value.numel() == 1
