"""Experiments over the bundles: the KD + ML ablation (grid runner, run and grid summaries, statistics).

``python -m monai_kdml.experiments.ablation --help``; from an installed package give ``--bundles <folder>``.
"""

from monai_kdml.experiments.stats import (
    bootstrap,
    mean_std,
    min_detectable_difference,
    paired_differences,
    paired_t_interval,
    percentile_interval,
    roc_auc,
)

__all__ = [
    "bootstrap",
    "mean_std",
    "min_detectable_difference",
    "paired_differences",
    "paired_t_interval",
    "percentile_interval",
    "roc_auc",
]
