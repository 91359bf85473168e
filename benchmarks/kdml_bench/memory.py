"""6. Memory: peak RSS of one ``KDMLTrainer`` step against each network trained alone, per preset and batch size.

Every configuration runs in its own guarded process (:mod:`kdml_bench.probes`): a step at batch 2 allocates the
optimizer state, then one step at the batch size; the peak is ``VmHWM`` (on CUDA: ``max_memory_allocated``).
Batches run small to large and stop at the first that exceeds the limit (default 12 GiB, lowered to what the
machine has available minus 2 GiB); the others are then estimated from a straight line through the measured peaks.
"All alone at once" is the teacher's peak plus K times a student's peak above the process baseline: every network's
memory held together, the floor a simultaneous step cannot go below.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from kdml_bench.config import Profile
from kdml_bench.probes import GIB, available_bytes, run_probe
from kdml_bench.report import Figure, SectionResult, Table

__all__ = ["memory_limit", "run"]

ROLES = ("kdml", "teacher", "student")


def memory_limit(profile: Profile) -> int:
    """The per-probe RSS limit in bytes: the profile's, or less when the machine has less available."""
    return int(min(profile.memory_limit_gib * GIB, available_bytes() - 2 * GIB))


def _cell(peak: float | None, estimate: float | None) -> str:
    if peak is not None:
        return f"{peak / GIB:.2f}"
    return "-" if estimate is None else f"(est. {estimate / GIB:.2f})"


def run(profile: Profile, device: torch.device) -> SectionResult:
    result = SectionResult()
    limit = memory_limit(profile)
    key = "cuda_peak" if device.type == "cuda" else "peak"
    rows: list[list[Any]] = []
    base: int | None = None
    for preset, size, batches in profile.memory_configs:
        measured = _measure(preset, size, batches, profile, device, limit)
        fits = _fits(measured, key)
        for batch in sorted(batches):
            res = measured.get(batch, {})
            peaks: dict[str, float | None] = {r: res[r][key] if r in res and res[r]["ok"] else None for r in ROLES}
            estimates = {r: fits[r][0] + fits[r][1] * batch if r in fits else None for r in ROLES}
            note = "; ".join(f"{r}: {res[r]['error']}" for r in ROLES if r in res and not res[r]["ok"])
            note = note if res else "not run: a smaller batch exceeded the limit"
            kdml, teacher, student = peaks["kdml"], peaks["teacher"], peaks["student"]
            if res and res["kdml"]["ok"]:
                base = res["kdml"]["base"]
            largest = all_at_once = None
            if kdml is not None and teacher is not None and student is not None:
                largest = max(teacher, student)
                floor = 0 if key == "cuda_peak" else res["kdml"]["base"]
                all_at_once = teacher + profile.num_students * (student - floor)
                result.figures.append(
                    Figure(
                        f"kdml step peak / largest network alone, {preset} {size}px b{batch}",
                        [kdml / largest],
                        note="peak memory incl. the process baseline; one probe each",
                    )
                )
            rows.append(
                [
                    preset,
                    size,
                    batch,
                    *[_cell(peaks[r], estimates[r]) for r in ROLES],
                    "-" if kdml is None or largest is None else f"{kdml / largest:.2f}",
                    "-" if kdml is None or all_at_once is None else f"{kdml / all_at_once:.2f}",
                    note,
                ]
            )
        result.details[f"{preset} {size}px"] = {str(b): v for b, v in measured.items()}
    what = "CUDA allocated" if key == "cuda_peak" else "resident"
    base_text = "-" if base is None else f"{base / GIB:.2f}"
    result.tables.append(
        Table(
            f"peak {what} memory of one training step, GiB (limit {limit / GIB:.1f} GiB; process baseline after "
            f"imports {base_text} GiB; {profile.num_students} students; AdamW; {torch.get_num_threads()} threads)",
            ["preset", "px", "batch", "kdml step", "teacher alone", "student alone", "kdml / largest alone",
             "kdml / all alone at once", "note"],
            rows,
        )
    )  # fmt: skip
    return result


def _measure(
    preset: str, size: int, batches: tuple[int, ...], profile: Profile, device: torch.device, limit: int
) -> dict[int, dict[str, dict[str, Any]]]:
    """Probe every role at each batch, small to large, until one exceeds the limit."""
    measured: dict[int, dict[str, dict[str, Any]]] = {}
    spec = {"kind": "train", "preset": preset, "image_size": size, "num_students": profile.num_students,
            "device": str(device), "threads": torch.get_num_threads()}  # fmt: skip
    for batch in sorted(batches):
        measured[batch] = {role: run_probe({**spec, "batch": batch, "role": role}, limit) for role in ROLES}
        if not all(r["ok"] for r in measured[batch].values()):
            break
    return measured


def _fits(measured: dict[int, dict[str, dict[str, Any]]], key: str) -> dict[str, tuple[float, float]]:
    """Per role, ``(a, b)`` of ``peak = a + b * batch`` through the measured batches (needs two)."""
    fits = {}
    for role in ROLES:
        points = [(b, r[role][key]) for b, r in measured.items() if r[role]["ok"]]
        if len(points) >= 2:
            slope, intercept = np.polyfit([p[0] for p in points], [p[1] for p in points], 1)
            fits[role] = (float(intercept), float(slope))
    return fits
