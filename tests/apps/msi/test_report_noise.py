"""Log and report noise of issue 15, case 29: say things once, say why a figure is missing, call a tie a tie."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from ignite.engine import Engine
from monai.data import MetaTensor

from monai_kdml.apps.msi.patients import patient_level_scores
from monai_kdml.apps.msi.report import ClassificationReport
from monai_kdml.keys import pred_key
from monai_kdml.metrics.history_analysis import ensemble_verdict_lines


def _scored(patients: list[str], labels: list[int]) -> list[dict]:
    """One decollated evaluator output: the ensemble's logits, label, patient and image of each tile."""
    return [
        {
            pred_key("ensemble"): torch.tensor([0.0, float(i)]),
            "label": torch.tensor(label),
            "patient": patient,
            "image": MetaTensor(torch.zeros(1), meta={"filename_or_obj": f"tile_{i}.png"}),
        }
        for i, (patient, label) in enumerate(zip(patients, labels, strict=True))
    ]


def _evaluate(output_dir: Path, output: list[dict]) -> str:
    engine = Engine(lambda _engine, batch: batch)
    ClassificationReport(output_dir, ["ensemble"], class_names=["MSS", "MSI"]).attach(engine)
    engine.run([output], max_epochs=1)
    return (output_dir / "summary.md").read_text()


def test_an_external_cohort_of_one_class_says_why_patient_auc_and_its_roc_are_missing(tmp_path: Path, caplog) -> None:
    with caplog.at_level(logging.WARNING):
        summary = _evaluate(tmp_path, _scored(["a", "a", "b", "c"], [0, 0, 0, 0]))
    note = "patient_auc is undefined (nan): all 3 patients are MSS"
    assert "auc is undefined (nan): all 4 tiles are MSS" in summary
    assert note in summary and "so `roc_patients.png` is not drawn" in summary and note in caplog.text
    assert not (tmp_path / "roc_patients.png").exists() and not (tmp_path / "roc_tiles.png").exists()
    assert "ROC curves: none; " in summary


def test_both_classes_draw_the_patient_roc_and_say_nothing_about_it(tmp_path: Path) -> None:
    summary = _evaluate(tmp_path, _scored(["a", "b", "c", "d"], [0, 1, 0, 1]))
    assert (tmp_path / "roc_patients.png").is_file() and "undefined" not in summary


def test_patients_with_mixed_labels_are_reported_once_however_often_they_are_scored(caplog) -> None:
    with caplog.at_level(logging.WARNING):
        for _ in range(4 * 5):  # teacher, 2 students and the ensemble, over 5 validations
            patient_level_scores(["mixed-x", "mixed-x", "y"], [0.2, 0.7, 0.5], [0, 1, 1])
    assert caplog.text.count("patient(s) have tiles with different labels") == 1


def test_a_margin_within_the_stated_tie_margin_is_a_tie_and_the_costs_are_pointed_to_where_they_are() -> None:
    result = {"cohort": None, "epoch": 3, "ensemble": 0.9004, "best_student": 0.9, "student": "student_1"}
    tie = ensemble_verdict_lines([{**result, "margin": 0.0004, "ahead": 2, "validations": 5}], "AUC", 2, costs=None)
    (row,) = [line for line in tie if line.startswith("| - |")]
    assert row.endswith("| +0.0004 | 2 of 5 | tie (within ±0.005): best student alone is as good (cheaper) |")
    assert "(see" not in "\n".join(tie) and "a margin within ±0.005 is called a tie" in "\n".join(tie)
    ahead = ensemble_verdict_lines([{**result, "margin": 0.02, "ahead": 5, "validations": 5}], "mAP", 2, "the GMACs")
    (row,) = [line for line in ahead if line.startswith("| - |")]
    assert row.endswith("| ensemble ahead |") and "(see the GMACs)" in "\n".join(ahead)
