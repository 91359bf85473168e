"""How a trainer groups its students into cohorts, and how each cohort's predictions and losses are named in
``engine.state.output`` (one unnamed group in a single-mode run; ``<mode>/...`` keys in a cohort run)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from monai.utils import CommonKeys

from monai_kdml.keys import TEACHER, Mode, cohort_key, loss_key, pred_key, student_name, term_key
from monai_kdml.losses import LossTerms
from monai_kdml.networks.student_cohorts import StudentCohorts

__all__ = ["Cohort", "detach", "loss_entries", "make_cohorts", "pred_entries"]


@dataclass(frozen=True)
class Cohort:
    """One group of students trained with one mode: ``students[start:stop]`` of the trainer, named ``name``.

    ``name`` is ``None`` in a single-mode run (keys unprefixed) and the mode in a cohort run (keys ``<mode>/...``).
    """

    name: str | None
    mode: Mode
    start: int
    stop: int

    def names(self) -> list[str]:
        """The cohort's student names: ``student_<k>`` or ``<mode>/student_<k>``, ``k`` counted within it."""
        return [cohort_key(self.name, student_name(k)) for k in range(self.stop - self.start)]


def make_cohorts(students: StudentCohorts) -> list[Cohort]:
    """The index ranges of a :class:`~monai_kdml.networks.StudentCohorts`' groups within its flat list."""
    size = students.size
    return [
        Cohort(name, Mode(name) if name else students.mode or Mode.KDML, c * size, (c + 1) * size)
        for c, name in enumerate(students.names)
    ]


def detach(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return x.detach()
    if isinstance(x, Mapping):
        return {k: detach(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(detach(v) for v in x)
    return x


def pred_entries(teacher_pred: Any, student_preds: list[Any], cohorts: list[Cohort]) -> dict[str, Any]:
    entries = {pred_key(TEACHER): detach(teacher_pred)}
    for cohort in cohorts:
        preds = student_preds[cohort.start : cohort.stop]
        entries.update({pred_key(name): detach(p) for name, p in zip(cohort.names(), preds, strict=True)})
    return entries


def loss_entries(terms: LossTerms, cohort: Cohort, teacher: bool = True) -> dict[str, torch.Tensor]:
    """Flatten one cohort's loss dict into ``loss_<network>`` and ``<term>_<network>`` entries (detached, for
    logging), prefixed by the cohort in a cohort run (plus ``<mode>/loss``, its students' total); the teacher's
    entries only when ``teacher``."""
    entries: dict[str, torch.Tensor] = {}
    names = cohort.names()
    if cohort.name is not None:
        entries[cohort_key(cohort.name, CommonKeys.LOSS)] = terms["loss"].detach()
    for term, values in terms.get("students", {}).items():
        for name, value in zip(names, values, strict=True):
            entries[loss_key(name) if term == "loss" else term_key(term, name)] = value.detach()
    for term, value in terms.get("teacher", {}).items() if teacher else ():
        entries[loss_key(TEACHER) if term == "loss" else term_key(term, TEACHER)] = value.detach()
    return entries
