"""How long will a grid take? An estimate from committed run summaries, before anything runs.

Per task, the reference is the committed cohort runs at the ``cpu`` scale (``<results>/*/<task>/**/seed*.json``: every
mode's cohort, an online teacher): the median training seconds per epoch, the median evaluation and summary seconds.
A run of a protocol trains fewer or cheaper networks; its training time is scaled by the share of training compute
(multiply-accumulates of one forward and backward pass, from the reference grid's ``costs.json``; a frozen teacher
only runs forward, counted as one third) and by the ratio of epochs. This ignores data-size changes between scales
and machine load beyond what the reference runs saw (they ran on the same shared 2-core machine).
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from monai_kdml.experiments.protocols import PROTOCOLS, GridDefinition, protocol_cohorts
from monai_kdml.experiments.tasks import TASKS

__all__ = ["Reference", "estimate_grid", "format_estimate", "load_reference"]

REFERENCE_EPOCHS = {"msi": 14, "polyp": 8}
"""Epochs of the reference runs when their summary does not list them (the bundles' CPU profiles)."""
BUNDLE_EPOCHS = {"msi": 14, "polyp": 24}


@dataclass(frozen=True)
class Reference:
    """Timing of one task's reference runs (seconds) and its networks' training cost (MACs)."""

    epoch_s: float
    evaluate_s: float
    summary_s: float
    teacher_macs: float
    student_macs: float
    students: int
    runs: int
    cohorts: int


def load_reference(results_dir: str | Path, task: str) -> Reference | None:
    """The reference of ``task`` from committed summaries at the ``cpu`` scale without a protocol, or ``None``."""
    runs: list[dict[str, Any]] = []
    costs: dict[str, dict[str, float]] = {}
    for path in sorted(Path(results_dir).glob(f"*/{task}/**/seed*.json")):
        summary = json.loads(path.read_text())
        if summary.get("scale") == "cpu" and summary.get("protocol") is None:
            runs.append(summary)
            found = next((p / "costs.json" for p in path.parents if (p / "costs.json").is_file()), None)
            costs = json.loads(found.read_text()) if found is not None and not costs else costs
    if not runs:
        return None
    epochs = [len(r.get("epoch_seconds") or []) or r["overrides"]["train"].get("max_epochs") or REFERENCE_EPOCHS[task]
              for r in runs]  # fmt: skip
    cost: dict[str, float] = next(iter(costs.values()), {})
    k = int(runs[0]["num_students"])
    return Reference(
        epoch_s=statistics.median(r["seconds"]["train"] / e for r, e in zip(runs, epochs, strict=True)),
        evaluate_s=statistics.median(r["seconds"]["evaluate"] for r in runs),
        summary_s=statistics.median(r["seconds"].get("summary", 0.0) for r in runs),
        teacher_macs=float(cost.get("teacher_macs", 1.0)),
        student_macs=float(cost.get("ensemble_macs", k)) / k,
        students=k * len(runs[0]["modes"]),
        runs=len(runs),
        cohorts=len(runs[0]["modes"]),
    )


def _share(ref: Reference, teacher: float, students: int) -> float:
    """Training compute relative to the reference (teacher weight 1 when trained, 1/3 when only run forward)."""
    return (teacher * ref.teacher_macs + students * ref.student_macs) / (
        ref.teacher_macs + ref.students * ref.student_macs
    )


def estimate_grid(
    definition: GridDefinition, results_dir: str | Path, num_students: int = 2
) -> dict[str, dict[str, Any]]:
    """Estimated seconds of every kind of run in ``definition``, per task.

    Returns:
        ``{task: {"runs": {label: {"count", "seconds"}}, "total_s", "reference_runs"}}``; a task without reference
        summaries has ``total_s`` ``nan``.
    """
    out: dict[str, dict[str, Any]] = {}
    for task in definition.tasks:
        ref = load_reference(results_dir, task)
        scale = TASKS[task].scales[definition.scale]
        epochs = int(scale.train.get("max_epochs", BUNDLE_EPOCHS[task] if task == "polyp" else REFERENCE_EPOCHS[task]))
        kinds: dict[str, dict[str, float]] = {}
        total = 0.0
        for protocol in definition.protocols:
            modes = definition.modes_of(task)
            cohorts = protocol_cohorts(protocol, modes)
            frozen = PROTOCOLS[protocol].two_stage
            count = len(definition.seeds)
            if ref is None:
                kinds[protocol] = {"count": count, "seconds": float("nan")}
                continue
            train = ref.epoch_s * epochs * _share(ref, 1 / 3 if frozen else 1.0, num_students * len(cohorts))
            # evaluation and the bootstrap summary scale with the cohorts scored (the reference scored 4)
            seconds = train + (ref.evaluate_s + ref.summary_s) * len(cohorts) / ref.cohorts
            kinds[protocol] = {"count": count, "seconds": seconds}
            total += count * seconds
            if frozen:
                teacher = ref.epoch_s * epochs * _share(ref, 1.0, 1)
                kinds[f"{protocol}: teacher alone"] = {"count": count, "seconds": teacher}
                total += count * teacher
        out[task] = {"runs": kinds, "total_s": total if ref is not None else float("nan"),
                     "reference_runs": ref.runs if ref else 0, "epochs": epochs}  # fmt: skip
    return out


def format_estimate(name: str, definition: GridDefinition, estimate: Mapping[str, Mapping[str, Any]]) -> str:
    """The estimate as lines for the terminal and the docs."""
    lines = [f"Grid {name}: {definition.description}.", f"Seeds {list(definition.seeds)}; protocols "
             f"{list(definition.protocols)}; modes {dict((t, list(definition.modes_of(t))) for t in definition.tasks)} "
             "(only kd/kdml re-run per protocol)."]  # fmt: skip
    total = 0.0
    for task, est in estimate.items():
        lines.append(f"  {task} ({est['epochs']} epochs; reference: {est['reference_runs']} committed cpu-scale runs):")
        for label, kind in est["runs"].items():
            lines.append(f"    {label:<22} {kind['count']} x {kind['seconds'] / 60:5.1f} min")
        if est["reference_runs"] == 0:
            lines.append("    no committed cpu-scale summaries of this task found (give --results-dir): no estimate")
        lines.append(f"    total {est['total_s'] / 3600:.1f} h")
        total += est["total_s"]
    lines.append(f"  all tasks: {total / 3600:.1f} h of 2-core CPU (budget {definition.budget_hours:.0f} h).")
    return "\n".join(lines)
