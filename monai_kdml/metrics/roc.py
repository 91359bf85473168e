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

__all__ = ["plot_roc_curves", "roc_curve_points", "roc_figure"]


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


_STYLES = ("-", "--", "-.", ":")
_MARKERS = ("o", "s", "^", "D", "v", "P", "X")


def roc_figure(
    curves: Mapping[str, tuple[ArrayLike, ArrayLike]],
    title: str = "ROC",
    unit: str = "samples",
    classes: tuple[str, str] = ("negative", "positive"),
) -> Figure:
    """The ROC figure of :func:`plot_roc_curves` (an Agg ``Figure``, no pyplot state)."""
    if not curves:
        raise ValueError("`curves` is empty: nothing to plot.")
    figure = Figure(figsize=(5, 5.4), dpi=120)
    FigureCanvasAgg(figure)  # Agg canvas attached to this figure only: no pyplot, no global backend switch
    axes = figure.add_subplot()
    axes.plot([0, 1], [0, 1], linestyle=":", color="grey", linewidth=1)
    points: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    counts = set()
    for i, (name, (y_true, y_score)) in enumerate(curves.items()):
        fpr, tpr, _ = roc_curve_points(y_true, y_score)
        labels, scores = _binary_inputs(y_true, y_score)
        counts.add((int(labels.sum()), int(labels.size - labels.sum())))
        auc = cast(float, compute_roc_auc(torch.as_tensor(scores), torch.as_tensor(labels)))
        points[name] = (fpr, tpr)
        # wider lines first, each with its own dash and marker, so curves on top of each other stay visible
        axes.plot(
            fpr, tpr, linestyle=_STYLES[i % len(_STYLES)], marker=_MARKERS[i % len(_MARKERS)], markersize=4,
            markevery=max(1, len(fpr) // 12), linewidth=max(1.0, 3.2 - 0.5 * i), alpha=0.85,
            label=f"{name} (AUC {auc:.3f})",
        )  # fmt: skip
    axes.set(xlim=(-0.01, 1), ylim=(0, 1.01), xlabel="false positive rate", ylabel="true positive rate")
    axes.set_title(f"{title}\n{_counts_text(counts, unit, classes)}", fontsize="medium")
    axes.set_aspect("equal")
    axes.legend(loc="lower right", fontsize="small")
    overlaps = _identical(points)
    if overlaps:
        note = "curves overlap exactly: " + "; ".join(" = ".join(group) for group in overlaps)
        figure.text(0.5, 0.01, note, ha="center", va="bottom", fontsize="x-small", wrap=True)
    figure.tight_layout(rect=(0, 0.04 if overlaps else 0, 1, 1))
    return figure


def _counts_text(counts: set[tuple[int, int]], unit: str, classes: tuple[str, str]) -> str:
    """``"n = 12 patients (5 MSI, 7 MSS)"``; several counts (curves of different inputs) are all listed."""
    texts = [f"n = {p + n} {unit} ({p} {classes[1]}, {n} {classes[0]})" for p, n in sorted(counts)]
    return "; ".join(texts)


def _identical(points: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> list[list[str]]:
    """Groups of two or more curves with exactly the same operating points."""
    groups: list[list[str]] = []
    for name, (fpr, tpr) in points.items():
        for group in groups:
            other = points[group[0]]
            if other[0].shape == fpr.shape and np.array_equal(other[0], fpr) and np.array_equal(other[1], tpr):
                group.append(name)
                break
        else:
            groups.append([name])
    return [g for g in groups if len(g) > 1]


def plot_roc_curves(
    curves: Mapping[str, tuple[ArrayLike, ArrayLike]],
    path: str | Path,
    title: str = "ROC",
    unit: str = "samples",
    classes: tuple[str, str] = ("negative", "positive"),
) -> Path:
    """Plot one ROC curve per network into a PNG, with the AUC (MONAI ``compute_roc_auc``) in the legend.

    The title says how many samples of each class the curves rest on (a patient-level curve of 12 patients is
    coarse); each curve has its own dash pattern, marker and width, and curves that coincide exactly are named in a
    note below the plot, so none hides behind another.

    Args:
        curves: network name -> ``(y_true, y_score)``, e.g. ``{"ensemble": (labels, p_msi), "teacher": ...}``.
        path: output file (parent folders are created).
        title: plot title.
        unit: what one sample is, e.g. ``"tiles"`` or ``"patients"``.
        classes: names of class 0 and class 1, e.g. ``("MSS", "MSI")``.

    Returns:
        The written path.

    Raises:
        ValueError: ``curves`` is empty or one of its inputs is invalid (see :func:`roc_curve_points`).
    """
    figure = roc_figure(curves, title, unit, classes)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out)
    return out
