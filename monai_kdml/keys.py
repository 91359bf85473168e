"""Names shared by the engines, handlers, metrics and bundle configs.

One place for the modes of the method and for the keys under which every network's outputs and losses are
published in ``engine.state.output``, so configs and handlers never spell them by hand.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from monai.utils import StrEnum, look_up_option

__all__ = [
    "COHORT_SEPARATOR",
    "ENSEMBLE",
    "LOSS",
    "PRED",
    "STUDENT",
    "TEACHER",
    "Mode",
    "TeacherMode",
    "cohort_key",
    "is_loss_key",
    "is_teacher_name",
    "loss_key",
    "network_names",
    "parse_cohorts",
    "pred_key",
    "split_cohort",
    "split_loss_key",
    "split_metric_key",
    "student_index",
    "student_name",
    "teacher_member_name",
    "term_key",
]

TEACHER = "teacher"
ENSEMBLE = "ensemble"
STUDENT = "student"
"""Students are ``student_<k>`` (:func:`student_name`)."""
PRED = "pred"
"""Predictions: ``pred`` (the ensemble's, MONAI's default key) and ``pred_<network>`` (:func:`pred_key`)."""
LOSS = "loss"
"""Losses: ``loss`` (the backpropagated total) and ``loss_<network>`` (:func:`loss_key`)."""
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
    return f"{STUDENT}_{index}"


def teacher_member_name(index: int) -> str:
    """``teacher_<m>``: member ``m`` of a teacher ensemble (:class:`monai_kdml.networks.TeacherEnsemble`)."""
    return f"{TEACHER}_{index}"


def is_teacher_name(name: str) -> bool:
    """Whether ``name`` is the teacher's or one of its members' (``teacher``, ``teacher_<m>``)."""
    return _TEACHER_NAME.fullmatch(name) is not None


def student_index(name: str) -> int | None:
    """``k`` of a student's name ``student_<k>`` (:func:`student_name`), else ``None``."""
    match = _STUDENT_NAME.fullmatch(name)
    return int(match["index"]) if match else None


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
    return cohort_key(cohort, PRED if name == ENSEMBLE else f"{PRED}_{name}")


def loss_key(network: str) -> str:
    """Output key of a network's total loss: ``loss_<network>`` (``loss`` alone is the backpropagated total);
    ``kd/loss_student_0`` for a cohort's student."""
    cohort, name = split_cohort(network)
    return cohort_key(cohort, f"{LOSS}_{name}")


def term_key(term: str, network: str) -> str:
    """Output key of one loss term of one network, e.g. ``kd_student_0``, ``ce_teacher`` or ``kd/ml_student_1``."""
    cohort, name = split_cohort(network)
    return cohort_key(cohort, f"{term}_{name}")


# ---------------------------------------------------------------- parsing keys back, from the same names as above
_TEACHER_NAME = re.compile(rf"{TEACHER}(?:_\d+)?")  # teacher_member_name
_STUDENT_NAME = re.compile(rf"{STUDENT}_(?P<index>\d+)")  # student_name
_TRAINED = rf"{_TEACHER_NAME.pattern}|{STUDENT}_\d+"  # the networks with losses
_COHORT = rf"(?:(?P<cohort>\w+){re.escape(COHORT_SEPARATOR)})?"  # cohort_key
# ``loss`` and ``<term>_<network>`` (``loss_<network>`` included), a cohort's prefix or not; predictions are not losses
_LOSS_KEY = re.compile(rf"{_COHORT}(?:{LOSS}|(?!{PRED}_)\w+_(?:{_TRAINED}))")
# term_key / loss_key: a cohort's prefix belongs to the network (``kd/ml_student_1``: term ``ml`` of ``kd/student_1``)
_TERM_KEY = re.compile(rf"{_COHORT}(?P<term>\w+?)_(?P<network>{_TRAINED})")
# metric names: ``<network>_<metric>``, the ensemble's too
_METRIC_KEY = re.compile(rf"{_COHORT}(?P<network>{_TRAINED}|{ENSEMBLE})_(?P<metric>.+)")


def _network(match: re.Match[str]) -> str:
    return cohort_key(match["cohort"], match["network"])


def is_loss_key(key: str) -> bool:
    """Whether ``key`` of a trainer's output is a loss: ``loss``, ``loss_<network>``, ``<term>_<network>``, with a
    cohort's prefix or not (not ``pred_*``)."""
    return _LOSS_KEY.fullmatch(key) is not None


def split_loss_key(key: str) -> tuple[str, str] | None:
    """``(term, network)`` of a trainer output key (:func:`term_key`, :func:`loss_key`): ``kd_cls_student_0`` ->
    ``("kd_cls", "student_0")``, ``loss_teacher`` -> ``("loss", "teacher")``, ``kd/ml_student_1`` ->
    ``("ml", "kd/student_1")``; ``None`` for other keys (``loss``, ``kd/loss``, ``pred_*``)."""
    if key.rpartition(COHORT_SEPARATOR)[2].startswith(f"{PRED}_"):
        return None
    match = _TERM_KEY.fullmatch(key)
    return (match["term"], _network(match)) if match else None


def split_metric_key(key: str, networks: Sequence[str] = ()) -> tuple[str | None, str]:
    """``(network, metric)`` of a metric name: ``student_1_patient_auc`` -> ``("student_1", "patient_auc")``,
    ``kd/ensemble_auc`` -> ``("kd/ensemble", "auc")``.

    ``networks`` (e.g. ``["teacher", "student_0", "ensemble", "wbf"]``) are matched first, longest first; then the
    standard names. A metric of no network (``disagreement``) gives ``(None, key)``.
    """
    for name in sorted(networks, key=len, reverse=True):
        if key.startswith(f"{name}_"):
            return name, key[len(name) + 1 :]
    match = _METRIC_KEY.fullmatch(key)
    return (_network(match), match["metric"]) if match else (None, key)
