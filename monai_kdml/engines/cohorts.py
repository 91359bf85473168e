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


def make_cohorts(modes: list[Mode] | None, mode: Mode, num_students: int) -> list[Cohort]:
    """The student groups: one unnamed group in ``mode``, or one group of ``K`` students per mode of a cohort run."""
    if num_students < 1:
        raise ValueError("`students` must hold at least one network (K >= 1).")
    if modes is None:
        if mode.uses_ml and num_students < 2:
            raise ValueError(f"`mode`='{mode}' uses mutual learning, which needs at least 2 `students`; got 1.")
        return [Cohort(None, mode, 0, num_students)]
    if mode not in modes:
        raise ValueError(
            f"`mode`='{mode}' must be one of `cohorts` {[str(m) for m in modes]}: the teacher's own loss terms come "
            "from that cohort's loss call."
        )
    size, rest = divmod(num_students, len(modes))
    if rest or size < 1:
        raise ValueError(
            f"`students`: {num_students} networks do not split into {len(modes)} cohorts of equal size K; give "
            "len(cohorts) * K students, cohort by cohort."
        )
    if size < 2 and any(m.uses_ml for m in modes):
        raise ValueError("`cohorts` with mutual learning need K >= 2 students per cohort; got 1.")
    return [Cohort(str(m), m, c * size, (c + 1) * size) for c, m in enumerate(modes)]


def detach(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return x.detach()
    if isinstance(x, Mapping):
        return {k: detach(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(detach(v) for v in x)
    return x


def pred_entries(teacher_pred: Any, student_preds: list, cohorts: list[Cohort]) -> dict:
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
