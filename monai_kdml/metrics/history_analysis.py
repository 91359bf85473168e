"""What a finished validation history says: the rows of a :class:`~monai_kdml.handlers.MetricsHistoryWriter` CSV read
back, whether each student ensemble beat its best single student, and that verdict as Markdown for the reports."""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path

from monai_kdml.keys import ENSEMBLE, cohort_key, split_cohort, split_metric_key, student_index

__all__ = ["TIE_MARGIN", "ensemble_verdict_lines", "ensemble_vs_best_student", "read_history"]


def read_history(path: str | Path) -> list[dict[str, float]]:
    """The rows of a :class:`~monai_kdml.handlers.MetricsHistoryWriter` CSV as floats (empty or unreadable cells are
    NaN); ``[]`` when there is no file."""
    path = Path(path)
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return [{k: _float(v) for k, v in row.items() if k} for row in csv.DictReader(f)]


def _float(value: str | None) -> float:
    try:
        return float(value) if value not in (None, "") else math.nan
    except ValueError:
        return math.nan


def _student_of(column: str, cohort: str | None, metric: str) -> int | None:
    """``k`` when ``column`` is ``metric`` of student ``k`` of ``cohort`` (``None``: single-mode), else ``None``."""
    network, name = split_metric_key(column)
    if network is None or name != metric:
        return None
    network_cohort, network_name = split_cohort(network)
    return student_index(network_name) if network_cohort == cohort else None


def ensemble_vs_best_student(
    rows: Sequence[dict[str, float]], metric: str, cohorts: Sequence[str] | None = None, higher_is_better: bool = True
) -> list[dict[str, object]]:
    """From the validation history, whether each ensemble beats its best single student.

    For each cohort (one entry, ``cohort=None``, in a single-mode run): the epoch where ``<ensemble>_<metric>`` was
    best (the one model selection keeps when it selects by that metric), the ensemble's value there, the best of its
    students' values at that epoch and which student, the margin (ensemble - best student; > 0 means the ensemble is
    ahead, for a lower-is-better metric the sign is flipped), and in how many validations the ensemble was ahead of
    every student.

    Args:
        rows: :func:`read_history` rows.
        metric: the metric suffix, e.g. ``"auc"`` or ``"map"``.
        cohorts: the cohorts of a cohort run, or ``None``.
        higher_is_better: the metric's direction.

    Returns:
        One dict per cohort: ``cohort``, ``epoch``, ``ensemble``, ``best_student``, ``student``, ``margin``,
        ``ahead`` (validations won), ``validations``; ``[]`` when the history lacks the ensemble's column.
    """
    sign = 1.0 if higher_is_better else -1.0
    results: list[dict[str, object]] = []
    groups: list[str | None] = list(cohorts) if cohorts else [None]
    for cohort in groups:
        ens_col = f"{cohort_key(cohort, ENSEMBLE)}_{metric}"
        found = {k: c for r in rows for c in r if (k := _student_of(c, cohort, metric)) is not None}
        student_cols = [found[k] for k in sorted(found)]
        valid = [r for r in rows if not math.isnan(r.get(ens_col, math.nan))]
        if not valid or not student_cols:
            continue
        best = max(valid, key=lambda r: sign * r[ens_col])
        values = {c: best.get(c, math.nan) for c in student_cols}
        top = max(values, key=lambda c: sign * values[c] if not math.isnan(values[c]) else -math.inf)
        ahead = sum(1 for r in valid if all(sign * (r[ens_col] - r.get(c, math.nan)) > 0 for c in student_cols))
        results.append(
            {
                "cohort": cohort,
                "epoch": int(best.get("epoch", 0)),
                "ensemble": best[ens_col],
                "best_student": values[top],
                "student": top[: -len(metric) - 1],
                "margin": sign * (best[ens_col] - values[top]),
                "ahead": ahead,
                "validations": len(valid),
            }
        )
    return results


TIE_MARGIN = 0.005
"""Validation margins (ensemble - best student) within this are called a tie: a few thousandths are what another seed
changes, so they are no reason to deploy K students instead of one."""


def ensemble_verdict_lines(
    results: Sequence[dict[str, object]],
    metric: str,
    num_students: int,
    costs: str | None = "the Compression section",
    tie_margin: float = TIE_MARGIN,
) -> list[str]:
    """Markdown of :func:`ensemble_vs_best_student`: a heading, a table (one row per cohort) and what it means.

    Args:
        results: :func:`ensemble_vs_best_student`.
        metric: the metric's name as shown.
        num_students: students per ensemble.
        costs: where the report gives the networks' costs (e.g. ``"the params_M and GMACs columns"``); ``None``: the
            report has none, and the text points nowhere.
        tie_margin: the ensemble is called ahead only when its margin is larger than this.
    """
    if not results:
        return []
    lines = [
        "## Is the ensemble worth deploying? (validation)",
        "",
        f"From `metrics_history.csv`: at the epoch of the ensemble's best validation {metric} (the one model selection "
        f"keeps), the ensemble of {num_students} students against its best single student at that epoch, and in how "
        "many validations the ensemble was ahead of every student.",
        "",
        f"| cohort | epoch | ensemble {metric} | best student | margin | ensemble ahead | verdict |",
        "|---|---:|---:|---|---:|---:|---|",
    ]
    for r in results:
        margin = float(r["margin"])  # type: ignore[arg-type]
        if margin > tie_margin:
            verdict = "ensemble ahead"
        elif margin >= -tie_margin:
            verdict = f"tie (within ±{tie_margin:g}): best student alone is as good (cheaper)"
        else:
            verdict = "best student alone is better (and cheaper)"
        lines.append(
            f"| {r['cohort'] or '-'} | {r['epoch']} | {float(r['ensemble']):.4f} | {r['student']} "  # type: ignore[arg-type]
            f"{float(r['best_student']):.4f} | {margin:+.4f} | {r['ahead']} of {r['validations']} | {verdict} |"  # type: ignore[arg-type]
        )
    where = f" (see {costs})" if costs else ""
    lines += [
        "",
        f"The ensemble costs {num_students} students' parameters and MACs{where}; where it is not ahead on validation, "
        "deploying its best student alone gives the same accuracy at 1/K of the cost. Validation margins of a few "
        f"thousandths are within what another seed changes, so a margin within ±{tie_margin:g} is called a tie.",
        "",
    ]
    return lines
