"""The two tasks an ablation runs through their bundles: what each scale overrides, which metrics are reported, and
how a finished run's evaluation folder becomes a small run summary (test metrics per cohort, the validation verdict
on the ensemble, bootstrap intervals over the test images).

A run folder is a bundle root: ``models/`` (with ``cohorts/<mode>/``), ``eval/metrics_history.csv`` (validation)
and ``eval/test/`` (the one evaluation pass over every cohort: ``metrics.csv``; ``tile_scores.csv`` and
``patient_scores.csv`` for MSI; ``frame_detections.json.gz`` for polyp).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from monai_kdml.experiments.stats import bootstrap, mean_std, roc_auc
from monai_kdml.keys import ENSEMBLE, cohort_key, student_name
from monai_kdml.metrics.history_analysis import ensemble_vs_best_student, read_history

__all__ = ["TASKS", "Scale", "Task", "collect_run", "read_metrics", "test_folder", "validation_best_student"]

REFERENCE = "kdml"
"""The mode every other mode is compared with (the method)."""


@dataclass(frozen=True)
class Scale:
    """Overrides of one scale: ``common`` go to training and evaluation (data, sizes), ``train`` to training only.

    Values may contain ``{data}``, replaced by the data root (``--data-root``) when a run is built.
    """

    description: str
    common: Mapping[str, Any] = field(default_factory=dict)
    train: Mapping[str, Any] = field(default_factory=dict)
    presets: tuple[str, ...] = ()
    external_test: Mapping[str, Any] | None = None
    """MSI only: arguments of :func:`monai_kdml.apps.msi.demo.ensure_msi_demo` for an external test cohort of fresh
    synthetic patients, generated once per grid and scored with ``--test_dir``."""


@dataclass(frozen=True)
class Task:
    """One bundle of the repository and how its runs are read.

    Attributes:
        name: the bundle's folder under ``bundles/``.
        metrics: metric suffixes reported per network, in table order.
        labels: display names of the metrics.
        selection_metric: the suffix model selection uses (``ensemble_<it>``).
        scales: named scales.
        variants: named ways of keeping the students diverse (training overrides), ``base`` = none.
        bootstrap: ``f(run_dir, cohorts, num_students, resamples, seed) -> {name: interval}``.
    """

    name: str
    metrics: tuple[str, ...]
    labels: Mapping[str, str]
    selection_metric: str
    scales: Mapping[str, Scale]
    variants: Mapping[str, Mapping[str, Any]]
    bootstrap: Callable[[Path, Sequence[str], int, int, int], dict[str, dict[str, float]]]


def test_folder(run_dir: str | Path) -> Path:
    """The run's test evaluation: ``eval/test`` (the data set's test split) or the ``eval/external_*`` folder an
    external cohort (``--test_dir``) was last scored into."""
    run_dir = Path(run_dir)
    external = sorted((run_dir / "eval").glob("external_*"))
    if not (run_dir / "eval" / "test").is_dir() and external:
        # the newest scoring: a run resumed in a copied folder scores the cohort at its new path into a new folder
        return max(external, key=lambda p: (p / "metrics.csv").stat().st_mtime if (p / "metrics.csv").is_file() else 0)
    return run_dir / "eval" / "test"


def read_metrics(path: str | Path) -> dict[str, float]:
    """MONAI ``MetricsSaver``'s ``metrics.csv`` (``name,value`` lines) as floats."""
    out: dict[str, float] = {}
    with Path(path).open(newline="") as f:
        for row in csv.reader(f):
            if len(row) >= 2:
                try:
                    out[row[0]] = float(row[1])
                except ValueError:
                    continue
    return out


def _diff_names(cohorts: Sequence[str]) -> list[str]:
    return [c for c in cohorts if c != REFERENCE] if REFERENCE in cohorts else []


def _add_differences(values: dict[str, float], cohorts: Sequence[str], metrics: Sequence[str]) -> dict[str, float]:
    """Add ``kdml-<other>/<role>_<metric>`` for every other cohort (computed on the same resample)."""
    for other in _diff_names(cohorts):
        for role in (ENSEMBLE, "mean_student"):
            for m in metrics:
                a, b = values.get(f"{REFERENCE}/{role}_{m}"), values.get(f"{other}/{role}_{m}")
                if a is not None and b is not None:
                    values[f"{REFERENCE}-{other}/{role}_{m}"] = a - b
    return values


# ---------------------------------------------------------------- MSI
def _read_scores(path: Path) -> tuple[list[dict[str, str]], list[str]]:
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        return list(reader), list(reader.fieldnames or [])


def _msi_bootstrap(
    run_dir: Path, cohorts: Sequence[str], num_students: int, resamples: int, seed: int
) -> dict[str, dict[str, float]]:
    """Tile AUC and patient AUC over resampled patients (tiles of one patient are not independent: a tile bootstrap
    gives intervals ~2.5x too narrow), for each cohort's ensemble, mean student and the teacher, and the paired
    differences of ``kdml`` against every other cohort."""
    out: dict[str, dict[str, float]] = {}
    for file, metric in (("tile_scores.csv", "auc"), ("patient_scores.csv", "patient_auc")):
        path = test_folder(run_dir) / file
        if not path.is_file():
            continue
        rows, _ = _read_scores(path)
        rows = [r for r in rows if r.get("label") not in (None, "")]
        labels = np.asarray([int(float(r["label"])) for r in rows])

        def column(name: str, rows: list[dict[str, str]] = rows) -> np.ndarray:
            return np.asarray([float(r[f"p_{name}"]) for r in rows])

        scores = {TEACHER_NAME: column(TEACHER_NAME)}
        for c in cohorts:
            scores[cohort_key(c, ENSEMBLE)] = column(cohort_key(c, ENSEMBLE))
            for k in range(num_students):
                scores[cohort_key(c, student_name(k))] = column(cohort_key(c, student_name(k)))

        def statistic(idx: np.ndarray, labels: np.ndarray = labels, scores: dict = scores, metric: str = metric):
            y = labels[idx]
            values = {f"{TEACHER_NAME}_{metric}": roc_auc(y, scores[TEACHER_NAME][idx])}
            for c in cohorts:
                values[f"{c}/{ENSEMBLE}_{metric}"] = roc_auc(y, scores[cohort_key(c, ENSEMBLE)][idx])
                aucs = [roc_auc(y, scores[cohort_key(c, student_name(k))][idx]) for k in range(num_students)]
                values[f"{c}/mean_student_{metric}"] = float(np.mean(aucs))
            return _add_differences(values, cohorts, [metric])

        groups = [r.get("patient") or r.get("path") for r in rows] if metric == "auc" else None
        out.update(bootstrap(statistic, len(rows), resamples, seed, groups=groups))
    return out


TEACHER_NAME = "teacher"

MSI = Task(
    name="msi",
    metrics=("auc", "patient_auc", "acc", "bacc", "f1"),
    labels={"auc": "tile AUC", "patient_auc": "patient AUC", "acc": "accuracy", "bacc": "bal. accuracy", "f1": "F1"},
    selection_metric="auc",
    scales={
        "tiny": Scale(
            "tests: 8 demo patients x 4 tiles, 32 px, 2 epochs, no warm-up; external test: 8 fresh patients x 4 tiles",
            common={"demo_patients": 8, "demo_tiles_per_patient": 4, "image_size": 32, "batch_size": 8},
            train={"max_epochs": 2, "warmup_epochs": 0},
            presets=("demo",),
            external_test={
                "num_patients": 8,
                "tiles_per_patient": 4,
                "tile_size": 32,
                "seed": 1000,
                "test_fraction": 0.75,
            },
        ),
        "teacher": Scale(
            "the demo run (64 px, batch 32, 14 epochs) on 64 synthetic patients x 20 tiles with 45 % of the training "
            "patients for validation (22 patients), scored on an external cohort of 108 fresh patients x 20 tiles",
            common={"demo_patients": 64, "val_fraction": 0.45},
            presets=("demo",),
            external_test={"num_patients": 120, "tiles_per_patient": 20, "seed": 1000, "test_fraction": 0.9},
        ),
        "cpu": Scale(
            "the bundle's demo run: 48 synthetic patients x 20 tiles, 64 px, batch 32, 14 epochs (2-core CPU)",
            presets=("demo",),
        ),
        "full": Scale(
            "real tiles (give --set dataset_dir=...), the bundle's cuda/cpu profile: 224 px, 40 epochs",
            presets=("resnet50-resnet18",),
        ),
    },
    variants={
        "base": {},
        "views": {"student_views": True},
        "mixed": {"student_network": ["resnet10_slim", "densenet_small"]},
    },
    bootstrap=_msi_bootstrap,
)


# ---------------------------------------------------------------- polyp
POLYP_BOOTSTRAP = ("map", "ap50", "sens_1fp")


def _polyp_bootstrap(
    run_dir: Path, cohorts: Sequence[str], num_students: int, resamples: int, seed: int
) -> dict[str, dict[str, float]]:
    """mAP, AP50 and sensitivity at 1 FP per frame over resampled test frames, for each cohort's ensemble, mean
    student and the teacher, and the paired differences of ``kdml`` against every other cohort."""
    from monai_kdml.apps.polyp.evaluation import FRAME_DETECTIONS, frame_matches, read_frame_detections

    path = test_folder(run_dir) / FRAME_DETECTIONS
    if not path.is_file():
        return {}
    content = read_frame_detections(path)
    names = [TEACHER_NAME] + [
        cohort_key(c, n) for c in cohorts for n in [ENSEMBLE] + [student_name(k) for k in range(num_students)]
    ]
    matched = {n: frame_matches(content, n) for n in names}

    def values_of(name: str, idx: np.ndarray) -> dict[str, float]:
        metric, matches = matched[name]
        raw = metric.values([matches[i] for i in idx])
        return {m: raw[f"{name}_{m}"] for m in POLYP_BOOTSTRAP}

    def statistic(idx: np.ndarray) -> dict[str, float]:
        values = {f"{TEACHER_NAME}_{m}": v for m, v in values_of(TEACHER_NAME, idx).items()}
        for c in cohorts:
            values.update({f"{c}/{ENSEMBLE}_{m}": v for m, v in values_of(cohort_key(c, ENSEMBLE), idx).items()})
            students = [values_of(cohort_key(c, student_name(k)), idx) for k in range(num_students)]
            for m in POLYP_BOOTSTRAP:
                values[f"{c}/mean_student_{m}"] = float(np.mean([s[m] for s in students]))
        return _add_differences(values, cohorts, list(POLYP_BOOTSTRAP))

    return bootstrap(statistic, len(content["frames"]), resamples, seed)


POLYP = Task(
    name="polyp",
    metrics=("map", "ap50", "sens_0.5fp", "sens_1fp", "sens_2fp"),
    labels={
        "map": "mAP@[.5:.95]",
        "ap50": "AP50",
        "sens_0.5fp": "sens @0.5 FP",
        "sens_1fp": "sens @1 FP",
        "sens_2fp": "sens @2 FP",
    },
    selection_metric="map",
    scales={
        "tiny": Scale(
            "tests: 16 synthetic frames at 80 px resized to 64 px, tiny detectors, 2 epochs, no warm-up",
            common={"demo_images": 16, "demo_image_size": 80, "image_size": 64, "batch_size": 4},
            train={"max_epochs": 2, "warmup_epochs": 0},
            presets=("tiny",),
        ),
        "cpu": Scale(
            "Kvasir-SEG ({data}/kvasir-seg, all 824 frames), seeded 80/10/10 split by image id, 'cpu' detectors at "
            "96 px, 8 epochs, batch 8, KD/ML warm-up 1 epoch",
            common={"dataset_dir": "{data}/kvasir-seg", "image_size": 96},
            train={"max_epochs": 8, "warmup_epochs": 1},
            presets=("cpu",),
        ),
        "teacher": Scale(
            "Kvasir-SEG ({data}/kvasir-seg, all 824 frames), seeded 80/10/10 split by image id, 'cpu' detectors at "
            "96 px, 4 epochs, batch 8, KD/ML warm-up 1 epoch",
            common={"dataset_dir": "{data}/kvasir-seg", "image_size": 96},
            train={"max_epochs": 4, "warmup_epochs": 1},
            presets=("cpu",),
        ),
        "full": Scale(
            "Kvasir-SEG ({data}/kvasir-seg), the bundle's defaults for the preset (gpu: 512 px, 24 epochs)",
            common={"dataset_dir": "{data}/kvasir-seg"},
            presets=("gpu",),
        ),
    },
    variants={
        "base": {},
        "views": {"student_views": True},
        "mixed": {"student_backbone": ["resnet10", "resnet18"]},
    },
    bootstrap=_polyp_bootstrap,
)

TASKS: dict[str, Task] = {"msi": MSI, "polyp": POLYP}
"""The tasks by name."""


def validation_best_student(
    history: Sequence[Mapping[str, Any]], metric: str, cohort: str | None, num_students: int
) -> int | None:
    """The one student with the best validation ``metric`` at the epoch model selection kept (the epoch of the
    cohort's best validation ensemble metric): the student a user would deploy alone. ``None`` without a history."""
    ens = cohort_key(cohort, f"{ENSEMBLE}_{metric}")
    rows = [r for r in history if _num(r.get(ens)) is not None]
    if not rows:
        return None
    best_epoch = max(rows, key=lambda r: _num(r[ens]) or -math.inf)  # first of ties: what the saver kept
    values = [_num(best_epoch.get(cohort_key(cohort, f"{student_name(k)}_{metric}"))) for k in range(num_students)]
    scored = [(v, -k) for k, v in enumerate(values) if v is not None]
    return -max(scored)[1] if scored else None


def _num(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def collect_run(
    task: Task, run_dir: str | Path, cohorts: Sequence[str], resamples: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """The summary of one finished cohort run: test metrics of every network of every cohort, with the best and the
    mean single student; the teacher; each cohort's students' disagreement; the validation verdict on each ensemble
    against its best student; bootstrap intervals over the test images (``resamples = 0``: none).

    Raises:
        FileNotFoundError: the run has no evaluation (``eval/test/metrics.csv``) or no record.
    """
    import json

    run_dir = Path(run_dir)
    metrics = read_metrics(test_folder(run_dir) / "metrics.csv")
    record = json.loads((run_dir / "models" / "network.json").read_text())
    num_students = int(record["num_students"])
    test: dict[str, Any] = {}
    for c in cohorts:
        students = [
            {m: metrics.get(f"{cohort_key(c, student_name(k))}_{m}", math.nan) for m in task.metrics}
            for k in range(num_students)
        ]
        test[c] = {
            ENSEMBLE: {m: metrics.get(f"{cohort_key(c, ENSEMBLE)}_{m}", math.nan) for m in task.metrics},
            "students": students,
            "oracle_student": {m: max(s[m] for s in students) for m in task.metrics},
            "mean_student": {m: mean_std([s[m] for s in students])[0] for m in task.metrics},
            "disagreement": metrics.get(cohort_key(c, "disagreement")),
        }
        wbf = {m: metrics.get(f"{cohort_key(c, 'wbf')}_{m}") for m in task.metrics}
        if all(v is not None for v in wbf.values()):
            test[c]["wbf"] = wbf
    history = read_history(run_dir / "eval" / "metrics_history.csv")
    verdict = ensemble_vs_best_student(history, task.selection_metric, cohorts)
    for c in cohorts:
        k = validation_best_student(history, task.selection_metric, c, num_students)
        test[c]["best_student_index"] = k
        test[c]["best_student"] = test[c]["students"][k] if k is not None else {m: math.nan for m in task.metrics}
    return {
        "num_students": num_students,
        "record": record,
        "test": test,
        "teacher": {m: metrics.get(f"{TEACHER_NAME}_{m}", math.nan) for m in task.metrics},
        "validation": {str(v["cohort"]): v for v in verdict},
        "bootstrap": task.bootstrap(run_dir, cohorts, num_students, resamples, seed) if resamples > 0 else {},
    }
