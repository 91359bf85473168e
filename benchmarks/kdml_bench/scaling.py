"""3. Scaling in K: ``KDMLTrainer`` time per iteration for K students, fitted as ``t = a + b K``.

``b``, the fitted cost of one more student, is divided by one student's training step alone (same batches,
measured in the same rounds): 1 means a student costs inside the trainer what it costs alone. ``a`` is divided by
the teacher's step alone. ``t(K_max) / (t(1) + (K_max - 1) s)``, with ``s`` a student alone, carries the target:
above 1 the students added to a one-student run cost more than they cost alone. Curvature (mutual learning has
``K (K - 1)`` peer terms): ``t(K_max)`` over the line through the smaller K, extrapolated; above 1 is super-linear.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from kdml_bench.config import Profile
from kdml_bench.report import Figure, SectionResult, Table
from kdml_bench.timing import interleave, paired_ratios, stats
from kdml_bench.workloads import Networks, build_networks, ce_step, kdml_trainer, synthetic_batches

__all__ = ["fit_line", "run"]

TARGET = 1.05


def fit_line(ks: list[int], times: list[float]) -> tuple[float, float]:
    """Least-squares ``(a, b)`` of ``t = a + b K``."""
    b, a = np.polyfit(np.asarray(ks, float), np.asarray(times, float), 1)
    return float(a), float(b)


def run(profile: Profile, device: torch.device) -> SectionResult:
    result = SectionResult()
    ks = list(profile.scaling_ks)
    rows = []
    for w in profile.scaling_workloads:
        full = build_networks(w.preset, max(ks), device, profile.seed)
        batches = synthetic_batches(profile.scaling_iters, w.batch, w.image_size, device, profile.seed)
        n = len(batches)
        cases = {}
        for k in ks:
            nets = Networks(full.teacher, full.students[:k], full.teacher_optimizer, full.student_optimizers[:k])
            cases[f"K={k}"] = kdml_trainer(nets, batches, device, epoch_length=n).run

        cases["student alone"] = _alone(full.students[0], full.student_optimizers[0], batches)
        cases["teacher alone"] = _alone(full.teacher, full.teacher_optimizer, batches)
        times = interleave(cases, profile.repeats, device, profile.warmup)
        per_k = [[times[f"K={k}"][r] / n for k in ks] for r in range(profile.repeats)]
        fits = [fit_line(ks, t) for t in per_k]
        student = [t / n for t in times["student alone"]]
        teacher = [t / n for t in times["teacher alone"]]
        slope, intercept = [b for _, b in fits], [a for a, _ in fits]
        head = [fit_line(ks[:-1], t[:-1]) for t in per_k]
        last = [t[-1] / (a + b * ks[-1]) for t, (a, b) in zip(per_k, head, strict=True)]
        linear = [t[-1] / (t[0] + (ks[-1] - ks[0]) * s) for t, s in zip(per_k, student, strict=True)]
        result.figures += [
            Figure(f"fitted cost per added student / student alone, {w.label()}", paired_ratios(slope, student)),
            Figure(f"fitted intercept / teacher alone, {w.label()}", paired_ratios(intercept, teacher)),
            Figure(
                f"t(K={ks[-1]}) / (t(K={ks[0]}) + {ks[-1] - ks[0]} students alone), {w.label()}", linear, target=TARGET
            ),
            Figure(f"t(K={ks[-1]}) / line through K={ks[0]}..{ks[-2]}, {w.label()}", last, note="> 1: super-linear"),
        ]
        med = [stats([t[i] for t in per_k])["median"] * 1000 for i in range(len(ks))]
        rows.append(
            [
                w.label(),
                *[f"{m:.1f}" for m in med],
                f"{stats(slope)['median'] * 1000:.2f}",
                f"{stats(student)['median'] * 1000:.2f}",
                f"{stats(intercept)['median'] * 1000:.1f}",
                f"{stats(teacher)['median'] * 1000:.1f}",
            ]
        )
        result.details[w.label()] = {"seconds": times, "iterations": n, "fits_a_b": fits}
    result.tables.append(
        Table(
            "milliseconds per iteration (medians)",
            ["workload", *[f"K={k}" for k in ks], "b (fit)", "student alone", "a (fit)", "teacher alone"],
            rows,
        )
    )
    return result


def _alone(net: torch.nn.Module, opt: torch.optim.Optimizer, batches: list[dict]) -> Callable[[], None]:
    def alone() -> None:
        for b in batches:
            ce_step(net, opt, b["image"], b["label"])

    return alone
