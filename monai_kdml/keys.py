"""Names shared by the engines, handlers, metrics and bundle configs.

One place for the modes of the method and for the keys under which every network's outputs and losses are
published in ``engine.state.output``, so configs and handlers never spell them by hand.
"""

from __future__ import annotations

from collections.abc import Sequence

from monai.utils import StrEnum, look_up_option

__all__ = [
    "COHORT_SEPARATOR",
    "ENSEMBLE",
    "TEACHER",
    "Mode",
    "TeacherMode",
    "cohort_key",
    "is_teacher_name",
    "loss_key",
    "network_names",
    "parse_cohorts",
    "pred_key",
    "split_cohort",
    "student_name",
    "teacher_member_name",
    "term_key",
]

TEACHER = "teacher"
ENSEMBLE = "ensemble"
COHORT_SEPARATOR = "/"
"""Joins a cohort's name to every key of its networks: ``kdml/student_0``, ``kdml/ensemble_auc``, ``kdml/pred``."""


class Mode(StrEnum):
    """Which terms train the students.

    - ``independent``: supervised loss only (every network trained alone, on the same batches).
    - ``kd``: + distillation from the teacher.
    - ``ml``: + mutual learning between peers.
    - ``kdml``: all three terms (the method of Niyaz & Bathula, ISBI 2022).
    """

    INDEPENDENT = "independent"
    KD = "kd"
    ML = "ml"
    KDML = "kdml"

    @property
    def uses_kd(self) -> bool:
        return self in (Mode.KD, Mode.KDML)

    @property
    def uses_ml(self) -> bool:
        return self in (Mode.ML, Mode.KDML)

    @classmethod
    def parse(cls, value: str | Mode, name: str = "mode") -> Mode:
        """Return the member for ``value``; a bad value raises ``ValueError`` naming ``name`` (with a suggestion)."""
        return cls(_look_up(value, cls, name))


class TeacherMode(StrEnum):
    """How the teacher is trained: ``online`` (updated in the same iterations) or ``frozen`` (pre-trained, fixed)."""

    ONLINE = "online"
    FROZEN = "frozen"

    @classmethod
    def parse(cls, value: str | TeacherMode, name: str = "teacher_mode") -> TeacherMode:
        """Return the member for ``value``; a bad value raises ``ValueError`` naming ``name`` (with a suggestion)."""
        return cls(_look_up(value, cls, name))


def parse_cohorts(cohorts: Sequence[str | Mode] | None, name: str = "cohorts") -> list[Mode] | None:
    """The modes of a cohort run (``None``: a single-mode run); each must be a :class:`Mode`, none twice.

    Raises:
        ValueError: an empty list, an unknown mode (with a suggestion) or a repeated one, naming ``name``.
    """
    if cohorts is None:
        return None
    if isinstance(cohorts, str) or not isinstance(cohorts, Sequence) or len(cohorts) == 0:
        raise ValueError(f"`{name}` must be a non-empty list of modes, e.g. ['independent', 'kdml'], got {cohorts!r}.")
    modes = [Mode.parse(c, name) for c in cohorts]
    if len(set(modes)) != len(modes):
        raise ValueError(f"`{name}` names a mode twice: {[str(m) for m in modes]}.")
    return modes


def _look_up(value: str | StrEnum, options: type[StrEnum], name: str) -> str:
    # MONAI's look_up_option gives the "did you mean" suggestion; the argument's name is prefixed for the user
    try:
        return str(look_up_option(value, options))
    except ValueError as err:
        raise ValueError(f"`{name}`: {err}") from None


def student_name(index: int) -> str:
    """``student_<k>``: the name of student ``k`` in output keys, metric names and TensorBoard tags."""
    return f"student_{index}"


def teacher_member_name(index: int) -> str:
    """``teacher_<m>``: member ``m`` of a teacher ensemble (:class:`monai_kdml.networks.TeacherEnsemble`)."""
    return f"{TEACHER}_{index}"


def is_teacher_name(name: str) -> bool:
    """Whether ``name`` is the teacher's or one of its members' (``teacher``, ``teacher_<m>``)."""
    return name == TEACHER or (name.startswith(f"{TEACHER}_") and name[len(TEACHER) + 1 :].isdigit())


def cohort_key(cohort: str | None, key: str) -> str:
    """``<cohort>/<key>`` (``key`` itself when ``cohort`` is ``None``): the one rule naming a cohort's keys.

    In a cohort run every key a single-mode run publishes for its students and ensemble is prefixed by the cohort's
    mode: network names (``kd/student_0``), output keys (``kd/pred``), metric names (``kd/ensemble_auc``) and so
    TensorBoard tags, which TensorBoard then groups by cohort. The teacher is shared and keeps its plain names.
    """
    return key if cohort is None else f"{cohort}{COHORT_SEPARATOR}{key}"


def split_cohort(name: str) -> tuple[str | None, str]:
    """``(cohort, name)`` of a possibly prefixed name: ``"kd/student_0"`` -> ``("kd", "student_0")``."""
    cohort, sep, rest = name.partition(COHORT_SEPARATOR)
    return (cohort, rest) if sep else (None, name)


def network_names(
    num_students: int, ensemble: bool = True, teacher_members: int = 0, cohorts: Sequence[str] | None = None
) -> list[str]:
    """``["teacher", "student_0", ..., "student_{K-1}"]`` plus ``"ensemble"`` when ``ensemble`` is true.

    With ``teacher_members = M > 0`` (a teacher ensemble), ``teacher_0 ... teacher_{M-1}`` follow ``teacher``.
    With ``cohorts`` (a cohort run), the students and ensemble of each cohort follow, prefixed by it
    (:func:`cohort_key`): ``["teacher", "kd/student_0", ..., "kd/ensemble", "kdml/student_0", ...]``.
    """
    members = [teacher_member_name(m) for m in range(teacher_members)]
    own = [student_name(k) for k in range(num_students)] + ([ENSEMBLE] if ensemble else [])
    if cohorts is None:
        return [TEACHER, *members, *own]
    return [TEACHER, *members] + [cohort_key(str(c), name) for c in cohorts for name in own]


def pred_key(network: str) -> str:
    """Output key of a network's prediction: ``pred`` for the ensemble (MONAI's default), else ``pred_<network>``;
    a cohort's keys keep its prefix (``kd/pred``, ``kd/pred_student_0``)."""
    cohort, name = split_cohort(network)
    return cohort_key(cohort, "pred" if name == ENSEMBLE else f"pred_{name}")


def loss_key(network: str) -> str:
    """Output key of a network's total loss: ``loss_<network>`` (``loss`` alone is the backpropagated total);
    ``kd/loss_student_0`` for a cohort's student."""
    cohort, name = split_cohort(network)
    return cohort_key(cohort, f"loss_{name}")


def term_key(term: str, network: str) -> str:
    """Output key of one loss term of one network, e.g. ``kd_student_0``, ``ce_teacher`` or ``kd/ml_student_1``."""
    cohort, name = split_cohort(network)
    return cohort_key(cohort, f"{term}_{name}")
