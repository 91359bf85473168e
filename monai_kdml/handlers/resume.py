"""Resuming a run: which checkpoint to resume from, whether it fits the configuration, and loading it whole.

A training checkpoint written by :class:`~monai_kdml.handlers.TrainingCheckpoint` is a ``torch.save`` dict of state
dicts (networks, optimizers, schedulers, model selection), the trainer's engine state under ``"trainer"`` and the
saver's own record under ``"checkpointer"``. Every read here is ``weights_only=True``: a file holding anything but
tensors and plain containers is refused, never executed.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer

from monai_kdml.networks.ensemble import unwrap_module

__all__ = [
    "CHECKPOINTER_KEY",
    "TRAINER_KEY",
    "CheckpointInfo",
    "CheckpointMismatchError",
    "CheckpointReadError",
    "NothingToResumeError",
    "check_checkpoint",
    "find_resume_checkpoint",
    "load_checkpoint",
    "read_checkpoint",
    "resume_checkpoint",
]

logger = logging.getLogger(__name__)

TRAINER_KEY = "trainer"
"""Entry of a training checkpoint holding the trainer's engine state (``iteration``, ``epoch_length``, ...)."""
CHECKPOINTER_KEY = "checkpointer"
"""Entry holding the saver's record: run id, kept files, RNG states, why it was written."""

_MAX_LISTED = 3  # mismatching keys named per network


class CheckpointReadError(ValueError):
    """A checkpoint file cannot be used: missing, truncated, damaged, refused by ``weights_only`` or not a dict."""


class CheckpointMismatchError(ValueError):
    """A checkpoint does not fit the configured objects; nothing has been loaded."""


class NothingToResumeError(FileNotFoundError):
    """``--resume true`` found no readable training checkpoint; nothing was started and no file was changed."""


@dataclass(frozen=True)
class CheckpointInfo:
    """What a readable training checkpoint holds, as far as choosing one to resume from needs.

    Attributes:
        path: the file.
        iteration: the trainer's iteration count in it (the state after that many iterations).
        epoch_length: iterations per epoch (``None`` if unknown).
        run_started: wall-clock time at which the run it belongs to started fresh (runs resumed from it keep the
            value, so it tells runs apart in a shared folder); ``0.0`` for files of other savers.
        mtime: the file's modification time.
    """

    path: Path
    iteration: int
    epoch_length: int | None
    run_started: float
    mtime: float

    @property
    def epoch(self) -> int:
        """Completed epochs."""
        return self.iteration // self.epoch_length if self.epoch_length else 0

    @property
    def mid_epoch(self) -> bool:
        """Whether the state is inside an epoch (written on an interrupt or every N iterations)."""
        return bool(self.epoch_length) and self.iteration % self.epoch_length != 0  # type: ignore[operator]

    @property
    def newness(self) -> tuple[float, int, float]:
        """Sort key: the latest-started run, then the most iterations, then the latest write.

        Files of other savers (MONAI's ``CheckpointSaver``) carry no run start; their write time stands in for it,
        which orders them by modification time as before.
        """
        return (self.run_started or self.mtime, self.iteration, self.mtime)

    def describe(self) -> str:
        """E.g. ``epoch 3, iteration 24`` or ``epoch 3 + 5 of 8 iterations of epoch 4``."""
        if self.mid_epoch:
            done = self.iteration % self.epoch_length  # type: ignore[operator]
            return f"epoch {self.epoch} + {done} of {self.epoch_length} iterations of epoch {self.epoch + 1}"
        return f"epoch {self.epoch}, iteration {self.iteration}"


def read_checkpoint(path: str | Path, map_location: Any = None, mmap: bool = False) -> dict:
    """``torch.load(path, weights_only=True)`` with errors that name the file and say what is wrong.

    Args:
        path: a ``torch.save`` file.
        map_location: as for ``torch.load``.
        mmap: map tensors lazily (cheap metadata reads; a truncated file still fails at open).

    Raises:
        CheckpointReadError: missing, empty, truncated or damaged file; a pickle that ``weights_only`` refuses;
            content that is not a dict.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointReadError(f"no checkpoint file at {path}.")
    try:
        try:
            content = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
        except RuntimeError as err:
            if not (mmap and "mmap can only be used" in str(err)):
                raise
            # a file in torch's legacy (non-zip) format: read it whole, so its real problem is the one reported
            content = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises RuntimeError, EOFError, UnpicklingError, zip errors, ...
        reason = "refused by weights_only loading" if "weights_only" in str(err) else "truncated or damaged"
        first_line = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise CheckpointReadError(f"{path} is {reason} ({type(err).__name__}: {first_line[:200]}).") from None
    if not isinstance(content, dict):
        raise CheckpointReadError(f"{path} holds a {type(content).__name__}, not a dict of state dicts.")
    return content


def _info(path: Path) -> CheckpointInfo:
    content = read_checkpoint(path, map_location="cpu", mmap=True)
    trainer = content.get(TRAINER_KEY)
    if not isinstance(trainer, Mapping) or "iteration" not in trainer:
        raise CheckpointReadError(f"{path} is not a training checkpoint (no `{TRAINER_KEY}` state).")
    record = content.get(CHECKPOINTER_KEY)
    run_started = float(record.get("run_started", 0.0)) if isinstance(record, Mapping) else 0.0
    return CheckpointInfo(
        path, int(trainer["iteration"]), trainer.get("epoch_length"), run_started, path.stat().st_mtime
    )


def _scan(folder: Path, prefix: str) -> tuple[list[CheckpointInfo], list[tuple[Path, str]]]:
    """The readable training checkpoints ``<prefix>*.pt`` in ``folder``, and the others with why each is unusable."""
    found: list[CheckpointInfo] = []
    unreadable: list[tuple[Path, str]] = []
    for path in sorted(folder.glob(f"{prefix}*.pt")) if folder.is_dir() else []:
        try:
            found.append(_info(path))
        except CheckpointReadError as err:
            logger.warning("Skipping checkpoint %s: %s", path.name, err)
            unreadable.append((path, str(err).replace(str(path), path.name)))
    return found, unreadable


def find_resume_checkpoint(ckpt_dir: str | Path, prefix: str = "checkpoint") -> CheckpointInfo | None:
    """The newest readable training checkpoint ``<prefix>*.pt`` in ``ckpt_dir``, or ``None``.

    "Newest" is read from inside the files, not from their modification times: the checkpoint of the most recently
    started run (runs resumed from a checkpoint carry its start time on), and within it the one with the most
    trainer iterations (see :attr:`CheckpointInfo.newness`). Damaged, truncated or refused files are skipped with a
    warning naming them.
    """
    found, _ = _scan(Path(ckpt_dir), prefix)
    return max(found, key=lambda info: info.newness, default=None)


def _nothing_to_resume(folder: Path, prefix: str, unreadable: list[tuple[Path, str]]) -> NothingToResumeError:
    """The refusal of a resume without a readable checkpoint, saying what ``folder`` holds."""
    keep = "Nothing was started and every file was left as it was."
    elsewhere = "or train a new run into another --bundle_root (or replace this one with --overwrite true)."
    if unreadable:
        count = len(unreadable)
        files = f"{count} checkpoint file{'s' if count > 1 else ''}"
        which = "it is" if count == 1 else "both" if count == 2 else "all"
        details = "; ".join(reason for _, reason in unreadable)
        return NothingToResumeError(
            f"--resume true: nothing to resume from in {folder}: {files}, {which} unreadable: {details} {keep} "
            f"Restore a readable checkpoint, {elsewhere}"
        )
    others = sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) if folder.is_dir() else []
    if others:
        listed = ", ".join(others[:5]) + (", ..." if len(others) > 5 else "")
        return NothingToResumeError(
            f"--resume true: nothing to resume from: {folder} holds no {prefix}*.pt, only {listed}, which a fresh run "
            f"would overwrite. {keep} Restore the checkpoints, {elsewhere}"
        )
    state = "is empty" if folder.is_dir() else "does not exist"
    return NothingToResumeError(
        f"--resume true: nothing to resume from: {folder} {state}. Start a fresh run without --resume true."
    )


def resume_checkpoint(ckpt_dir: str | Path, resume: bool, prefix: str = "checkpoint") -> str | None:
    """The path a run should resume from (``--resume true``), or ``None`` for a fresh run; logs which it is.

    Args:
        ckpt_dir: the folder holding training checkpoints.
        resume: whether the user asked to continue; when false the run starts fresh whatever the folder holds.
        prefix: file-name prefix of training checkpoints.

    Returns:
        The newest readable, complete checkpoint (see :func:`find_resume_checkpoint`), or ``None`` (no resume).

    Raises:
        NothingToResumeError: ``resume`` and no readable checkpoint; the message says what the folder holds (the
            unreadable checkpoints and why, or the files a fresh run would overwrite). Resuming never starts afresh.
    """
    folder = Path(ckpt_dir)
    if not resume:
        existing = sorted(folder.glob(f"{prefix}*.pt")) if folder.is_dir() else []
        if existing:
            logger.info(
                "Starting a fresh run; %s holds %d checkpoint file(s) of an earlier run, which are kept (pass "
                "--resume true to continue that run instead).",
                folder,
                len(existing),
            )
        else:
            logger.info("Starting a fresh run (no checkpoint in %s).", folder)
        return None
    found, unreadable = _scan(folder, prefix)
    if not found:
        raise _nothing_to_resume(folder, prefix, unreadable)
    info = max(found, key=lambda info: info.newness)
    logger.info("Resuming from %s (%s).", info.path, info.describe())
    return str(info.path)


def _module_problems(name: str, module: nn.Module, state: Any) -> list[str]:
    if not isinstance(state, Mapping):
        return [f"`{name}`: the checkpoint holds a {type(state).__name__}, not the weights of a network."]
    expected = unwrap_module(module).state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k} {tuple(state[k].shape)} in the checkpoint vs {tuple(v.shape)} configured"
        for k, v in expected.items()
        if k in state
        and isinstance(v, torch.Tensor)
        and isinstance(state[k], torch.Tensor)
        and v.shape != state[k].shape
    ]
    parts = [
        f"{label} ({len(keys)}): {', '.join(keys[:_MAX_LISTED])}{', ...' if len(keys) > _MAX_LISTED else ''}"
        for label, keys in (("other shapes", shapes), ("missing", missing), ("unexpected", unexpected))
        if keys
    ]
    return [f"`{name}` ({type(unwrap_module(module)).__name__}) does not fit: {'; '.join(parts)}"] if parts else []


def _optimizer_problems(name: str, optimizer: Optimizer, state: Any) -> list[str]:
    groups = state.get("param_groups") if isinstance(state, Mapping) else None
    if not isinstance(groups, Sequence):
        return [f"`{name}`: the checkpoint holds no optimizer state."]
    saved = [len(g["params"]) for g in groups]
    configured = [len(g["params"]) for g in optimizer.param_groups]
    if saved != configured:
        return [f"`{name}`: parameters per group are {saved} in the checkpoint and {configured} configured."]
    return []


def _problems(name: str, obj: Any, state: Any) -> list[str]:
    if isinstance(obj, Mapping):
        if not isinstance(state, Mapping):
            return [f"`{name}`: the checkpoint holds a {type(state).__name__}, the configuration a mapping."]
        problems = []
        for key, value in obj.items():
            path = f"{name}.{key}" if name else str(key)
            if key not in state:
                problems.append(f"`{path}` is not in the checkpoint (it holds {', '.join(map(str, state))}).")
            else:
                problems += _problems(path, value, state[key])
        return problems
    if isinstance(obj, (list, tuple)):
        if not isinstance(state, (list, tuple)):
            return [f"`{name}`: the checkpoint holds a {type(state).__name__}, the configuration a list."]
        if len(state) != len(obj):
            return [f"the checkpoint holds {len(state)} `{name}` and the configuration {len(obj)}."]
        return [p for i, (o, s) in enumerate(zip(obj, state, strict=True)) for p in _problems(f"{name}[{i}]", o, s)]
    if isinstance(obj, nn.Module):
        return _module_problems(name, obj, state)
    if isinstance(obj, Optimizer):
        return _optimizer_problems(name, obj, state)
    return []  # engines, schedulers, scalers, model selection: plain dicts that their own loaders check


def check_checkpoint(checkpoint: Mapping, to_load: Mapping, source: str = "the checkpoint") -> None:
    """Check that ``checkpoint`` fits every object in ``to_load`` before anything is loaded.

    Containers must match (same keys, lists of the same length: a checkpoint of 2 students does not load into 3),
    networks must have the same keys and tensor shapes, optimizers the same parameters per group.

    Args:
        checkpoint: the loaded dict.
        to_load: the objects, nested in lists/dicts as in the checkpoint.
        source: how to name the checkpoint in the message (e.g. its path).

    Raises:
        CheckpointMismatchError: listing every misfit (and the first mismatching keys of each network).
    """
    problems = _problems("", dict(to_load), checkpoint)
    if problems:
        details = "\n  - ".join(problems)
        raise CheckpointMismatchError(
            f"{source} does not fit the configuration, nothing was loaded:\n  - {details}\nResume with the "
            "configuration the checkpoint was written with, or start a fresh run (--resume false)."
        )


def _load(obj: Any, state: Any) -> None:
    if isinstance(obj, Mapping):
        for key, value in obj.items():
            _load(value, state[key])
    elif isinstance(obj, (list, tuple)):
        for o, s in zip(obj, state, strict=True):
            _load(o, s)
    elif isinstance(obj, nn.Module):
        unwrap_module(obj).load_state_dict(state, strict=True)
    else:
        obj.load_state_dict(state)


def load_checkpoint(
    checkpoint: str | Path | Mapping, to_load: Mapping, map_location: Any = None, source: str | None = None
) -> Mapping:
    """Check (:func:`check_checkpoint`), then load every object of ``to_load`` from ``checkpoint``.

    Args:
        checkpoint: a path (read with ``weights_only=True``) or an already loaded dict.
        to_load: objects with ``load_state_dict``, nested in dicts/lists as in the checkpoint.
        map_location: as for ``torch.load``.
        source: how messages name an already loaded ``checkpoint`` (e.g. its path).

    Returns:
        The checkpoint dict.

    Raises:
        CheckpointReadError: the file cannot be read.
        CheckpointMismatchError: it does not fit; nothing was loaded.
    """
    source = source or "the checkpoint"
    if isinstance(checkpoint, (str, Path)):
        source = str(checkpoint)
        checkpoint = read_checkpoint(checkpoint, map_location)
    check_checkpoint(checkpoint, to_load, source)
    _load(dict(to_load), checkpoint)
    return checkpoint
