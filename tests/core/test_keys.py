"""Output keys and metric names parse back into what built them: the parsers in ``keys.py`` are written from the same
constants as the builders, for single-mode and cohort runs and teacher ensembles."""

from __future__ import annotations

import pytest

from monai_kdml.keys import (
    ENSEMBLE,
    is_loss_key,
    loss_key,
    network_names,
    pred_key,
    split_cohort,
    split_loss_key,
    split_metric_key,
    student_index,
    student_name,
    term_key,
)
from monai_kdml.metrics.history_analysis import ensemble_vs_best_student

RUNS = {
    "single": network_names(3, teacher_members=2),
    "cohorts": network_names(2, cohorts=["kd", "kdml"]),
}


@pytest.mark.parametrize("run", sorted(RUNS))
def test_every_key_a_builder_makes_parses_back(run: str) -> None:
    names = RUNS[run]
    trained = [n for n in names if split_cohort(n)[1] != ENSEMBLE]
    for network in trained:
        for term in ("ce", "kd", "ml", "kd_cls", "ml_box"):
            assert split_loss_key(term_key(term, network)) == (term, network)
            assert is_loss_key(term_key(term, network))
        assert split_loss_key(loss_key(network)) == ("loss", network)
        assert is_loss_key(loss_key(network))
    for network in names:
        assert split_loss_key(pred_key(network)) is None and not is_loss_key(pred_key(network))
        for metric in ("auc", "patient_auc", "sens_1fp"):
            assert split_metric_key(f"{network}_{metric}") == (network, metric)
    assert is_loss_key("loss") and is_loss_key("kd/loss") and split_loss_key("kd/loss") is None
    assert split_metric_key("disagreement") == (None, "disagreement")


def test_student_index_reads_student_name() -> None:
    assert [student_index(student_name(k)) for k in (0, 7, 12)] == [0, 7, 12]
    assert student_index("teacher_1") is None and student_index("student_x") is None


def test_ensemble_verdict_finds_each_cohorts_students_by_the_parsers() -> None:
    rows = [
        {"epoch": 1.0, "kd/ensemble_auc": 0.8, "kd/student_0_auc": 0.7, "kd/student_10_auc": 0.75,
         "kd/student_1_patient_auc": 0.99, "kdml/ensemble_auc": 0.6, "kdml/student_0_auc": 0.9},
    ]  # fmt: skip
    by_cohort = {r["cohort"]: r for r in ensemble_vs_best_student(rows, "auc", cohorts=["kd", "kdml"])}
    assert by_cohort["kd"]["student"] == "kd/student_10" and by_cohort["kd"]["ahead"] == 1
    assert by_cohort["kdml"]["student"] == "kdml/student_0" and by_cohort["kdml"]["ahead"] == 0
