"""Evaluation report of a tile classifier: ROC curves (tile and patient level), per-tile scores, a markdown summary."""

from __future__ import annotations

import csv
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import ignite.distributed as idist
from ignite.engine import Events

from monai_kdml.apps.msi.patients import PATIENT_KEY, PatientScoreOutput, patient_level_scores
from monai_kdml.data.csv_cells import escape_row
from monai_kdml.keys import ENSEMBLE, pred_key, split_cohort
from monai_kdml.metrics import compression_table, plot_roc_curves
from monai_kdml.metrics.classification import class_indices
from monai_kdml.metrics.history_analysis import ensemble_verdict_lines, ensemble_vs_best_student, read_history

if TYPE_CHECKING:
    from ignite.engine import Engine

__all__ = ["ClassificationReport"]

logger = logging.getLogger(__name__)

_COLUMNS = ("auc", "patient_auc", "acc", "bacc", "f1")


class ClassificationReport:
    """Collect every network's positive-class probability per tile during one evaluation and write, at the end:

    - ``tile_scores.csv``: path, patient, ``label`` (1 = the positive class), ``class`` (the tile's class name) and
      each network's positive-class probability;
    - ``patient_scores.csv``: the mean probability per patient for each network (the clinical end point);
    - ``roc_tiles.png`` and ``roc_patients.png``: ROC curves (positive class vs the rest) of the ensemble, the
      teacher and each student;
    - ``summary.md``: the metrics table (from ``engine.state.metrics``), the students' disagreement, the
      compression figures (parameters and MACs, teacher vs ensemble) and, given the training's ``history``, whether
      each ensemble beat its best single student on validation (is the ensemble worth deploying?).

    Args:
        output_dir: folder for the files.
        network_names: e.g. ``monai_kdml.keys.network_names(K)``.
        num_classes: classes of the logits.
        positive_class: the class scored (1 = MSI).
        class_names: name of each class, for the CSV and the summary; ``None``: the indices.
        patient_key: output key of the patient ids (``KDMLEvaluator(batch_keys=[patient_key])``).
        compression: a :func:`monai_kdml.metrics.compression_summary` dict, or ``None``.
        title: first heading of ``summary.md``.
        history: the training's ``metrics_history.csv`` (:class:`~monai_kdml.handlers.MetricsHistoryWriter`), or
            ``None``; a missing file leaves the validation verdict out.
        history_metric: the metric suffix the verdict compares (``"auc"``).
    """

    def __init__(
        self,
        output_dir: str | Path,
        network_names: Sequence[str],
        num_classes: int = 2,
        positive_class: int = 1,
        patient_key: str = PATIENT_KEY,
        compression: Mapping[str, Any] | None = None,
        title: str = "Evaluation",
        class_names: Sequence[str] | None = None,
        history: str | Path | None = None,
        history_metric: str = "auc",
    ) -> None:
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"`class_names` has {len(class_names)} names for `num_classes`={num_classes}.")
        self.output_dir = Path(output_dir)
        self.names = list(network_names)
        self.num_classes, self.positive_class = num_classes, positive_class
        self.class_names = (
            [str(c) for c in class_names] if class_names is not None else [str(c) for c in range(num_classes)]
        )
        self.transforms = {
            n: PatientScoreOutput(pred_key(n), num_classes, positive_class, patient_key) for n in self.names
        }
        self.compression = compression
        self.title = title
        self.history, self.history_metric = (None if history is None else Path(history)), history_metric
        self._rows: dict[str, list] = {}
        self._notes: dict[str, str | None] = {}  # why a level's AUC and ROC curve are missing

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def _reset(self, _engine: Engine) -> None:
        self._rows = {"path": [], "patient": [], "label": [], "class": [], **{n: [] for n in self.names}}

    def _collect(self, engine: Engine) -> None:
        for i, name in enumerate(self.names):
            tiles, patients, probs, labels = self.transforms[name](engine.state.output)
            if i == 0:
                self._rows["path"] += tiles if tiles is not None else [""] * len(patients)
                self._rows["patient"] += patients
                self._rows["label"] += labels.tolist()
                classes = class_indices(engine.state.output, self.transforms[name].label_key, self.num_classes)
                self._rows["class"] += [self.class_names[c] for c in classes.tolist()]
            self._rows[name] += probs.tolist()

    def __call__(self, engine: Engine) -> None:
        # per-rank lists joined on every rank (a collective: every rank must call it)
        rows: dict[str, list] = {k: _gather(v) for k, v in self._rows.items()}
        if idist.get_rank() != 0:
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        paths, labels = [str(p) for p in rows["path"]], rows["label"]
        patients = {n: patient_level_scores(rows["patient"], rows[n], labels) for n in self.names}
        self._write_tiles(paths, labels, rows)
        self._write_patients(patients)
        vs = f"{self.class_names[self.positive_class]} vs rest"
        others = [c for i, c in enumerate(self.class_names) if i != self.positive_class]
        pair = (others[0] if len(others) == 1 else "rest", self.class_names[self.positive_class])
        self._notes = {
            "tiles": _one_class_note(labels, pair, "tiles", "auc"),
            "patients": _one_class_note([r["label"] for r in patients[self.names[0]]], pair, "patients", "patient_auc"),
        }
        curves = {
            "tiles": {n: (labels, rows[n]) for n in self.names},
            "patients": {n: ([r["label"] for r in p], [r["probability"] for r in p]) for n, p in patients.items()},
        }
        titles = {"tiles": f"Tile level, {vs}", "patients": f"Patient level (mean tile probability), {vs}"}
        for level, note in self._notes.items():
            figure = self.output_dir / f"roc_{level}.png"
            if note is None:
                plot_roc_curves(curves[level], figure, titles[level], level, pair)
            else:
                figure.unlink(missing_ok=True)  # an earlier evaluation's, of other data
                logger.warning("%s: %s", self.output_dir, note)
        summary = self._summary(engine, len(paths), len(patients[self.names[0]]))
        (self.output_dir / "summary.md").write_text(summary)
        logger.info("Evaluation summary (%s):\n%s", self.output_dir / "summary.md", summary.rstrip())

    def _write_tiles(self, paths: list[str], labels: list, rows: dict) -> None:
        with (self.output_dir / "tile_scores.csv").open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["path", "patient_id", "label", "class", *(f"p_{n}" for n in self.names)])
            for i, path in enumerate(paths):
                probs = [f"{rows[n][i]:.6f}" for n in self.names]
                writer.writerow(escape_row([path, rows["patient"][i], labels[i], rows["class"][i], *probs]))

    def _write_patients(self, patients: dict[str, list[dict]]) -> None:
        first = patients[self.names[0]]
        with (self.output_dir / "patient_scores.csv").open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["patient_id", "num_tiles", "label", *(f"p_{n}" for n in self.names)])
            for i, row in enumerate(first):
                probs = [f"{patients[n][i]['probability']:.6f}" for n in self.names]
                writer.writerow(escape_row([row["patient_id"], row["num_tiles"], row.get("label", ""), *probs]))

    def _summary(self, engine: Engine, num_tiles: int, num_patients: int) -> str:
        metrics = engine.state.metrics
        positive = self.class_names[self.positive_class]
        classes = ", ".join(f"{name} ({i})" for i, name in enumerate(self.class_names))
        if self.num_classes == 2:
            scored = f"Positive class (ROC curves, patient_auc, f1, the CSVs' probabilities): {positive}."
        else:
            scored = (
                f"Positive class (ROC curves, patient_auc, the CSVs' probabilities): {positive}; auc, acc, bacc and "
                f"f1 are macro averages over the {self.num_classes} classes."
            )
        lines = [f"# {self.title}", "", f"{num_tiles} tiles from {num_patients} patients. Classes: {classes}.", scored]
        lines.append("")
        lines += ["| network | " + " | ".join(_COLUMNS) + " |", "|---|" + "---:|" * len(_COLUMNS)]
        for name in self.names:
            values = [metrics.get(f"{name}_{c}") for c in _COLUMNS]
            lines.append(f"| {name} | " + " | ".join("n/a" if v is None else f"{float(v):.3f}" for v in values) + " |")
        for key in [k for k in metrics if split_cohort(k)[1] == "disagreement"]:
            lines += ["", f"Students' disagreement{_of(key)} (mean total variation to their mean): {metrics[key]:.4f}"]
        if self.compression is not None:
            lines += ["", "## Compression", "", compression_table(dict(self.compression))]
        lines += [line for note in self._notes.values() if note is not None for line in ("", note)]
        lines += ["", *self._verdict()]
        rocs = ", ".join(f"`roc_{level}.png`" for level, note in self._notes.items() if note is None) or "none"
        lines += ["", f"ROC curves: {rocs}; `tile_scores.csv`, `patient_scores.csv`."]
        return "\n".join(lines) + "\n"

    def _verdict(self) -> list[str]:
        if self.history is None:
            return []
        with_ensemble = {c for c, n in map(split_cohort, self.names) if n == ENSEMBLE}
        cohorts = [c for c in dict.fromkeys(split_cohort(n)[0] for n in self.names) if c in with_ensemble and c] or None
        students = sum(1 for n in self.names if split_cohort(n)[1].startswith("student_")) // len(cohorts or [None])
        results = ensemble_vs_best_student(read_history(self.history), self.history_metric, cohorts)
        costs = "the Compression section" if self.compression is not None else None
        return ensemble_verdict_lines(results, self.history_metric.upper(), students, costs)


def _one_class_note(labels: Sequence[int], pair: tuple[str, str], level: str, metric: str) -> str | None:
    """Why a level's AUC is undefined (every tile or patient of one class), or ``None`` when it is defined."""
    present = sorted({int(label) for label in labels})
    if len(present) == 2:
        return None
    which = " and ".join(pair[label] for label in present) or "none"
    majority = " (a patient's label is the majority of its tiles')" if level == "patients" else ""
    return (
        f"{metric} is undefined (nan): all {len(labels)} {level} are {which}{majority}; an AUC needs {level} of both "
        f"classes, so `roc_{level}.png` is not drawn."
    )


def _of(key: str) -> str:
    cohort = split_cohort(key)[0]
    return "" if cohort is None else f" ({cohort})"


def _gather(values: list) -> list:
    if idist.get_world_size() == 1:
        return values
    # a list is gathered as an object: one list per rank, concatenated here in rank order
    return [v for part in cast(list[list], idist.all_gather(values)) for v in part]
