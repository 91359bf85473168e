"""4. Validation: one ``KDMLEvaluator`` pass (teacher, students, fused ensemble) against the plain forward passes.

The baseline runs each network in eval mode under ``no_grad`` on the same pre-loaded batches; the evaluator adds
Ignite's events, the per-network eval-mode switch, the ensemble fusion and, by default, decollation. A third
variant feeds it ``MetaTensor`` batches, as MONAI's ``DataLoader`` delivers them.
"""

from __future__ import annotations

import torch

from kdml_bench.config import Profile
from kdml_bench.report import Figure, SectionResult
from kdml_bench.timing import interleave, paired_ratios, stats
from kdml_bench.workloads import as_meta_batches, build_networks, forward_all, synthetic_batches
from monai_kdml.engines import KDMLEvaluator

__all__ = ["run"]

TARGET = 1.05


def run(profile: Profile, device: torch.device) -> SectionResult:
    result = SectionResult()
    w = profile.validation
    nets = build_networks(w.preset, profile.num_students, device, profile.seed)
    batches = synthetic_batches(profile.validation_iters, w.batch, w.image_size, device, profile.seed)
    n = len(batches)
    meta = as_meta_batches(batches)
    evaluators = {
        "decollate": KDMLEvaluator(device, batches, nets.teacher, nets.students, epoch_length=n),
        "no_decollate": KDMLEvaluator(device, batches, nets.teacher, nets.students, epoch_length=n, decollate=False),
        "metatensor": KDMLEvaluator(device, meta, nets.teacher, nets.students, epoch_length=n),
    }

    def plain() -> None:
        for net in nets.all:
            net.eval()
        for b in batches:
            forward_all(nets.all, b["image"].to(device))

    times = interleave(
        {"plain": plain, **{k: e.run for k, e in evaluators.items()}}, profile.repeats, device, profile.warmup
    )
    labels = {"decollate": "defaults (decollate=True)", "no_decollate": "decollate=False",
              "metatensor": "defaults, MetaTensor batches"}  # fmt: skip
    for key, label in labels.items():
        result.figures.append(
            Figure(
                f"KDMLEvaluator {label} / sum of forward passes, {w.label()}",
                paired_ratios(times[key], times["plain"]),
                target=TARGET,
                note=f"{n} batches",
            )
        )
    result.details = {
        "seconds": times,
        "ms_per_batch": {k: stats(v)["median"] / n * 1000 for k, v in times.items()},
    }
    return result
