"""1. Engine overhead: ``KDMLTrainer`` iterations against a hand-written loop doing the same work.

Both sides train the same networks with the same optimizers on the same pre-loaded batches (no data loading), so
the quotient is what the engine adds: Ignite's events, MONAI's batch preparation, the ensemble prediction, the loss
entries, the non-finite guard and, by default, decollation of the batch and the output at ``MODEL_COMPLETED``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from kdml_bench.config import Profile
from kdml_bench.report import Figure, SectionResult, Table
from kdml_bench.timing import interleave, paired_ratios, stats
from kdml_bench.workloads import (
    Networks,
    as_meta_batches,
    build_networks,
    kdml_loss,
    kdml_step,
    kdml_trainer,
    synthetic_batches,
)
from monai_kdml.losses import KDMLLoss

__all__ = ["run"]

TARGET = 1.05


def run(profile: Profile, device: torch.device) -> SectionResult:
    result = SectionResult()
    rows = []
    for w in profile.overhead:
        nets = build_networks(w.preset, profile.num_students, device, profile.seed)
        batches = synthetic_batches(profile.overhead_iters, w.batch, w.image_size, device, profile.seed)
        loss = kdml_loss()
        meta = as_meta_batches(batches)
        trainers = {
            "decollate": kdml_trainer(nets, batches, device, epoch_length=len(batches)),
            "no_decollate": kdml_trainer(nets, batches, device, epoch_length=len(batches), decollate=False),
            "metatensor": kdml_trainer(nets, meta, device, epoch_length=len(meta)),
        }

        cases = {"manual": _manual(nets, loss, batches, device), "manual again": _manual(nets, loss, batches, device)}
        times = interleave(
            {**cases, **{k: t.run for k, t in trainers.items()}}, profile.repeats, device, profile.warmup
        )
        n = len(batches)
        same = paired_ratios(times["manual again"], times["manual"])
        result.figures.append(Figure(f"A/A: hand-written loop / itself, {w.label()}", same, note="the noise floor"))
        labels = {"decollate": "defaults (decollate=True)", "no_decollate": "decollate=False",
                  "metatensor": "defaults, MetaTensor batches"}  # fmt: skip
        for key, label in labels.items():
            result.figures.append(
                Figure(
                    f"KDMLTrainer {label} / hand-written loop, {w.label()}",
                    paired_ratios(times[key], times["manual"]),
                    target=TARGET,
                    note=f"{n} iterations per repeat, pre-loaded tensors",
                )
            )
        per_iter = {k: stats([t / n * 1000 for t in v])["median"] for k, v in times.items()}
        extra = {
            k: stats([(a - b) / n * 1000 for a, b in zip(v, times["manual"], strict=True)])["median"]
            for k, v in times.items()
            if k not in cases
        }
        rows.append(
            [
                w.label(),
                f"{per_iter['manual']:.1f}",
                f"{per_iter['decollate']:.1f}",
                f"{extra['decollate']:+.2f}",
                f"{per_iter['no_decollate']:.1f}",
                f"{extra['no_decollate']:+.2f}",
                f"{per_iter['metatensor']:.1f}",
                f"{extra['metatensor']:+.2f}",
            ]
        )
        result.details[w.label()] = {
            "seconds": times,
            "iterations": n,
            "ms_per_iteration": per_iter,
            "extra_ms_per_iteration": extra,
        }
    result.tables.append(
        Table(
            "milliseconds per iteration (medians; noisy absolute values, the ratios above are the figures)",
            ["workload", "hand-written", "trainer", "extra", "no decollate", "extra", "MetaTensor batches", "extra"],
            rows,
        )
    )
    return result


def _manual(nets: Networks, loss: KDMLLoss, batches: list[dict], device: torch.device) -> Callable[[], None]:
    def manual() -> None:
        for b in batches:
            kdml_step(nets, loss, b["image"].to(device), b["label"].to(device))

    return manual
