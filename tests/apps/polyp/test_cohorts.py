"""Cohort runs of the polyp bundle: every mode's students with one teacher, equal to the single-mode run, one
evaluation pass with per-cohort box fusion and per-frame detections that reproduce the metrics; mixed backbones and
per-student views through training, evaluation and inference."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from monai_kdml.apps.polyp import frame_matches, read_frame_detections
from monai_kdml.experiments.tasks import read_metrics

TINY = {"preset": "tiny", "image_size": 64, "demo_images": 16, "demo_image_size": 80, "batch_size": 4}
RUN = {**TINY, "max_epochs": 2, "warmup_epochs": 0}
MODES = ["independent", "kdml"]

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def cohort_run(polyp_bundle, module_tmp) -> Path:
    root = module_tmp("polyp_cohorts")
    polyp_bundle.workflow("train.json", "train", bundle_root=str(root), cohorts=MODES, **RUN)
    return root


def students_of(root: Path) -> list[dict[str, torch.Tensor]]:
    return torch.load(root / "models" / "checkpoint_final.pt", weights_only=True)["students"]


def test_the_kdml_cohort_equals_the_single_mode_run(polyp_bundle, cohort_run: Path, tmp_path: Path) -> None:
    polyp_bundle.workflow("train.json", "train", bundle_root=str(tmp_path), mode="kdml", **RUN)
    cohorts, single = students_of(cohort_run), students_of(tmp_path)
    assert len(cohorts) == 4
    for k in range(2):
        assert all(torch.equal(cohorts[2 + k][n], v) for n, v in single[k].items()), k
    for mode in MODES:
        assert (cohort_run / "models" / "cohorts" / mode / "model.pt").is_file()


def test_evaluation_scores_every_cohort_and_keeps_per_frame_detections(polyp_bundle, cohort_run: Path) -> None:
    polyp_bundle.workflow(["train.json", "evaluate.json"], "infer", bundle_root=str(cohort_run), **TINY)
    test = cohort_run / "eval" / "test"
    summary = (test / "summary.md").read_text()
    for mode in MODES:
        assert f"| {mode}/ensemble |" in summary and f"| {mode}/wbf |" in summary
    assert "Is the ensemble worth deploying? (validation)" in summary
    # the per-frame file reproduces the evaluation's metrics exactly, so AP can be bootstrapped over frames
    content = read_frame_detections(test)
    metrics = read_metrics(test / "metrics.csv")
    for name in ("teacher", "kdml/ensemble", "independent/student_1"):
        metric, matches = frame_matches(content, name)
        values = metric.values(matches)
        for key in (f"{name}_map", f"{name}_ap50", f"{name}_sens_1fp"):
            assert values[key] == pytest.approx(metrics[key], abs=1e-3) or (
                np.isnan(values[key]) and np.isnan(metrics[key])
            )


def test_mixed_backbones_and_views(polyp_bundle, tmp_path: Path) -> None:
    overrides = {"student_backbone": ["resnet10", "resnet18"], "student_views": True}
    polyp_bundle.workflow("train.json", "train", bundle_root=str(tmp_path), cohorts=MODES, **RUN, **overrides)
    record = json.loads((tmp_path / "models" / "network.json").read_text())
    assert record["student_backbone"] == ["resnet10", "resnet18"] and record["cohorts"] == MODES
    cohort_record = json.loads((tmp_path / "models" / "cohorts" / "independent" / "network.json").read_text())
    assert cohort_record["student_backbone"] == ["resnet10", "resnet18"]
    students = students_of(tmp_path)
    assert len(students[1]) > len(students[0])  # ResNet18 has more layers than ResNet10
    polyp_bundle.workflow(["train.json", "evaluate.json"], "infer", bundle_root=str(tmp_path), **TINY)
    frames = tmp_path / "frames"
    frames.mkdir()
    for src in sorted((next((tmp_path / ".cache").glob("polyp_demo_*")) / "images").iterdir())[:2]:
        (frames / src.name).write_bytes(src.read_bytes())
    out = tmp_path / "pred"
    polyp_bundle.workflow("inference.json", "infer", bundle_root=str(tmp_path), dataset_dir=str(frames),
                          output_dir=str(out))  # fmt: skip
    assert len(json.loads((out / "predictions.json").read_text())) == 2
