"""The students of a run as one object: ``{mode: [students]}``, built once and handed to the trainer, the evaluator,
the savers and the record (as MONAI's ``GanTrainer`` names its networks instead of slicing a list).

A single-mode run has one unnamed group (``None``); a cohort run one group of ``K`` students per mode, every group
starting from copies of the same initial students, so cohorts differ only in how they are trained: with one teacher
and one data stream, the comparison of modes is paired from the first iteration.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from monai_kdml.keys import Mode, parse_cohorts

__all__ = ["StudentCohorts", "build_cohorts", "cohort_ensembles", "distributed_students"]


class StudentCohorts(list[nn.Module]):
    """Every student of a run, cohort by cohort (a ``list``, so checkpoints and loops see the flat students), that
    also knows its groups: ``groups`` maps each cohort's name (``None`` in a single-mode run) to its ``K`` students.

    The mode/cohort rules are checked here, once: the cohorts are distinct modes, ``mode`` (the cohort deployed as
    ``model.pt`` and followed by the teacher) is one of them, every group has the same ``K >= 1`` students, and
    ``K >= 2`` wherever mutual learning needs peers. Treat it as read-only: the groups share its modules.

    Args:
        groups: ``{None: students}`` (a single-mode run) or ``{mode: students}`` per cohort, in order; a flat
            iterable is one unnamed group without a mode (what tree walkers build with ``type(x)(items)``).
        mode: the run's mode; ``None`` (an evaluator's view) skips the check that it is a cohort.
        size_key: the config key named in errors about the group size (``num_students`` in the bundles).

    Raises:
        ValueError: naming the config key of the first broken rule.
    """

    def __init__(
        self,
        groups: Mapping[Any, Sequence[nn.Module]] | Iterable[nn.Module],
        mode: Mode | str | None = Mode.KDML,
        size_key: str = "num_students",
    ) -> None:
        given: Mapping[Any, Sequence[nn.Module]]
        if isinstance(groups, Mapping):
            given = groups
        else:  # a flat iterable, as tree walkers rebuild lists (`type(x)(items)`)
            given, mode = {None: list(groups)}, None
        single = list(given) == [None]
        modes = None if single else parse_cohorts([str(n) for n in given])
        self.mode = None if mode is None else Mode.parse(mode, "mode")
        self.cohorts: list[Mode] | None = modes
        names: list[str | None] = [None] if modes is None else [str(m) for m in modes]
        self.groups: dict[str | None, list[nn.Module]] = {
            n: list(g) for n, g in zip(names, given.values(), strict=True)
        }
        sizes = {len(g) for g in self.groups.values()}
        if len(sizes) != 1 or min(sizes) < 1:
            raise ValueError(
                f"`{size_key}`: every cohort needs the same number K >= 1 of students, got {sorted(sizes)}."
            )
        self.size = sizes.pop()
        if modes is not None and self.mode is not None and self.mode not in modes:
            raise ValueError(
                f"`mode`='{self.mode}' must be one of `cohorts` {[str(m) for m in modes]}: in a cohort run it names "
                "the cohort deployed as models/model.pt and the one the teacher follows "
                "(with teacher_ensemble_weight > 0)."
            )
        if self.size < 2:
            for m in modes or ([self.mode] if self.mode is not None else []):
                if m.uses_ml:
                    where = "per cohort" if modes else "in the run"
                    raise ValueError(
                        f"`mode`='{m}' uses mutual learning, which needs at least 2 `students` {where}: `{size_key}` "
                        f"must be >= 2 (K >= 2 students {where}), got 1."
                    )
        super().__init__(s for g in self.groups.values() for s in g)

    @classmethod
    def split(
        cls, students: Sequence[nn.Module], cohorts: Sequence[str | Mode] | None, mode: Mode | str | None = Mode.KDML
    ) -> StudentCohorts:
        """The groups of a flat list (``len(cohorts) * K`` students, cohort by cohort); ``students`` itself when it
        already is a :class:`StudentCohorts`.

        Raises:
            ValueError: no students, cohorts that are not distinct modes, or students that do not split evenly.
        """
        if isinstance(students, StudentCohorts):
            return students
        if isinstance(students, nn.Module) and not isinstance(students, nn.ModuleList):
            raise ValueError("`students` must be a sequence of networks, got a single module.")
        if len(students) < 1:
            raise ValueError("`students` must hold at least one network (K >= 1).")
        modes = parse_cohorts(cohorts)
        if modes is None:
            return cls({None: list(students)}, mode, size_key="students")
        size, rest = divmod(len(students), len(modes))
        if rest or size < 1:
            raise ValueError(
                f"`students`: {len(students)} networks do not split into {len(modes)} cohorts of equal size K; give "
                "len(cohorts) * K students, cohort by cohort."
            )
        return cls({m: students[c * size : (c + 1) * size] for c, m in enumerate(modes)}, mode, size_key="students")

    @property
    def names(self) -> list[str | None]:
        """The cohorts' names (``[None]`` in a single-mode run)."""
        return list(self.groups)

    @property
    def deployed_name(self) -> str | None:
        """The cohort deployed as ``model.pt`` (its metrics' prefix): ``mode``; ``None`` in a single-mode run."""
        if self.cohorts is None:
            return None
        return str(self.mode if self.mode is not None else self.cohorts[0])

    @property
    def deployed(self) -> list[nn.Module]:
        """The students deployed as ``model.pt``: the ``mode`` cohort's, or all of a single-mode run's."""
        return self.groups[self.deployed_name]

    def members(self) -> dict[str, list[nn.Module]]:
        """``{mode: its K students}`` of a cohort run; ``{}`` for a single-mode run."""
        return {} if self.cohorts is None else {str(n): g for n, g in self.groups.items()}

    def map(self, fn: Callable[[nn.Module], nn.Module]) -> StudentCohorts:
        """The same groups with ``fn`` applied to every student (e.g. a DDP wrapper)."""
        return StudentCohorts({n: [fn(s) for s in g] for n, g in self.groups.items()}, self.mode)


def build_cohorts(
    build: Callable[[], Sequence[nn.Module]],
    mode: Mode | str | None = Mode.KDML,
    cohorts: Sequence[str | Mode] | None = None,
    device: str | torch.device | None = None,
    memory_format: torch.memory_format = torch.preserve_format,
) -> StudentCohorts:
    """Build the students once and group them: one group in ``mode``, or one copy of them per cohort.

    The first cohort keeps the built modules; later cohorts get deep copies (same initial weights, own parameters).

    Args:
        build: returns the ``K`` initial students (e.g. :func:`~monai_kdml.networks.build_students` as a
            ``_mode_: callable`` bundle component).
        mode: the run's mode (in a cohort run, one of ``cohorts``).
        cohorts: the modes of a cohort run, or ``None``.
        device, memory_format: where the students are moved (``None``: left where they are).

    Raises:
        ValueError: see :class:`StudentCohorts`.
    """
    modes = parse_cohorts(cohorts)
    students = list(build())
    if device is not None:
        students = [s.to(device).to(memory_format=memory_format) for s in students]
    if modes is None:
        return StudentCohorts({None: students}, mode)
    return StudentCohorts({m: students if c == 0 else copy.deepcopy(students) for c, m in enumerate(modes)}, mode)


def cohort_ensembles(students: StudentCohorts, ensemble: Callable[[list[nn.Module]], nn.Module]) -> list[nn.Module]:
    """One deployable ensemble per cohort, in order: ``ensemble(group)`` (e.g. a ``StudentEnsemble`` partial)."""
    return [ensemble(group) for group in students.groups.values()]


def distributed_students(students: StudentCohorts, device: torch.device) -> StudentCohorts:
    """Every student wrapped in ``DistributedDataParallel`` on ``device``, in the same groups."""
    ids = None if device.type == "cpu" else [device]
    return students.map(lambda s: torch.nn.parallel.DistributedDataParallel(s, device_ids=ids))
