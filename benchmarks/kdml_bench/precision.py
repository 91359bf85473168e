"""CUDA only: ``KDMLTrainer`` iterations under autocast (bf16, fp16) and with ``channels_last``, against fp32.

Each variant trains its own copy of the networks (same seeds) through the trainer's own options, as the bundles
set them (``amp`` + ``amp_dtype``, ``channels_last``: the weights converted once, each batch in every iteration), so
the figures include what those options cost; all variants run on the same pre-loaded batches, interleaved.
"""

from __future__ import annotations

from typing import Any

import torch

from kdml_bench.config import Profile
from kdml_bench.report import Figure, SectionResult
from kdml_bench.timing import interleave, paired_ratios
from kdml_bench.workloads import build_networks, kdml_trainer, synthetic_batches

__all__ = ["VARIANTS", "run"]

# name -> (the trainer's amp_dtype, or None for float32; channels_last)
VARIANTS: dict[str, tuple[str | None, bool]] = {
    "fp32": (None, False),
    "bf16 autocast": ("bfloat16", False),
    "fp16 autocast + grad scaler": ("float16", False),
    "channels_last fp32": (None, True),
    "channels_last bf16 autocast": ("bfloat16", True),
}


def run(profile: Profile, device: torch.device) -> SectionResult:
    result = SectionResult()
    if device.type != "cuda":
        result.skipped = "autocast and channels_last variants are measured on CUDA only (--device cuda)"
        return result
    w = profile.precision
    cases = {}
    batches = synthetic_batches(profile.precision_iters, w.batch, w.image_size, device, profile.seed)
    for name, (amp_dtype, channels_last) in VARIANTS.items():
        nets = build_networks(w.preset, profile.num_students, device, profile.seed)
        amp: dict[str, Any] = {"amp": True, "amp_dtype": amp_dtype} if amp_dtype is not None else {}
        trainer = kdml_trainer(nets, batches, device, epoch_length=len(batches), channels_last=channels_last, **amp)
        cases[name] = trainer.run
    times = interleave(cases, profile.repeats, device, profile.warmup)
    for name in VARIANTS:
        if name != "fp32":
            result.figures.append(Figure(f"{name} / fp32, {w.label()}", paired_ratios(times[name], times["fp32"])))
    result.details = {"seconds": times, "iterations": profile.precision_iters}
    return result
