"""Ignite handlers: checkpoints and resume, model selection (per cohort too), warm-up schedules, the non-finite-loss
guard, per-epoch seeding, progress and summaries, grouped TensorBoard curves and named output transforms."""

from monai_kdml.handlers.checkpoint import DiskFullError, TrainingCheckpoint, atomic_save, remove_stale_temporaries
from monai_kdml.handlers.cohort_models import (
    COHORTS_DIR,
    CohortCheckpointLoader,
    CohortModelSaver,
    cohort_dir,
    cohort_metric,
)
from monai_kdml.handlers.guards import NonFiniteLossError, NonFiniteLossGuard
from monai_kdml.handlers.history import MetricsHistoryWriter
from monai_kdml.handlers.outputs import loss_terms, split_loss_key, split_metric_key, total_loss
from monai_kdml.handlers.progress import EngineLogFilter, ProgressHandler
from monai_kdml.handlers.resume import (
    CheckpointInfo,
    CheckpointMismatchError,
    CheckpointReadError,
    NothingToResumeError,
    check_checkpoint,
    find_resume_checkpoint,
    load_checkpoint,
    read_checkpoint,
    resume_checkpoint,
)
from monai_kdml.handlers.schedules import AttributeSetter, LrScheduleHandlerGroup, RampHandler, WarmupHandler
from monai_kdml.handlers.seeding import EpochSeedHandler
from monai_kdml.handlers.selection import BestModelSaver, ModelSelectionState, select_best
from monai_kdml.handlers.standing import TeacherStandingGate, check_gate_metric, teacher_margin
from monai_kdml.handlers.stopping import StopGuard, TrainingInterrupted
from monai_kdml.handlers.summary import EpochSummary, RunSummary
from monai_kdml.handlers.tensorboard import TensorBoardCurves, tag_layout

__all__ = [
    "COHORTS_DIR",
    "AttributeSetter",
    "BestModelSaver",
    "CheckpointInfo",
    "CheckpointMismatchError",
    "CheckpointReadError",
    "CohortCheckpointLoader",
    "CohortModelSaver",
    "DiskFullError",
    "EngineLogFilter",
    "EpochSeedHandler",
    "EpochSummary",
    "LrScheduleHandlerGroup",
    "MetricsHistoryWriter",
    "ModelSelectionState",
    "NonFiniteLossError",
    "NonFiniteLossGuard",
    "NothingToResumeError",
    "ProgressHandler",
    "RampHandler",
    "RunSummary",
    "StopGuard",
    "TeacherStandingGate",
    "TensorBoardCurves",
    "TrainingCheckpoint",
    "TrainingInterrupted",
    "WarmupHandler",
    "atomic_save",
    "check_checkpoint",
    "check_gate_metric",
    "cohort_dir",
    "cohort_metric",
    "find_resume_checkpoint",
    "load_checkpoint",
    "loss_terms",
    "read_checkpoint",
    "remove_stale_temporaries",
    "resume_checkpoint",
    "select_best",
    "split_loss_key",
    "split_metric_key",
    "tag_layout",
    "teacher_margin",
    "total_loss",
]
