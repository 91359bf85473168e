"""Finding the checkpoint to resume from (the saving and loading themselves are MONAI's CheckpointSaver/Loader)."""

from __future__ import annotations

import logging
from pathlib import Path

__all__ = ["latest_checkpoint"]

logger = logging.getLogger(__name__)


def latest_checkpoint(ckpt_dir: str | Path, prefix: str = "checkpoint", resume: bool = True) -> str | None:
    """The newest ``<prefix>*.pt`` in ``ckpt_dir`` (by modification time), or ``None``.

    MONAI's ``CheckpointSaver`` writes ``checkpoint_epoch=N.pt`` after each epoch and ``checkpoint_final...pt`` when a
    run ends or is interrupted (Ctrl-C, a non-finite loss); the newest one is where the run stopped. Files are written
    atomically by ignite, so a crash mid-write never leaves a truncated checkpoint behind.

    Args:
        ckpt_dir: the bundle's checkpoint folder.
        prefix: file-name prefix of full training checkpoints.
        resume: when false, only log that a checkpoint exists and return ``None`` (a fresh run).

    Returns:
        The path to resume from, or ``None``.
    """
    folder = Path(ckpt_dir)
    found = sorted(folder.glob(f"{prefix}*.pt"), key=lambda p: p.stat().st_mtime) if folder.is_dir() else []
    if not found:
        if resume:
            logger.warning("resume requested but no %s*.pt in %s: starting from scratch.", prefix, folder)
        return None
    if not resume:
        logger.info("Found %s; starting from scratch (pass --resume true to continue from it).", found[-1])
        return None
    logger.info("Resuming from %s.", found[-1])
    return str(found[-1])
