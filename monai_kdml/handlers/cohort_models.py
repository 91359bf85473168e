"""A cohort run's deployable models: one ``models/cohorts/<mode>/`` folder per cohort, each selected on that cohort's
own validation metric and laid out like a single-mode run's ``models/`` (``model.pt``, ``best_networks.pt``,
``network.json``), and the loader that puts every cohort's best students back for one evaluation pass."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ignite.distributed as idist
from ignite.engine import Events
from torch import nn

from monai_kdml.handlers.checkpoint import atomic_save, state_tree
from monai_kdml.handlers.resume import load_checkpoint
from monai_kdml.handlers.selection import select_best
from monai_kdml.keys import TEACHER, cohort_key
from monai_kdml.networks.student_cohorts import StudentCohorts
from monai_kdml.record import write_record

if TYPE_CHECKING:
    from monai.engines import Workflow

__all__ = ["COHORTS_DIR", "CohortCheckpointLoader", "CohortModelSaver", "cohort_dir", "cohort_metric"]

logger = logging.getLogger(__name__)

COHORTS_DIR = "cohorts"
"""Sub-folder of a cohort run's ``models/`` (and ``eval/``) holding one folder per cohort."""


def cohort_dir(root: str | Path, cohort: str) -> Path:
    """``<root>/cohorts/<cohort>``: where a cohort run keeps one cohort's files."""
    return Path(root) / COHORTS_DIR / str(cohort)


def cohort_metric(metric: str, cohort: str | None) -> str:
    """The name of a single-mode metric in ``cohort``: ``ensemble_auc`` -> ``kd/ensemble_auc``; the teacher's metrics
    (shared by every cohort) and any name in a single-mode run (``cohort=None``) are unchanged."""
    if cohort is None or metric.startswith(f"{TEACHER}_"):
        return metric
    return cohort_key(cohort, metric)


class CohortModelSaver:
    """Save each cohort's best model, by its own validation metric, in ``<save_dir>/cohorts/<mode>/``.

    At each evaluator ``EPOCH_COMPLETED`` and for each cohort ``c`` whose ``c/<metric>`` is a new best
    (:func:`~monai_kdml.handlers.select_best`, kept in the evaluator's state, so :class:`ModelSelectionState` saves
    and restores these decisions with the rest of model selection), it writes ``model.pt`` (the cohort's ensemble,
    its bare state dict: what the bundle's ``network_def`` loads), ``best_networks.pt`` (``{"teacher",
    "students"}``: the teacher and the cohort's students, as a single-mode run writes it) and ``network.json``
    (``record`` with ``mode`` set to ``c``), so evaluation and inference read the folder as a single-mode run's
    ``models/`` (``--ckpt_dir models/cohorts/<mode>``). Each cohort is thus selected exactly as a single-mode run
    of its mode would be. Does nothing in a single-mode run. Only rank 0 writes.

    Args:
        save_dir: the run's ``models/`` folder.
        teacher: the (shared) teacher.
        students: the run's :class:`~monai_kdml.networks.StudentCohorts`.
        ensembles: one deployable ensemble per cohort, in order.
        metric: the single-mode name of the selection metric, e.g. ``"ensemble_auc"`` (see :func:`cohort_metric`).
        record: the trained-network record to write beside each cohort's ``model.pt``.

    Raises:
        ValueError: not one ensemble per cohort.
    """

    def __init__(
        self,
        save_dir: str | Path,
        teacher: nn.Module,
        students: StudentCohorts,
        ensembles: Sequence[nn.Module],
        metric: str = "ensemble_auc",
        record: Mapping[str, Any] | None = None,
    ) -> None:
        self.members = students.members()
        self.cohorts = list(self.members)
        self.ensembles = list(ensembles) if self.cohorts else []
        if len(self.ensembles) != len(self.cohorts):
            raise ValueError(f"`ensembles`: {len(self.ensembles)} networks for {len(self.cohorts)} cohorts.")
        self.save_dir, self.teacher = Path(save_dir), teacher
        self.metric, self.record = metric, dict(record or {})

    def attach(self, engine: Workflow) -> None:
        if self.cohorts:
            engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Workflow) -> None:
        for cohort, ensemble in zip(self.cohorts, self.ensembles, strict=True):
            name = cohort_metric(self.metric, cohort)
            if not select_best(engine, name):
                continue
            folder = cohort_dir(self.save_dir, cohort)
            if idist.get_rank() == 0:
                atomic_save(state_tree(ensemble), folder / "model.pt")
                networks = {"teacher": self.teacher, "students": self.members[cohort]}
                atomic_save(state_tree(networks), folder / "best_networks.pt")
                if self.record:
                    write_record(folder, {**self.record, "mode": cohort, "cohorts": None})
            best = engine.state.best_metrics[name]
            engine.logger.info("Saved %s/: %s = %.4f at epoch %d.", folder, name, best["value"], int(best["epoch"]))


class CohortCheckpointLoader:
    """At ``STARTED``, load each cohort's students from its ``<ckpt_dir>/cohorts/<mode>/best_networks.pt``.

    Attach it after the loader of the run's ``best_networks.pt`` (which holds the teacher and every student at the
    best epoch of the run's key metric): each cohort then gets its students of its own best epoch, so one evaluation
    pass scores every cohort as its :class:`CohortModelSaver` selected it. Does nothing in a single-mode run.

    Args:
        ckpt_dir: the run's ``models/`` folder.
        students: the run's :class:`~monai_kdml.networks.StudentCohorts`.
        map_location: as for ``torch.load``.

    Raises:
        CheckpointReadError, CheckpointMismatchError: at ``STARTED``, a cohort's file is missing or does not fit.
    """

    def __init__(
        self,
        ckpt_dir: str | Path,
        students: StudentCohorts,
        map_location: Any = None,
    ) -> None:
        self.ckpt_dir, self.map_location = Path(ckpt_dir), map_location
        self.members = students.members()

    def attach(self, engine: Workflow) -> None:
        if self.members:
            engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Workflow) -> None:
        for cohort, students in self.members.items():
            path = cohort_dir(self.ckpt_dir, cohort) / "best_networks.pt"
            checkpoint = load_checkpoint(path, {"students": students}, self.map_location)
            del checkpoint
            engine.logger.info("Loaded the %s cohort's students from %s.", cohort, path)
