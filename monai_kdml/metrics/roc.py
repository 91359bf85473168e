"""ROC curves of binary scores and their plot (ensemble vs teacher vs students) for the evaluation report.

MONAI computes the area (:func:`monai.metrics.compute_roc_auc`) but not the curve, and scikit-learn is not a
dependency, so the operating points are computed here with numpy.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import cast

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from monai.metrics import compute_roc_auc
from numpy.typing import ArrayLike

__all__ = ["plot_roc_curves", "roc_curve_points"]


def _binary_inputs(y_true: ArrayLike, y_score: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(y_true).reshape(-1)
    scores = np.asarray(y_score, dtype=np.float64).reshape(-1)
    if labels.size != scores.size:
        raise ValueError(f"`y_true` has {labels.size} entries but `y_score` has {scores.size}.")
    if not np.isin(labels, (0, 1)).all() or np.unique(labels).size != 2:
        raise ValueError(f"`y_true` must hold both classes 0 and 1 and nothing else, got {np.unique(labels).tolist()}.")
    if not np.isfinite(scores).all():
        raise ValueError("`y_score` has NaN or infinite values.")
    return labels.astype(np.int64), scores


def roc_curve_points(y_true: ArrayLike, y_score: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Operating points of the ROC curve: one per distinct score, from (0, 0) to (1, 1).

    At threshold ``t`` a sample is called positive when ``score >= t``; tied scores move together, so the
    trapezoidal area under these points equals the Mann-Whitney AUC with ties counted as 1/2.

    Args:
        y_true: binary labels (0/1), shape (N,), both classes present.
        y_score: scores, higher meaning more positive, shape (N,).

    Returns:
        ``(fpr, tpr, thresholds)``, each of shape (T + 1,) for T distinct scores; ``thresholds[0]`` is ``inf``.

    Raises:
        ValueError: lengths differ, labels are not 0/1 with both present, or scores are not finite.
    """
    labels, scores = _binary_inputs(y_true, y_score)
    order = np.argsort(-scores, kind="mergesort")
    labels, scores = labels[order], scores[order]
    last_of_tie = np.r_[np.nonzero(np.diff(scores))[0], scores.size - 1]  # last index of each distinct score
    true_pos = np.cumsum(labels)[last_of_tie]
    false_pos = (last_of_tie + 1) - true_pos
    tpr = np.r_[0.0, true_pos / labels.sum()]
    fpr = np.r_[0.0, false_pos / (labels.size - labels.sum())]
    return fpr, tpr, np.r_[np.inf, scores[last_of_tie]]


def plot_roc_curves(curves: Mapping[str, tuple[ArrayLike, ArrayLike]], path: str | Path, title: str = "ROC") -> Path:
    """Plot one ROC curve per network into a PNG, with the AUC (MONAI ``compute_roc_auc``) in the legend.

    Args:
        curves: network name -> ``(y_true, y_score)``, e.g. ``{"ensemble": (labels, p_msi), "teacher": ...}``.
        path: output file (parent folders are created).
        title: plot title.

    Returns:
        The written path.

    Raises:
        ValueError: ``curves`` is empty or one of its inputs is invalid (see :func:`roc_curve_points`).
    """
    if not curves:
        raise ValueError("`curves` is empty: nothing to plot.")
    figure = Figure(figsize=(5, 5), dpi=120)
    FigureCanvasAgg(figure)  # Agg canvas attached to this figure only: no pyplot, no global backend switch
    axes = figure.add_subplot()
    axes.plot([0, 1], [0, 1], linestyle=":", color="grey", linewidth=1)
    for name, (y_true, y_score) in curves.items():
        fpr, tpr, _ = roc_curve_points(y_true, y_score)
        labels, scores = _binary_inputs(y_true, y_score)
        auc = cast(float, compute_roc_auc(torch.as_tensor(scores), torch.as_tensor(labels)))
        axes.plot(fpr, tpr, drawstyle="default", linewidth=1.5, label=f"{name} (AUC {auc:.3f})")
    axes.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="false positive rate", ylabel="true positive rate", title=title)
    axes.set_aspect("equal")
    axes.legend(loc="lower right", fontsize="small")
    figure.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out)
    return out
