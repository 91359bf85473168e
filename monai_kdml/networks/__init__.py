"""Networks: the deployable student ensemble, teachers (pretrained, lower precision, ensembles) and the presets."""

from monai_kdml.networks.ensemble import StudentEnsemble, check_combine, combine_student_logits, unwrap_module
from monai_kdml.networks.factories import build_students, build_teacher, teacher_members
from monai_kdml.networks.precision import parse_dtype, run_in_dtype
from monai_kdml.networks.presets import (
    NETWORKS,
    PRESETS,
    TIMM_PREFIX,
    TeacherStudentPreset,
    build_network,
    get_preset,
)
from monai_kdml.networks.registry import Registry
from monai_kdml.networks.student_cohorts import (
    StudentCohorts,
    build_cohorts,
    cohort_ensembles,
    distributed_students,
)
from monai_kdml.networks.teachers import TeacherEnsemble
from monai_kdml.networks.weights import CHECKPOINT_KEYS, WeightsSource, apply_key_map, load_pretrained, read_state_dict

__all__ = [
    "CHECKPOINT_KEYS",
    "NETWORKS",
    "PRESETS",
    "TIMM_PREFIX",
    "Registry",
    "StudentCohorts",
    "StudentEnsemble",
    "TeacherEnsemble",
    "TeacherStudentPreset",
    "WeightsSource",
    "apply_key_map",
    "build_cohorts",
    "build_network",
    "build_students",
    "build_teacher",
    "check_combine",
    "cohort_ensembles",
    "combine_student_logits",
    "distributed_students",
    "get_preset",
    "load_pretrained",
    "parse_dtype",
    "read_state_dict",
    "run_in_dtype",
    "teacher_members",
    "unwrap_module",
]
