"""Metrics of one validation pass over the teacher, each student and the student ensemble.

- :mod:`~monai_kdml.metrics.classification`: AUC, accuracy, balanced accuracy, F1 and named output transforms.
- :mod:`~monai_kdml.metrics.patient`: patient-level aggregation and AUC (tile classifiers).
- :mod:`~monai_kdml.metrics.disagreement`: how much the students disagree.
- :mod:`~monai_kdml.metrics.detection`: COCO mAP/AP/AR and FROC sensitivities for box detectors.
- :mod:`~monai_kdml.metrics.compression`: parameters and MACs, teacher vs ensemble.
- :mod:`~monai_kdml.metrics.roc`: ROC curve points and plots.
"""

from __future__ import annotations

from monai_kdml.metrics.classification import (
    ClassIndexOutput,
    PredictionOutput,
    ProbabilityOutput,
    StudentLogitsOutput,
    TileScoreOutput,
    classification_metrics,
    stack_output,
)
from monai_kdml.metrics.compression import compression_summary, compression_table, count_macs, count_parameters
from monai_kdml.metrics.detection import DetectionMetrics, DetectionOutput, detection_metrics
from monai_kdml.metrics.disagreement import StudentDisagreement, student_disagreement
from monai_kdml.metrics.patient import TCGA_PATIENT_PATTERN, PatientAUC, patient_level_scores, tcga_patient_id
from monai_kdml.metrics.roc import plot_roc_curves, roc_curve_points

__all__ = [
    "TCGA_PATIENT_PATTERN",
    "ClassIndexOutput",
    "DetectionMetrics",
    "DetectionOutput",
    "PatientAUC",
    "PredictionOutput",
    "ProbabilityOutput",
    "StudentDisagreement",
    "StudentLogitsOutput",
    "TileScoreOutput",
    "classification_metrics",
    "compression_summary",
    "compression_table",
    "count_macs",
    "count_parameters",
    "detection_metrics",
    "patient_level_scores",
    "plot_roc_curves",
    "roc_curve_points",
    "stack_output",
    "student_disagreement",
    "tcga_patient_id",
]
