"""Networks: the deployable student ensemble and the teacher-student presets."""

from monai_kdml.networks.ensemble import StudentEnsemble, combine_student_logits, unwrap_module

__all__ = ["StudentEnsemble", "combine_student_logits", "unwrap_module"]
