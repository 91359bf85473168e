"""Model selection that survives a resume: the best-model files (``model.pt``, ``best_networks.pt``) and the
evaluator's best key metric as a stateful object for the training checkpoint."""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ignite.distributed as idist
from ignite.engine import Events

from monai_kdml.handlers.atomic import atomic_save, state_tree

if TYPE_CHECKING:
    from monai.engines import Workflow

__all__ = ["BestModelSaver", "ModelSelectionState", "select_best"]

logger = logging.getLogger(__name__)

_BEST = "best_metrics"  # evaluator state attribute: metric -> {"value", "epoch"} of the selections by select_best


def select_best(engine: Workflow, metric: str) -> bool:
    """Whether the evaluator's current epoch is a new best of ``metric``, recorded in ``engine.state.best_metrics``
    (saved and restored by :class:`ModelSelectionState`).

    The same rule as MONAI's key metric: the evaluator's ``metric_cmp_fn``, the first value always a best; NaN never
    beats a number and a number always beats NaN. Decided once per epoch and metric, so several savers may ask.

    Raises:
        KeyError: ``metric`` is not in the evaluator's metrics, naming the ones there.
    """
    state = engine.state
    best: dict[str, dict[str, float]] = getattr(state, _BEST, None) or {}
    setattr(state, _BEST, best)
    epoch = int(state.epoch)
    entry = best.get(metric)
    if entry is not None and int(entry["epoch"]) == epoch:
        return True
    if metric not in state.metrics:
        raise KeyError(f"model selection by '{metric}': no such metric; the evaluator has {sorted(state.metrics)}.")
    value = float(state.metrics[metric])
    cmp = engine.metric_cmp_fn
    better = entry is None or (
        not math.isnan(value) and (math.isnan(entry["value"]) or bool(cmp(value, entry["value"])))
    )
    if better:
        best[metric] = {"value": value, "epoch": epoch}
    return better


class ModelSelectionState:
    """The evaluator's best key metric and its epoch, saved and restored with the training checkpoint.

    MONAI evaluators keep ``best_metric``/``best_metric_epoch`` in ``engine.state``, which no checkpoint holds: a
    resumed run would take its first validation for a new best and overwrite ``model.pt`` with a worse epoch. Put
    this object in the trainer's checkpoint objects (e.g. ``"model_selection"``); :class:`BestModelSaver` decides
    from the same state, so restoring it restores model selection.

    It also saves the selections by other metrics that :func:`select_best` keeps in the evaluator's state (e.g. one
    per cohort of a cohort run), under ``"metrics"`` and only when there are any.

    Args:
        evaluator: the MONAI evaluator with a key metric.
    """

    def __init__(self, evaluator: Workflow) -> None:
        self.evaluator = evaluator

    def state_dict(self) -> dict[str, Any]:
        state = self.evaluator.state
        out: dict[str, Any] = {
            "key_metric_name": state.key_metric_name,
            "best_metric": float(state.best_metric),
            "best_metric_epoch": int(state.best_metric_epoch),
        }
        best = getattr(state, _BEST, None)
        if best:
            out["metrics"] = {k: dict(v) for k, v in best.items()}
        return out

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        setattr(self.evaluator.state, _BEST, {k: dict(v) for k, v in state_dict.get("metrics", {}).items()})
        name = self.evaluator.state.key_metric_name
        if state_dict.get("key_metric_name") != name:
            warnings.warn(
                f"the checkpoint selected models by '{state_dict.get('key_metric_name')}', the configuration by "
                f"'{name}': model selection starts afresh (the next validation replaces the best-model files).",
                stacklevel=2,
            )
            return
        self.evaluator.state.best_metric = float(state_dict["best_metric"])
        self.evaluator.state.best_metric_epoch = int(state_dict["best_metric_epoch"])


class BestModelSaver:
    """Write ``save_dict`` to ``filename`` atomically each time the evaluator records a new best key metric.

    The decision is the evaluator's own (MONAI sets ``best_metric_epoch`` to the current epoch on a new best, with
    its ``metric_cmp_fn``), so there is one rule and one state, restored on resume by :class:`ModelSelectionState`.
    A single entry is saved as its bare state dict (``{"model": ensemble}`` gives the ``model.pt`` that the
    bundle's ``network_def`` loads), several as a dict of state dicts. Only rank 0 writes.

    Args:
        save_dir: folder of the file.
        save_dict: the objects to save (networks, DDP wrappers removed).
        filename: file name, e.g. ``"model.pt"`` or ``"best_networks.pt"``.
        name: logger name; default: the engine's logger.

    Raises:
        ValueError: ``save_dict`` is empty; at ``attach``, the engine has no key metric.
    """

    def __init__(
        self, save_dir: str | Path, save_dict: Mapping[str, Any], filename: str = "model.pt", name: str | None = None
    ) -> None:
        if not isinstance(save_dict, Mapping) or not save_dict:
            raise ValueError("`save_dict` must be a non-empty mapping of objects with state_dict().")
        self.path = Path(save_dir) / filename
        self.save_dict = save_dict
        self.logger = logging.getLogger(name) if name else logger
        self._name = name

    def attach(self, engine: Workflow) -> None:
        if getattr(engine.state, "key_metric_name", None) is None:
            raise ValueError(f"BestModelSaver({self.path.name}): the evaluator has no key metric (key_val_metric).")
        if self._name is None:
            self.logger = engine.logger
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Workflow) -> None:
        state = engine.state
        if state.best_metric_epoch != state.epoch:
            return
        if idist.get_rank() == 0:
            content = state_tree(dict(self.save_dict))
            atomic_save(next(iter(content.values())) if len(content) == 1 else content, self.path)
        self.logger.info(
            "Saved %s: %s = %.4f at epoch %d.", self.path, state.key_metric_name, state.best_metric, state.epoch
        )
