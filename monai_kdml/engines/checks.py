"""Every mistake in wiring a trainer's networks and optimizers, reported at construction (or at the first
iteration, for output shapes) rather than after an epoch."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer

from monai_kdml.engines.cohort_slices import Cohort
from monai_kdml.keys import TEACHER, TeacherMode
from monai_kdml.networks.ensemble import unwrap_module
from monai_kdml.networks.precision import parse_dtype
from monai_kdml.networks.teachers import TeacherEnsemble

__all__ = ["check_networks", "check_output_shapes", "check_teacher_dtype"]


def check_teacher_dtype(
    value: torch.dtype | str | None, teacher_mode: TeacherMode, device: str | torch.device
) -> torch.dtype | None:
    dtype = parse_dtype(value, "teacher_dtype")
    if dtype is None or dtype == torch.float32:
        return None
    if teacher_mode == TeacherMode.ONLINE:
        raise ValueError(
            "`teacher_dtype` needs teacher_mode='frozen': an online teacher trains, use `amp=True` for mixed precision."
        )
    if dtype == torch.float16 and torch.device(device).type != "cuda":
        raise ValueError(f"`teacher_dtype`='float16' runs on CUDA only (device {device}); use 'bfloat16'.")
    return dtype


def check_networks(
    teacher: nn.Module,
    students: Sequence[nn.Module],
    student_optimizers: Sequence[Optimizer],
    teacher_optimizer: Optimizer | None,
    cohorts: list[Cohort],
    teacher_mode: TeacherMode,
) -> None:
    """Every mistake in wiring networks and optimizers, reported at construction rather than after an epoch."""
    if not isinstance(teacher, nn.Module):
        raise ValueError(f"`teacher` must be an nn.Module, got {type(teacher).__name__}.")
    if isinstance(students, nn.Module) and not isinstance(students, nn.ModuleList):
        raise ValueError("`students` must be a sequence of networks, got a single module.")
    names = [TEACHER] + [name for cohort in cohorts for name in cohort.names()]
    modules = [unwrap_module(m) for m in (teacher, *students)]
    for i, a in enumerate(modules):
        for j in range(i + 1, len(modules)):
            if a is modules[j]:
                raise ValueError(
                    f"`students`: {names[i]} and {names[j]} are the same module object and would share weights; "
                    "build each network with its own constructor call."
                )
    if len(student_optimizers) != len(students):
        raise ValueError(
            f"`student_optimizers` must hold one optimizer per student: {len(student_optimizers)} for "
            f"{len(students)} students."
        )
    if teacher_mode == TeacherMode.ONLINE and isinstance(unwrap_module(teacher), TeacherEnsemble):
        raise ValueError(
            "`teacher`: a TeacherEnsemble is frozen by design; use teacher_mode='frozen' and teacher_optimizer=None."
        )
    if teacher_mode == TeacherMode.ONLINE and teacher_optimizer is None:
        raise ValueError("`teacher_optimizer` is required when `teacher_mode`='online'.")
    if teacher_mode == TeacherMode.FROZEN and teacher_optimizer is not None:
        raise ValueError("`teacher_optimizer` must be None when `teacher_mode`='frozen': the teacher is never updated.")
    owners = {id(p): name for name, m in zip(names, modules, strict=True) for p in m.parameters()}
    pairs = list(zip(names[1:], student_optimizers, strict=True))
    if teacher_optimizer is not None:
        pairs.append((TEACHER, teacher_optimizer))
    for name, optimizer in pairs:
        for group in optimizer.param_groups:
            for p in group["params"]:
                if owners.get(id(p), name) != name:
                    raise ValueError(
                        f"the optimizer of {name} holds parameters of {owners[id(p)]}; each optimizer must update "
                        "its own network only."
                    )


def _shapes(x: Any) -> Any:
    """The nested shape structure of a network output (tensor, list/tuple or dict of them)."""
    if isinstance(x, torch.Tensor):
        return tuple(x.shape)
    if isinstance(x, Mapping):
        return {k: _shapes(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_shapes(v) for v in x]
    return type(x).__name__


def check_output_shapes(teacher_pred: Any, student_preds: list[Any], names: list[str]) -> None:
    expected = _shapes(teacher_pred)
    for name, pred in zip(names, student_preds, strict=True):
        if _shapes(pred) != expected:
            raise ValueError(
                f"{name} output shape {_shapes(pred)} differs from the {TEACHER}'s {expected}: "
                "distillation needs outputs that align element for element (same classes, same spatial size)."
            )
