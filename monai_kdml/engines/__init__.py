"""Engines: the KD + ML trainer (single mode or one cohort per mode) and the teacher/students/ensemble evaluator."""

from monai_kdml.engines.cohort_slices import Cohort
from monai_kdml.engines.evaluator import KDMLEvaluator
from monai_kdml.engines.optimizers import network_optimizers, optimizer_schedulers, trainable_optimizers
from monai_kdml.engines.trainer import KDMLTrainer, load_teacher_weights

__all__ = [
    "Cohort",
    "KDMLEvaluator",
    "KDMLTrainer",
    "load_teacher_weights",
    "network_optimizers",
    "optimizer_schedulers",
    "trainable_optimizers",
]
