"""The students of a cohort run: one copy of the same initial students per mode, and the cohorts' members by name.

Every cohort starts from the same K initial students (copies), so cohorts differ only in how they are trained:
with one teacher and one data stream, the comparison of modes is paired from the first iteration.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

from torch import nn

from monai_kdml.keys import Mode, parse_cohorts

__all__ = ["cohort_copies", "cohort_members"]


def cohort_copies(students: Sequence[nn.Module], cohorts: Sequence[str | Mode] | None) -> list[nn.Module]:
    """``students`` for a single-mode run (``cohorts=None``); else one copy of them per cohort, cohort by cohort.

    The first cohort keeps the given modules; later cohorts get deep copies (same initial weights, own parameters).

    Raises:
        ValueError: ``cohorts`` that are not distinct modes.
    """
    modes = parse_cohorts(cohorts)
    if modes is None:
        return list(students)
    return [s if c == 0 else copy.deepcopy(s) for c in range(len(modes)) for s in students]


def cohort_members(students: Sequence[nn.Module], cohorts: Sequence[str | Mode] | None) -> dict[str, list[nn.Module]]:
    """``{mode: its K students}`` of a cohort run's flat ``students`` (``{}`` for a single-mode run).

    Raises:
        ValueError: ``cohorts`` that are not distinct modes, or students that do not split into equal cohorts.
    """
    modes = parse_cohorts(cohorts)
    if modes is None:
        return {}
    size, rest = divmod(len(students), len(modes))
    if rest or size < 1:
        raise ValueError(f"`students`: {len(students)} networks do not split into {len(modes)} equal cohorts.")
    return {str(m): list(students[c * size : (c + 1) * size]) for c, m in enumerate(modes)}
