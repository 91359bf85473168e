"""Names shared by the engines, handlers, metrics and bundle configs.

One place for the modes of the method and for the keys under which every network's outputs and losses are
published in ``engine.state.output``, so configs and handlers never spell them by hand.
"""

from __future__ import annotations

from monai.utils import StrEnum, look_up_option

__all__ = [
    "ENSEMBLE",
    "TEACHER",
    "Mode",
    "TeacherMode",
    "is_teacher_name",
    "loss_key",
    "network_names",
    "pred_key",
    "student_name",
    "teacher_member_name",
    "term_key",
]

TEACHER = "teacher"
ENSEMBLE = "ensemble"


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


def network_names(num_students: int, ensemble: bool = True, teacher_members: int = 0) -> list[str]:
    """``["teacher", "student_0", ..., "student_{K-1}"]`` plus ``"ensemble"`` when ``ensemble`` is true.

    With ``teacher_members = M > 0`` (a teacher ensemble), ``teacher_0 ... teacher_{M-1}`` follow ``teacher``.
    """
    members = [teacher_member_name(m) for m in range(teacher_members)]
    names = [TEACHER, *members] + [student_name(k) for k in range(num_students)]
    return [*names, ENSEMBLE] if ensemble else names


def pred_key(network: str) -> str:
    """Output key of a network's prediction: ``pred`` for the ensemble (MONAI's default), else ``pred_<network>``."""
    return "pred" if network == ENSEMBLE else f"pred_{network}"


def loss_key(network: str) -> str:
    """Output key of a network's total loss: ``loss_<network>`` (``loss`` alone is the backpropagated total)."""
    return f"loss_{network}"


def term_key(term: str, network: str) -> str:
    """Output key of one loss term of one network, e.g. ``kd_student_0`` or ``ce_teacher``."""
    return f"{term}_{network}"
