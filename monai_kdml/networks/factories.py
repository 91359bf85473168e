"""Build the teacher and the students of a run, initialised from the weight files a configuration names.

The bundles' ``teacher_weights`` and ``student_weights`` keys land here: ``None`` (random init), one file, or a list
of files. A list of teacher files makes a :class:`~monai_kdml.networks.TeacherEnsemble` (frozen members whose mean
probability is the KD target); a list of student files gives each student its own initialisation.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from monai_kdml.keys import TEACHER, TeacherMode, student_name
from monai_kdml.networks.teachers import TeacherEnsemble
from monai_kdml.networks.weights import WeightsSource, load_pretrained

__all__ = ["build_students", "build_teacher", "teacher_members"]

WeightFiles = str | Path | Sequence[str | Path | None] | None


def teacher_members(teacher_weights: WeightFiles) -> int:
    """How many ensemble members ``teacher_weights`` asks for: the list's length, or 0 for one teacher network."""
    return 0 if teacher_weights is None or isinstance(teacher_weights, (str, Path)) else len(teacher_weights)


def build_teacher(
    factory: Callable[[], nn.Module],
    weights: WeightFiles = None,
    source: WeightsSource | str = WeightsSource.STATE_DICT,
    key_map: Mapping[str, str] | None = None,
    teacher_mode: TeacherMode | str = TeacherMode.ONLINE,
    device: str | torch.device | None = None,
    memory_format: torch.memory_format = torch.preserve_format,
) -> nn.Module:
    """The teacher: ``factory()`` initialised from ``weights``, or a frozen ensemble of one ``factory()`` per file.

    Args:
        factory: builds one (random) teacher network.
        weights: ``None``, a file (see :func:`~monai_kdml.networks.load_pretrained`), or a list of files (an
            ensemble teacher; ``None`` entries leave a member random, e.g. before a checkpoint is loaded into it).
        source: how the files name their parameters (``"state_dict"``, ``"torchvision"``, ``"timm"``).
        key_map: prefix renames applied to every file.
        teacher_mode: ``"online"`` or ``"frozen"``: a frozen teacher needs ``weights``, an ensemble is frozen.
        device, memory_format: where the teacher is moved (``None``: left where it is).

    Raises:
        ValueError: a file that does not fit (naming ``teacher_weights``), an empty list, a frozen teacher without
            weights or an online ensemble.
    """
    frozen = TeacherMode.parse(teacher_mode, "teacher_mode") == TeacherMode.FROZEN
    single = weights is None or isinstance(weights, (str, Path))
    if frozen and weights is None:
        raise ValueError("`teacher_mode`='frozen' needs pre-trained weights: set `teacher_weights`.")
    if not frozen and not single:
        raise ValueError(
            f"`teacher_weights` lists {len(weights)} files: an ensemble of teachers is frozen; "  # type: ignore[arg-type]
            "set `teacher_mode` to 'frozen'."
        )
    if single:
        teacher = load_pretrained(factory(), weights, source, key_map, config_key="teacher_weights", name=TEACHER)  # type: ignore[arg-type]
    else:
        files = list(weights)  # type: ignore[arg-type]
        if not files:
            raise ValueError("`teacher_weights` is an empty list: give one file per ensemble member, or null.")
        teacher = TeacherEnsemble([factory() for _ in files], weights=files, source=source, key_map=key_map)
    return teacher if device is None else teacher.to(device).to(memory_format=memory_format)


def build_students(
    factory: Callable[[], nn.Module],
    num_students: int,
    weights: WeightFiles = None,
    source: WeightsSource | str = WeightsSource.STATE_DICT,
    key_map: Mapping[str, str] | None = None,
    names: str | Sequence[str] | None = None,
) -> list[nn.Module]:
    """``num_students`` independently built students, each initialised from its file of ``weights``.

    Args:
        factory: builds one (random) student network; called once per student.
        num_students: ``K``.
        weights: ``None``, one file for every student, or a list of ``K`` files (``None`` entries stay random).
        source, key_map: as in :func:`build_teacher`.
        names: a list of network names gives students of different architectures: student ``k`` is
            ``factory(name=names[k % len(names)])`` (e.g. a bundle's ``student_def`` with ``student_network`` a
            list). ``None`` or one name: every student is ``factory()``.

    Raises:
        ValueError: a list of another length than ``num_students``, an empty ``names`` list, or a file that does
            not fit.
    """
    files: list[str | Path | None] = (
        [weights] * num_students if weights is None or isinstance(weights, (str, Path)) else list(weights)
    )
    if len(files) != num_students:
        raise ValueError(f"`student_weights` lists {len(files)} files for {num_students} students (`num_students`).")
    mixed = names is not None and not isinstance(names, str)
    if mixed and len(names) == 0:  # type: ignore[arg-type]
        raise ValueError("`student_network` is an empty list: name at least one network.")

    def build(k: int) -> nn.Module:
        return factory(name=names[k % len(names)]) if mixed else factory()  # type: ignore[call-arg,index,arg-type]

    return [
        load_pretrained(build(k), file, source, key_map, config_key="student_weights", name=student_name(k))
        for k, file in enumerate(files)
    ]
