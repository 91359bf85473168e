"""Distillation protocols (how the teacher's voice enters training) and the named grids of the ablation.

A protocol is a set of training overrides of the bundles plus the cohorts it needs. Only the cohorts that distil
from the teacher (``kd``, ``kdml``) change with the protocol: the ``independent`` and ``ml`` cohorts of a cohort run
never read the teacher, and every cohort is bit for bit its single-mode run, so they are trained once, under
``today``, and paired with every protocol's ``kd``/``kdml`` cohorts of the same seed (:func:`protocol_cohorts`).

The ``frozen`` protocol is the offline-KD reference in two stages, one bundle command each:

1. the teacher alone: ``--mode independent --num_students 1 --key_metric teacher_<metric>`` (one throw-away student;
   ``models/best_networks.pt`` holds the teacher of its best validation epoch);
2. the cohorts distil from it frozen: ``--teacher_mode frozen --teacher_weights <stage 1>/models/best_networks.pt``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["GRIDS", "PROTOCOLS", "GridDefinition", "Protocol", "protocol_cohorts", "teacher_stage_overrides"]

KD_COHORTS = ("kd", "kdml")
"""The cohorts whose training depends on the protocol."""


ONLINE: Mapping[str, Any] = {"teacher_stage": False}
"""Pinned by the one-stage protocols: a bundle whose default is the two-stage teacher (``teacher_stage``, MSI since
the grid chose ``frozen`` for it) would otherwise train a frozen teacher under every protocol. The committed runs were
made at 14dc8f8, before this pin (when ``teacher_stage`` was off by default), so from this code they count as other
settings."""


@dataclass(frozen=True)
class Protocol:
    """Training overrides per task (``{"msi": {...}, "polyp": {...}}``); ``two_stage``: train the teacher first."""

    description: str
    train: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    two_stage: bool = False


PROTOCOLS: dict[str, Protocol] = {
    "today": Protocol(
        "the bundles' defaults before issue 17: online teacher, KD and ML at full weight after the warm-up epochs",
        train={"msi": ONLINE, "polyp": ONLINE},
    ),
    "ramp": Protocol(
        "online teacher; KD weight ramped from 0 at iteration level (cosine) over ~70 % of training; polyp also "
        "teacher-bounded box KD (margin 0) and the 'sampled' KD classification normaliser",
        train={
            "msi": {**ONLINE, "kd_ramp_epochs": 10, "ramp_shape": "cosine"},
            "polyp": {
                **ONLINE,
                "kd_ramp_epochs": 3,
                "ramp_shape": "cosine",
                "box_bound_margin": 0.0,
                "kd_cls_normalizer": "sampled",
            },
        },
    ),
    "gate": Protocol(
        "online teacher; KD weight from the teacher's validation margin over the best student (0 while it trails, "
        "full at +span) and, on MSI, only on the tiles the teacher classifies right; polyp also teacher-bounded box "
        "KD and the 'sampled' KD classification normaliser",
        train={
            "msi": {**ONLINE, "teacher_gate": True, "teacher_gate_span": 0.05, "kd_gate": "correct"},
            "polyp": {
                **ONLINE,
                "teacher_gate": True,
                "teacher_gate_span": 0.02,
                "box_bound_margin": 0.0,
                "kd_cls_normalizer": "sampled",
            },
        },
    ),
    "frozen": Protocol(
        "two stages: the teacher trained alone (selected on its own validation metric), then frozen for the cohorts",
        two_stage=True,
    ),
}
"""The protocols a grid compares."""


def protocol_cohorts(protocol: str | None, modes: Sequence[str]) -> list[str]:
    """The cohorts a run of ``protocol`` trains: every mode under ``today`` (or no protocol), else only the modes
    that distil from the teacher."""
    if protocol in (None, "today"):
        return list(modes)
    kept = [m for m in modes if m in KD_COHORTS]
    if not kept:
        raise ValueError(f"protocol {protocol!r} changes only the {KD_COHORTS} cohorts; the modes are {list(modes)}.")
    return kept


def teacher_stage_overrides(selection_metric: str) -> dict[str, Any]:
    """Training overrides of stage 1 of the ``frozen`` protocol: the teacher alone, selected on its own metric."""
    return {"mode": "independent", "num_students": 1, "cohorts": None, "key_metric": f"teacher_{selection_metric}"}


@dataclass(frozen=True)
class GridDefinition:
    """A named grid: what ``--grid-definition <name>`` runs (the command line may still override seeds)."""

    description: str
    tasks: tuple[str, ...]
    scale: str
    protocols: tuple[str, ...]
    seeds: tuple[int, ...]
    modes: tuple[str, ...] = ("independent", "kd", "ml", "kdml")
    budget_hours: float = 8.0
    task_modes: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """Per-task cohorts where they differ from ``modes`` (a cut to fit the budget)."""

    def modes_of(self, task: str) -> tuple[str, ...]:
        """The cohorts of ``task``'s runs under today's protocol."""
        return tuple(self.task_modes.get(task, self.modes))


GRIDS: dict[str, GridDefinition] = {
    "teacher-protocols": GridDefinition(
        "mode x protocol on the MSI demo (22 validation patients, an external test cohort of 108 fresh patients) and "
        "Kvasir-SEG at the CPU scale (96 px, 4 epochs; the ml cohort cut to fit the budget), 5 paired seeds, about 8 "
        "hours of 2-core CPU in all",
        tasks=("msi", "polyp"),
        scale="teacher",
        protocols=("today", "ramp", "gate", "frozen"),
        seeds=(0, 1, 2, 3, 4),
        task_modes={"polyp": ("independent", "kd", "kdml")},
    ),
}
"""Named grids (issue 17)."""
