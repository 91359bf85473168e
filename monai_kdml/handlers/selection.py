"""Model selection that survives a resume: the best-model files (``model.pt``, ``best_networks.pt``) and the
evaluator's best key metric as a stateful object for the training checkpoint."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ignite.distributed as idist
from ignite.engine import Events

from monai_kdml.handlers.checkpoint import atomic_save, state_tree

if TYPE_CHECKING:
    from monai.engines import Workflow

__all__ = ["BestModelSaver", "ModelSelectionState"]

logger = logging.getLogger(__name__)


class ModelSelectionState:
    """The evaluator's best key metric and its epoch, saved and restored with the training checkpoint.

    MONAI evaluators keep ``best_metric``/``best_metric_epoch`` in ``engine.state``, which no checkpoint holds: a
    resumed run would take its first validation for a new best and overwrite ``model.pt`` with a worse epoch. Put
    this object in the trainer's checkpoint objects (e.g. ``"model_selection"``); :class:`BestModelSaver` decides
    from the same state, so restoring it restores model selection.

    Args:
        evaluator: the MONAI evaluator with a key metric.
    """

    def __init__(self, evaluator: Workflow) -> None:
        self.evaluator = evaluator

    def state_dict(self) -> dict[str, Any]:
        state = self.evaluator.state
        return {
            "key_metric_name": state.key_metric_name,
            "best_metric": float(state.best_metric),
            "best_metric_epoch": int(state.best_metric_epoch),
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
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
