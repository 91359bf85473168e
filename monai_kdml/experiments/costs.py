"""What the teacher and the deployed student ensemble of a run cost: parameters, MACs and CPU latency per image,
rebuilt from the run's record (random weights: cost does not depend on them)."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from monai_kdml.metrics.compression import compression_summary, measure_latency
from monai_kdml.networks import StudentEnsemble, build_network, build_students

__all__ = ["network_costs"]


def _networks(task: str, record: Mapping[str, Any]) -> tuple[nn.Module, list[nn.Module], nn.Module]:
    k = int(record["num_students"])
    if task == "msi":
        factory = functools.partial(build_network, spatial_dims=2, in_channels=3, num_classes=record["num_classes"])
        teacher = factory(name=record["teacher_network"])
        names = record["student_network"]
        students = build_students(functools.partial(factory, name=names if isinstance(names, str) else None), k,
                                  names=names)  # fmt: skip
        return teacher, students, StudentEnsemble(students)
    if task == "polyp":
        from monai_kdml.apps.polyp import RetinaNetHeadEnsemble, preset_from_dict

        preset = preset_from_dict(record["detector"])
        students = build_students(preset.build_student, k, names=record.get("student_backbone"))
        return preset.build_teacher(), students, RetinaNetHeadEnsemble(students)
    raise ValueError(f"unknown task {task!r}: expected 'msi' or 'polyp'.")


def network_costs(task: str, record: Mapping[str, Any], repeats: int = 10, threads: int = 1) -> dict[str, float]:
    """Parameters, MACs (one image) and median latency (ms, batch 1, ``threads`` CPU threads) of the teacher, the
    ensemble and a student, with the teacher / ensemble ratios.

    Args:
        task: ``"msi"`` or ``"polyp"``.
        record: the run's ``models/network.json``.
        repeats: timed forward passes per network.
        threads: CPU threads for the latency measurement.
    """
    teacher, students, ensemble = _networks(task, record)
    size = int(record["image_size"])
    shape = [1, 3, size, size]
    summary = compression_summary(teacher, students, shape)
    with torch.random.fork_rng():
        teacher_ms = 1e3 * measure_latency(teacher, shape, repeats=repeats, threads=threads)
        ensemble_ms = 1e3 * measure_latency(ensemble, shape, repeats=repeats, threads=threads)
    return {
        "image_size": size,
        "teacher_params": summary["teacher_params"],
        "teacher_macs": summary["teacher_macs"],
        "ensemble_params": summary["ensemble_params"],
        "ensemble_macs": summary["ensemble_macs"],
        "param_ratio": summary["param_ratio"],
        "mac_ratio": summary["mac_ratio"],
        "teacher_ms": teacher_ms,
        "ensemble_ms": ensemble_ms,
        "latency_ratio": teacher_ms / ensemble_ms if ensemble_ms > 0 else float("nan"),
    }
