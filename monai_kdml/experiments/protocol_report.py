"""The mode x protocol part of a grid report (issue 17): the protocol chosen on validation, the test tables with
intervals over seeds, the headline paired comparisons and the training-time cost of each protocol.

The decision rule was written down before any protocol other than today's had a finished run, and it never reads a
test split: the default protocol is the one whose ``kdml`` cohort (the deployed student ensemble) has the highest mean
validation ensemble key metric over the seeds, the same metric and epoch that model selection keeps
(:func:`validation_winner`).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from monai_kdml.experiments.protocols import PROTOCOLS
from monai_kdml.experiments.stats import min_detectable_difference, paired_differences, paired_t_interval
from monai_kdml.experiments.tasks import REFERENCE, Task
from monai_kdml.keys import ENSEMBLE, Mode

__all__ = ["TODAY", "protocol_section", "seed_values", "validation_winner"]

TODAY = "today"
"""The protocol of the bundles' defaults before issue 17."""
COMPARISON_COLUMNS = ("mean", "95 % t-interval", "p", "positive", "detectable")
COST_COLUMNS = ("protocol", "cohorts trained", "s / epoch", "training (min)", "teacher stage (min)")


def _test_value(run: Mapping[str, Any], mode: str, metric: str) -> float:
    value = run["test"].get(mode, {}).get(ENSEMBLE, {}).get(metric)
    return math.nan if value is None else float(value)


def _validation_value(run: Mapping[str, Any], mode: str, metric: str) -> float:
    """The ensemble's best validation key metric (the epoch model selection kept); ``metric`` is the key metric."""
    value = run.get("validation", {}).get(mode, {}).get(ENSEMBLE)
    return math.nan if value is None else float(value)


def _teacher_value(run: Mapping[str, Any], metric: str) -> float:
    return float(run["teacher"].get(metric, math.nan))


def seed_values(
    runs: Sequence[Mapping[str, Any]], protocol: str, mode: str, metric: str, split: str = "test"
) -> tuple[dict[object, float], bool]:
    """Per-seed ensemble ``metric`` of ``mode`` under ``protocol`` on ``split`` (``test`` or ``validation``). Modes a
    protocol does not re-run (``independent``, ``ml``: they never read the teacher) come from today's run of the same
    seed, bit for bit what they would be.

    Returns:
        ``(values by seed, borrowed from today's runs)``.
    """
    value = _validation_value if split == "validation" else _test_value
    own = {r["seed"]: value(r, mode, metric) for r in runs if r.get("protocol") == protocol and mode in r["modes"]}
    if own:
        return own, False
    return {r["seed"]: value(r, mode, metric) for r in runs if r.get("protocol") == TODAY and mode in r["modes"]}, True


def _ordered(names: set[str], order: Sequence[str]) -> list[str]:
    """``names`` in ``order``, unknown names last (sorted)."""
    return sorted(names, key=lambda n: (order.index(n) if n in order else len(order), n))


def _protocols(runs: Sequence[Mapping[str, Any]]) -> list[str]:
    return _ordered({str(r["protocol"]) for r in runs if r.get("protocol")}, list(PROTOCOLS))


def _modes(runs: Sequence[Mapping[str, Any]]) -> list[str]:
    return _ordered({str(mode) for r in runs for mode in r["modes"]}, [str(m) for m in Mode])


def _interval(values: Sequence[float], digits: int = 3) -> str:
    """``mean [95 % t-interval of the mean over seeds]``."""
    t = paired_t_interval(values)
    if not math.isfinite(t["mean"]):
        return "-"
    if not math.isfinite(t["low"]):
        return f"{t['mean']:.{digits}f}"
    return f"{t['mean']:.{digits}f} [{t['low']:.{digits}f}, {t['high']:.{digits}f}]"


def validation_winner(task: Task, runs: Sequence[Mapping[str, Any]]) -> tuple[str | None, dict[str, float]]:
    """The protocol whose ``kdml`` ensemble has the highest mean validation key metric over seeds (only protocols
    with every seed of the grid count; first of ties in grid order).

    Returns:
        ``(winner or None, {protocol: mean validation metric})``.
    """
    seeds = {r["seed"] for r in runs}
    means: dict[str, float] = {}
    for p in _protocols(runs):
        values, _ = seed_values(runs, p, REFERENCE, task.selection_metric, "validation")
        finite = [v for v in values.values() if math.isfinite(v)]
        if finite and set(values) == seeds:
            means[p] = float(sum(finite) / len(finite))
    if not means:
        return None, means
    return max(means, key=lambda p: means[p]), means


def _comparisons(
    runs: Sequence[Mapping[str, Any]], metric: str, split: str
) -> list[tuple[str, Mapping[object, float], Mapping[object, float]]]:
    protocols, modes = _protocols(runs), _modes(runs)
    out: list[tuple[str, Mapping[object, float], Mapping[object, float]]] = []
    for p in protocols:
        ref, _ = seed_values(runs, p, REFERENCE, metric, split)
        for other in [x for x in modes if x != REFERENCE]:
            out.append((f"{p}: kdml - {other}", ref, seed_values(runs, p, other, metric, split)[0]))
    for p in [x for x in protocols if x != TODAY]:
        for mode in [x for x in ("kd", "kdml") if x in modes]:
            out.append((f"{mode}: {p} - today", seed_values(runs, p, mode, metric, split)[0],
                        seed_values(runs, TODAY, mode, metric, split)[0]))  # fmt: skip
    return out


def _comparison_rows(comparisons: Sequence[tuple[str, Mapping[object, float], Mapping[object, float]]]) -> list:
    rows = []
    for name, first, second in comparisons:
        d = paired_differences(first, second)
        t = paired_t_interval(d["differences"])  # type: ignore[arg-type]
        mdd = min_detectable_difference(float(d["std"]), len(d["differences"]))  # type: ignore[arg-type]
        rows.append([name, f"{t['mean']:+.4f}", f"[{t['low']:+.4f}, {t['high']:+.4f}]", f"{t['p']:.3f}",
                     f"{d['positive']}/{t['n']}", f"{mdd:.4f}"])  # fmt: skip
    return rows


def _mode_table(runs: Sequence[Mapping[str, Any]], task: Task, split: str) -> list[list[str]]:
    metric = task.selection_metric
    rows = []
    for p in _protocols(runs):
        row = [p]
        for mode in _modes(runs):
            values, borrowed = seed_values(runs, p, mode, metric, split)
            row.append(_interval(list(values.values())) + (" (today's)" if borrowed and p != TODAY else ""))
        if split == "test":
            row.append(_interval([_teacher_value(r, metric) for r in runs if r.get("protocol") == p]))
        rows.append(row)
    return rows


def _cost_rows(runs: Sequence[Mapping[str, Any]]) -> list[list[str]]:
    """Per protocol: the cohorts a run trains, median seconds per training epoch, training and teacher-stage wall."""
    rows = []
    for p in _protocols(runs):
        mine = [r for r in runs if r.get("protocol") == p]
        epochs = [float(s) for r in mine for s in r.get("epoch_seconds", [])]
        train = [float(r["seconds"]["train"]) for r in mine]
        stage = [float(r["seconds"].get("teacher_stage", 0.0)) for r in mine]
        rows.append([
            p, ", ".join(mine[0]["modes"]), f"{statistics.median(epochs):.1f}" if epochs else "-",
            f"{statistics.median(train) / 60:.1f}", f"{statistics.median(stage) / 60:.1f}" if any(stage) else "-",
        ])  # fmt: skip
    return rows


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def protocol_section(task: Task, runs: Sequence[Mapping[str, Any]]) -> list[str]:
    """The markdown lines of the mode x protocol report; none when no run has a protocol."""
    protocols = _protocols(runs)
    if not protocols:
        return []
    m, label = task.selection_metric, task.labels[task.selection_metric]
    modes = _modes(runs)
    winner, means = validation_winner(task, runs)
    incomplete = [p for p in protocols if p not in means]
    choice = (
        f"**Chosen on validation: `{winner}`** (mean validation kdml ensemble {label}: "
        + ", ".join(f"{p} {v:.4f}" for p, v in means.items()) + ")."
        if winner else "No protocol has every seed yet: no choice."
    )  # fmt: skip
    if winner and incomplete:
        choice += f" Provisional: {', '.join(incomplete)} still miss seeds and could not be chosen."
    val_comparisons = [c for c in _comparisons(runs, m, "validation") if c[0].startswith("kdml: ")]
    test_comparisons = _comparisons(runs, m, "test")
    k = len(test_comparisons)
    return [
        f"## Which protocol? Chosen on validation (ensemble {label} at the epoch model selection kept)",
        "",
        "Rule (written before any non-today run finished): the default is the protocol whose `kdml` ensemble has the "
        "highest mean validation key metric over the seeds. No test number enters the choice. Mean [95 % t-interval "
        "over seeds].",
        "",
        *_table(["protocol", *modes], _mode_table(runs, task, "validation")),
        "",
        choice,
        "",
        *_table(["validation comparison", *COMPARISON_COLUMNS], _comparison_rows(val_comparisons)),
        "",
        f"## Mode x protocol: ensemble {label} on test (mean [95 % t-interval over seeds])",
        "",
        *_table(["protocol", *modes, "teacher"], _mode_table(runs, task, "test")),
        "",
        "Modes a protocol does not re-run (they never read the teacher) are today's runs of the same seeds.",
        "",
        f"## Headline comparisons on test ({k} comparisons; paired over seeds)",
        "",
        "Mean paired difference, 95 % paired t-interval over seeds, two-sided p, seeds with a positive difference, and "
        "the smallest difference this design detects (80 % power, alpha 0.05, from the spread of that difference over "
        f"seeds). No multiplicity correction: with {k} comparisons, p < {0.05 / max(k, 1):.4f} is the Bonferroni bar. "
        "Per-run bootstrap intervals (by patient / frame) are in the tables below.",
        "",
        *_table(["comparison", *COMPARISON_COLUMNS], _comparison_rows(test_comparisons)),
        "",
        "## Training time of each protocol (this grid's runs; medians over seeds)",
        "",
        "A run trains the teacher and the cohorts listed; `ramp` and `gate` change only loss weights, so their cost "
        "per iteration is today's for the same cohorts; `frozen` adds the teacher-alone stage and saves the teacher's "
        "backward pass in the cohort run. Runs shared the machine with another run (one thread each).",
        "",
        *_table(COST_COLUMNS, _cost_rows(runs)),
        "",
    ]
