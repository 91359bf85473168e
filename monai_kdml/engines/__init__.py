"""Engines: the KD + ML trainer and the teacher/students/ensemble evaluator."""

from monai_kdml.engines.evaluator import KDMLEvaluator
from monai_kdml.engines.trainer import KDMLTrainer, load_teacher_weights

__all__ = ["KDMLEvaluator", "KDMLTrainer", "load_teacher_weights"]
