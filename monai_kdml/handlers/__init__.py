"""Ignite handlers: warm-up schedules, the non-finite-loss guard, per-epoch seeding and named output transforms."""

from monai_kdml.handlers.checkpoint import latest_checkpoint
from monai_kdml.handlers.guards import NonFiniteLossError, NonFiniteLossGuard
from monai_kdml.handlers.history import MetricsHistoryWriter
from monai_kdml.handlers.outputs import loss_terms
from monai_kdml.handlers.schedules import AttributeSetter, LrScheduleHandlerGroup, WarmupHandler
from monai_kdml.handlers.seeding import EpochSeedHandler

__all__ = [
    "AttributeSetter",
    "EpochSeedHandler",
    "LrScheduleHandlerGroup",
    "MetricsHistoryWriter",
    "NonFiniteLossError",
    "NonFiniteLossGuard",
    "WarmupHandler",
    "latest_checkpoint",
    "loss_terms",
]
