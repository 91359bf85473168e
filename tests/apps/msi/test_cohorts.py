"""Cohort runs of the MSI bundle: every mode in one run, equal to the single-mode runs, one evaluation pass, resume;
the diversity options (per-student views, mixed architectures) through training, evaluation and inference."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

TINY = ["--demo_patients", "8", "--demo_tiles_per_patient", "4", "--image_size", "32", "--batch_size", "8"]
# no warm-up: KD and ML act from the first iteration, so two epochs separate the modes
RUN = [*TINY, "--max_epochs", "2", "--warmup_epochs", "0"]
COHORTS = "['independent','kd','ml','kdml']"
MODES = ["independent", "kd", "ml", "kdml"]


@pytest.fixture(scope="module")
def cohort_run(msi_bundle, module_tmp: Callable[[str], Path]) -> Path:
    root = module_tmp("msi_cohorts")
    msi_bundle.cli("--bundle_root", str(root), *RUN, "--cohorts", COHORTS)
    return root


def final_students(root: Path) -> list[dict[str, torch.Tensor]]:
    return torch.load(root / "models" / "checkpoint_final.pt", weights_only=True)["students"]


def test_cohort_run_writes_every_cohort(cohort_run: Path) -> None:
    models = cohort_run / "models"
    record = json.loads((models / "network.json").read_text())
    assert record["cohorts"] == MODES and record["mode"] == "kdml" and record["num_students"] == 2
    assert len(final_students(cohort_run)) == 8
    for mode in MODES:
        folder = models / "cohorts" / mode
        cohort_record = json.loads((folder / "network.json").read_text())
        assert cohort_record["mode"] == mode and cohort_record["cohorts"] is None
        best = torch.load(folder / "best_networks.pt", weights_only=True)
        assert set(best) == {"teacher", "students"} and len(best["students"]) == 2
        ensemble = torch.load(folder / "model.pt", weights_only=True)
        assert any(k.startswith("students.1.") for k in ensemble) and not any(
            k.startswith("students.2.") for k in ensemble
        )
    with (cohort_run / "eval" / "metrics_history.csv").open() as f:
        row = list(csv.DictReader(f))[-1]
    for mode in MODES:
        for net in ("student_0", "student_1", "ensemble"):
            assert 0.0 <= float(row[f"{mode}/{net}_auc"]) <= 1.0
        assert f"{mode}/disagreement" in row and f"{mode}/ensemble_patient_auc" in row
    assert "teacher_auc" in row and "ensemble_auc" not in row
    # each cohort's selection is saved in the training checkpoint, for resume
    selection = torch.load(models / "checkpoint_final.pt", weights_only=True)["model_selection"]
    assert selection["key_metric_name"] == "kdml/ensemble_auc"
    assert set(selection["metrics"]) == {f"{m}/ensemble_auc" for m in MODES}


def test_each_cohort_equals_its_single_mode_bundle_run(msi_bundle, cohort_run: Path, tmp_path: Path) -> None:
    """Same seed: same initial students (copied per cohort), same batches and augmentations, so the kd cohort's
    weights equal a `--mode kd` run's bit for bit (and the cohorts did train differently)."""
    msi_bundle.cli("--bundle_root", str(tmp_path), *RUN, "--mode", "kd")
    cohorts, single = final_students(cohort_run), final_students(tmp_path)
    for k in range(2):
        assert all(torch.equal(cohorts[2 + k][n], v) for n, v in single[k].items()), k
    assert not all(torch.equal(cohorts[k][n], v) for k in range(2) for n, v in single[k].items())
    teacher = torch.load(tmp_path / "models" / "checkpoint_final.pt", weights_only=True)["teacher"]
    cohort_teacher = torch.load(cohort_run / "models" / "checkpoint_final.pt", weights_only=True)["teacher"]
    assert all(torch.equal(cohort_teacher[n], v) for n, v in teacher.items())


def test_one_evaluation_pass_scores_every_cohort(msi_bundle, cohort_run: Path) -> None:
    msi_bundle.cli("--bundle_root", str(cohort_run), *TINY, config=["train.json", "evaluate.json"])
    report = cohort_run / "eval" / "test"
    summary = (report / "summary.md").read_text()
    for mode in MODES:
        assert f"| {mode}/ensemble |" in summary and f"| {mode} | " in summary  # metrics row, verdict row
    assert "Is the ensemble worth deploying? (validation)" in summary
    with (report / "tile_scores.csv").open() as f:
        header = next(csv.reader(f))
    assert {"p_teacher", "p_kd/student_1", "p_kdml/ensemble"} <= set(header)


def test_one_cohort_folder_evaluates_as_a_single_mode_run(msi_bundle, cohort_run: Path, tmp_path: Path) -> None:
    ckpt = cohort_run / "models" / "cohorts" / "ml"
    msi_bundle.cli(
        "--bundle_root", str(cohort_run), "--ckpt_dir", str(ckpt), "--output_dir", str(tmp_path), *TINY,
        config=["train.json", "evaluate.json"],
    )  # fmt: skip
    summary = (tmp_path / "test" / "summary.md").read_text()
    assert "| ensemble |" in summary and "ml/" not in summary


def test_cohort_run_resumes(msi_bundle, cohort_run: Path) -> None:
    out = msi_bundle.cli("--bundle_root", str(cohort_run), *RUN[:-4], "--max_epochs", "3", "--warmup_epochs", "0",
                         "--cohorts", COHORTS, "--resume", "true")  # fmt: skip
    assert "Resuming from" in out.stdout + out.stderr
    state = torch.load(cohort_run / "models" / "checkpoint_final.pt", weights_only=True)
    assert state["trainer"]["iteration"] == 3 * state["trainer"]["epoch_length"] and len(state["students"]) == 8


def test_mode_must_be_a_cohort(msi_bundle, tmp_path: Path) -> None:
    out = msi_bundle.cli("--bundle_root", str(tmp_path), *RUN, "--cohorts", "['kd','ml']", check=False)
    assert out.returncode != 0 and "`mode`='kdml' must be one of `cohorts`" in out.stderr


def test_views_and_mixed_students_train_evaluate_and_infer(msi_bundle, tmp_path: Path) -> None:
    mixed = "['resnet10_slim','densenet_small']"
    msi_bundle.cli("--bundle_root", str(tmp_path), *RUN, "--cohorts", "['independent','kdml']",
                   "--student_views", "true", "--student_network", mixed)  # fmt: skip
    record = json.loads((tmp_path / "models" / "network.json").read_text())
    assert record["student_network"] == ["resnet10_slim", "densenet_small"]
    students = final_students(tmp_path)
    assert "features.conv0.weight" in students[1] and "conv1.weight" in students[0]  # DenseNet, ResNet
    msi_bundle.cli("--bundle_root", str(tmp_path), *TINY, config=["train.json", "evaluate.json"])
    assert "| kdml/ensemble |" in (tmp_path / "eval" / "test" / "summary.md").read_text()
    out_dir = tmp_path / "inference"
    msi_bundle.cli("--bundle_root", str(tmp_path), "--output_dir", str(out_dir), config="inference.json")
    with (out_dir / "tiles.csv").open() as f:
        assert len(list(csv.DictReader(f))) > 0
