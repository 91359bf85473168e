"""Metrics of one validation pass over the teacher, each student and the student ensemble.

- :mod:`~monai_kdml.metrics.classification`: AUC, accuracy, balanced accuracy, F1 and named output transforms.
- :mod:`~monai_kdml.metrics.disagreement`: how much the students disagree.
- :mod:`~monai_kdml.metrics.compression`: parameters and MACs, teacher vs ensemble.
- :mod:`~monai_kdml.metrics.roc`: ROC curve points and plots.
- :mod:`~monai_kdml.metrics.history_analysis`: a finished validation history read back; ensemble vs best student.

Task metrics live with their app: patient-level AUC in :mod:`monai_kdml.apps.msi`, COCO/FROC in
:mod:`monai_kdml.apps.polyp`.
"""

from __future__ import annotations

from monai_kdml.metrics.classification import (
    ClassIndexOutput,
    PredictionOutput,
    ProbabilityOutput,
    StudentLogitsOutput,
    classification_metrics,
    stack_output,
)
from monai_kdml.metrics.compression import (
    compression_summary,
    compression_table,
    count_macs,
    count_parameters,
    measure_latency,
)
from monai_kdml.metrics.disagreement import StudentDisagreement, student_disagreement
from monai_kdml.metrics.history_analysis import (
    TIE_MARGIN,
    ensemble_verdict_lines,
    ensemble_vs_best_student,
    read_history,
)
from monai_kdml.metrics.roc import plot_roc_curves, roc_curve_points, roc_figure

__all__ = [
    "TIE_MARGIN",
    "ClassIndexOutput",
    "PredictionOutput",
    "ProbabilityOutput",
    "StudentDisagreement",
    "StudentLogitsOutput",
    "classification_metrics",
    "compression_summary",
    "compression_table",
    "count_macs",
    "count_parameters",
    "ensemble_verdict_lines",
    "ensemble_vs_best_student",
    "measure_latency",
    "plot_roc_curves",
    "read_history",
    "roc_curve_points",
    "roc_figure",
    "stack_output",
    "student_disagreement",
]
