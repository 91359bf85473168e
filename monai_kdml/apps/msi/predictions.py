"""Inference output of the deployed student ensemble: per-tile class probabilities and disagreement, per-patient
scores."""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from ignite.engine import Events
from monai.engines.utils import IterationEvents
from torch import nn
from torch.utils.hooks import RemovableHandle

from monai_kdml.apps.msi.patients import PATIENT_KEY, patient_level_scores
from monai_kdml.data.csv_cells import escape_rows
from monai_kdml.metrics import student_disagreement
from monai_kdml.networks.ensemble import StudentEnsemble

if TYPE_CHECKING:
    from ignite.engine import Engine

__all__ = ["TilePredictionWriter"]

logger = logging.getLogger(__name__)


class TilePredictionWriter:
    """Write ``tiles.csv`` and ``patients.csv`` after an inference run.

    ``tiles.csv``: ``path, patient_id, predicted`` (the most probable class's name), ``probability`` (of the
    positive class), ``p_<class>`` (one column per class, named by ``class_names``) and ``disagreement`` (the
    students'). ``patients.csv``: ``patient_id, num_tiles, probability, p_<class>...``, the means over a patient's
    tiles. The students' own logits are captured with forward hooks while the ensemble runs, so the disagreement
    costs no second forward pass.

    Args:
        output_dir: folder of the CSV files.
        ensemble: the :class:`~monai_kdml.networks.StudentEnsemble` the evaluator runs; ``None`` when it runs an
            exported file (ONNX Runtime), whose students are not visible: ``disagreement`` is then left empty.
        positive_class: class whose probability is the ``probability`` column (1 = MSI).
        patient_key: batch key of the datalist's patient ids.
        pred_key: output key of the ensemble's logits.
        class_names: name of each class (the trained ones, from the record); ``None``: the indices.

    Raises:
        ValueError: ``positive_class`` outside the classes of ``class_names``.
    """

    def __init__(
        self,
        output_dir: str | Path,
        ensemble: StudentEnsemble | None,
        positive_class: int = 1,
        patient_key: str = PATIENT_KEY,
        pred_key: str = "pred",
        class_names: Sequence[str] | None = None,
    ) -> None:
        self.class_names = [str(c) for c in class_names] if class_names is not None else None
        if self.class_names is not None and not 0 <= positive_class < len(self.class_names):
            raise ValueError(f"`positive_class` {positive_class} is not an index of `class_names` {self.class_names}.")
        self.output_dir = Path(output_dir)
        self.ensemble = ensemble
        self.positive_class = positive_class
        self.patient_key = patient_key
        self.pred_key = pred_key
        self._member_logits: list[torch.Tensor] = []
        self._hooks: list[RemovableHandle] = []
        self._rows: list[dict[str, Any]] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._start)
        engine.add_event_handler(IterationEvents.MODEL_COMPLETED, self._collect)
        engine.add_event_handler(Events.COMPLETED, self)

    def _start(self, _engine: Engine) -> None:
        self._rows.clear()
        self._member_logits.clear()
        students: list[nn.Module] = [] if self.ensemble is None else list(self.ensemble.students)
        self._hooks = [s.register_forward_hook(self._record) for s in students]

    def _record(self, _module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
        self._member_logits.append(output.detach())

    def _collect(self, engine: Engine) -> None:
        members, self._member_logits = self._member_logits, []
        output: Any = engine.state.output
        batch: Any = engine.state.batch  # decollated by MONAI at MODEL_COMPLETED, like the output
        items = output if isinstance(output, list) else [output]
        samples = batch if isinstance(batch, list) else [batch]
        disagreement = student_disagreement(members).reshape(-1).tolist() if members else [""] * len(items)
        for item, sample, d in zip(items, samples, disagreement, strict=True):
            probs = torch.softmax(torch.as_tensor(item[self.pred_key]).float().reshape(-1), dim=0).tolist()
            names = self.class_names or [str(c) for c in range(len(probs))]
            if len(names) != len(probs):
                raise ValueError(f"the ensemble gives {len(probs)} class probabilities for `class_names` {names}.")
            self._rows.append(
                {
                    "path": str(item["image"].meta["filename_or_obj"]),
                    "patient_id": str(sample.get(self.patient_key, "")),
                    "predicted": names[max(range(len(probs)), key=probs.__getitem__)],
                    "probability": probs[self.positive_class],
                    **{f"p_{name}": p for name, p in zip(names, probs, strict=True)},
                    "disagreement": d if d == "" else float(d),
                }
            )

    def __call__(self, _engine: Engine) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        ids = [r["patient_id"] for r in self._rows]
        patients = patient_level_scores(ids, [r["probability"] for r in self._rows])
        columns = [k for k in (self._rows[0] if self._rows else {}) if k.startswith("p_")]
        for column in columns:  # the mean of every class's probability, in the same (sorted) patient order
            for row, mean in zip(patients, patient_level_scores(ids, [r[column] for r in self._rows]), strict=True):
                row[column] = mean["probability"]
        with (self.output_dir / "tiles.csv").open("w", newline="") as f:
            fields = ["path", "patient_id", "predicted", "probability", *columns, "disagreement"]
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(escape_rows(self._rows))
        with (self.output_dir / "patients.csv").open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["patient_id", "num_tiles", "probability", *columns])
            writer.writeheader()
            writer.writerows(escape_rows(patients))
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        logger.info("Wrote %d tile and %d patient predictions to %s.", len(self._rows), len(patients), self.output_dir)
