"""Slide-level outputs of the MSI app: slide scores, the heatmap, the per-slide and per-patient tables, and (given a
labels CSV) slide- and patient-level AUCs with bootstrap intervals and ROC figures.

Score of a slide (``score``), from the positive-class probabilities of its tissue tiles:

- ``"mean"`` (default): the mean tile probability, as Kather et al. 2019 scored patients;
- ``"median"``: the median tile probability (robust to a few confident outlier tiles);
- ``"top_k"``: the mean of the highest ``top_k_fraction`` of the tile probabilities (at least one tile), for a
  signal that may sit in a small part of the tumour;
- ``"positive_fraction"``: the fraction of tiles whose probability is at least 0.5.

A patient's score is the same statistic over the tiles of all its slides.
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from monai_kdml.apps.msi.classes import TileClasses
from monai_kdml.experiments.stats import bootstrap, roc_auc
from monai_kdml.metrics import plot_roc_curves

__all__ = ["SCORES", "read_slide_labels", "slide_auc_report", "slide_score", "write_heatmap", "write_table"]

logger = logging.getLogger(__name__)

SCORES = ("mean", "median", "top_k", "positive_fraction")
"""The slide scores (module docstring)."""


def slide_score(probabilities: Sequence[float] | np.ndarray, score: str = "mean", top_k_fraction: float = 0.1) -> float:
    """Aggregate tile probabilities into one score (see the module docstring); ``nan`` for no tiles.

    Raises:
        ValueError: an unknown ``score`` or a ``top_k_fraction`` outside (0, 1].
    """
    if score not in SCORES:
        raise ValueError(f"`score` must be one of {', '.join(SCORES)}, got {score!r}.")
    if not 0.0 < top_k_fraction <= 1.0:
        raise ValueError(f"`top_k_fraction` must be in (0, 1], got {top_k_fraction}.")
    p = np.asarray(probabilities, dtype=np.float64).reshape(-1)
    if p.size == 0:
        return math.nan
    if score == "median":
        return float(np.median(p))
    if score == "top_k":
        k = max(1, math.ceil(top_k_fraction * p.size))
        return float(np.sort(p)[-k:].mean())
    if score == "positive_fraction":
        return float((p >= 0.5).mean())
    return float(p.mean())


def write_heatmap(
    path: str | Path,
    thumbnail: np.ndarray,
    grid: tuple[int, int],
    step_fraction: tuple[float, float],
    cells: Sequence[tuple[int, int, float]],
    title: str,
    label: str = "probability",
) -> Path:
    """The tile probabilities over the slide's thumbnail, with a colour bar.

    Args:
        path: the PNG.
        thumbnail: ``(h, w, 3)`` uint8.
        grid: ``(rows, cols)`` of the tile grid.
        step_fraction: a tile's side as a fraction of the slide's height and width.
        cells: ``(row, col, probability)`` of every scored tile; the others stay transparent.
        title: the figure's title (the slide and its score).
        label: the colour bar's label.
    """
    heat = np.full(grid, np.nan)
    for r, c, p in cells:
        heat[r, c] = p
    h, w = thumbnail.shape[:2]
    extent = (0.0, grid[1] * step_fraction[1] * w, grid[0] * step_fraction[0] * h, 0.0)
    figure = Figure(figsize=(6.0, 6.0 * h / max(w, 1) + 0.6), dpi=120)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.imshow(thumbnail, extent=(0, w, h, 0))
    image = axes.imshow(heat, cmap="coolwarm", vmin=0.0, vmax=1.0, alpha=0.55, extent=extent, interpolation="nearest")
    axes.set(xlim=(0, w), ylim=(h, 0), xticks=[], yticks=[])
    axes.set_title(title, fontsize="medium")
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04, label=label)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    return path


def write_table(path: str | Path, rows: Sequence[Mapping[str, Any]], fields: Sequence[str]) -> Path:
    """Write ``rows`` as a CSV with the columns ``fields`` (floats with 6 decimals)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(fields), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: f"{v:.6f}" if isinstance(v, float) else v for k, v in row.items()})
    return path


def read_slide_labels(path: str | Path, classes: TileClasses) -> dict[str, int]:
    """``slide -> 1 (positive class) / 0`` from a CSV ``slide,label[,patient]``; a label is a class name, an alias
    or an index (as in training's label CSVs). Slide names are file names without the suffix.

    Raises:
        ValueError: a missing file or column, or a label no class accepts, naming the file, the row and the label.
    """
    from monai_kdml.apps.msi.slides import slide_name

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"`labels` CSV {path} does not exist.")
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        if not {"slide", "label"} <= set(reader.fieldnames or []):
            raise ValueError(f"{path}: needs the columns `slide` and `label`, has {reader.fieldnames}.")
        labels = {}
        for line, row in enumerate(reader, start=2):
            text = (row["label"] or "").strip()
            index = int(text) if text.isdigit() else classes.label_of(text)
            if index is None or not 0 <= index < classes.num_classes:
                raise ValueError(f"{path}, line {line}: label {text!r} is not one of {list(classes.names)}.")
            labels[slide_name(row["slide"].strip())] = int(index == classes.positive)
    return labels


def _auc_with_interval(labels: list[int], scores: list[float], num_resamples: int, seed: int) -> dict[str, float]:
    y, s = np.asarray(labels), np.asarray(scores)
    result = bootstrap(lambda i: {"auc": roc_auc(y[i], s[i])}, len(y), num_resamples, seed)["auc"]
    return {"auc": result["estimate"], "low": result["low"], "high": result["high"], "n": len(y), "n_pos": int(y.sum())}


def slide_auc_report(
    output_dir: str | Path,
    rows: Sequence[Mapping[str, Any]],
    patients: Sequence[Mapping[str, Any]],
    classes: TileClasses,
    num_resamples: int = 1000,
    seed: int = 0,
) -> list[str]:
    """Slide- and patient-level AUC with 95 % percentile-bootstrap intervals, and their ROC figures.

    Args:
        output_dir: folder of ``roc_slides.png`` and ``roc_patients.png``.
        rows: per-slide rows with ``score`` and ``label`` (rows without a label or a score are left out).
        patients: per-patient rows with ``score`` and ``label``.
        classes: the trained classes (names of the ROC axes).
        num_resamples: bootstrap resamples.
        seed: seed of the resampling.

    Returns:
        Markdown lines for the summary (one per level with both classes present).
    """
    others = [n for i, n in enumerate(classes.names) if i != classes.positive]
    pair = (others[0] if len(others) == 1 else "rest", classes.positive_name)
    lines = []
    for unit, table in (("slides", rows), ("patients", patients)):
        scored = [r for r in table if r.get("label") in (0, 1) and math.isfinite(float(r.get("score", math.nan)))]
        labels, scores = [int(r["label"]) for r in scored], [float(r["score"]) for r in scored]
        if len(set(labels)) < 2:
            lines.append(f"- {unit}: AUC needs labelled {unit} of both classes ({len(scored)} labelled).")
            continue
        auc = _auc_with_interval(labels, scores, num_resamples, seed)
        plot_roc_curves({"ensemble": (labels, scores)}, Path(output_dir) / f"roc_{unit}.png", f"{unit}", unit, pair)
        lines.append(
            f"- {unit}: AUC {auc['auc']:.3f} (95 % bootstrap interval {auc['low']:.3f}-{auc['high']:.3f}, "
            f"{num_resamples} resamples), {auc['n_pos']} {pair[1]} of {auc['n']}; `roc_{unit}.png`"
        )
    return lines
