"""Networks: the deployable student ensemble and the teacher-student presets."""

from monai_kdml.networks.ensemble import StudentEnsemble, combine_student_logits, unwrap_module
from monai_kdml.networks.presets import NETWORKS, PRESETS, TeacherStudentPreset, build_network, get_preset

__all__ = [
    "NETWORKS",
    "PRESETS",
    "StudentEnsemble",
    "TeacherStudentPreset",
    "build_network",
    "combine_student_logits",
    "get_preset",
    "unwrap_module",
]
