"""Files that are never half-written: ``torch.save`` through a temporary file, fsync and rename; a full disk said
in one line; temporaries of killed processes removed; the ``state_dict`` tree of nested objects."""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from monai_kdml.handlers.resume import CheckpointReadError, read_checkpoint
from monai_kdml.networks.ensemble import unwrap_module

__all__ = ["DiskFullError", "atomic_save", "previous_state", "remove_stale_temporaries", "state_tree"]

_TMP_MARK = ".tmp-"


class DiskFullError(OSError):
    """A file could not be written because its disk (or the user's quota) is full (``errno`` ``ENOSPC``).

    Raised instead of torch's ``unexpected pos ...`` from its zip writer, with one line saying where, and whether the
    previous file is intact (checked by reading it).

    Args:
        message: the line.
        path: the file that could not be written.
    """

    def __init__(self, message: str, path: Path) -> None:
        super().__init__(errno.ENOSPC, message)
        self.path = path


def _disk_full(error: BaseException) -> bool:
    """Whether ``error`` or an error it was raised from/during is ``ENOSPC``/``EDQUOT`` (torch's zip writer turns
    the ``OSError`` of a full disk into ``RuntimeError: ... unexpected pos``, keeping the ``OSError`` as context)."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        current = current.__cause__ or current.__context__
    return False


def previous_state(path: Path | None, what: str) -> str:
    """``"the previous <what> <name> is intact"``, checked by reading ``path`` (``weights_only``), or why it is not."""
    if path is None or not path.is_file():
        return f"there was no previous {what}"
    try:
        read_checkpoint(path, map_location="cpu", mmap=True)
    except CheckpointReadError as err:
        return f"the previous {what} is not usable either ({err})"
    return f"the previous {what} {path.name} is intact"


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` that never leaves a partial file under ``path``, even on SIGKILL or power loss.

    Writes ``.<name>.tmp-<pid>-<random>`` in the same folder, flushes and fsyncs it, renames it over ``path``
    (``os.replace`` is atomic) and fsyncs the folder so the rename itself is durable. The previous file stays
    intact until the new one is complete. Files get the usual permissions (``0o666`` less the umask). Saving
    through a file object keeps the bytes independent of the file name, so equal states give identical files.

    Raises:
        DiskFullError: the disk is full; the temporary file is removed and the message says whether the previous
            ``path`` is intact.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}{_TMP_MARK}{os.getpid()}-{secrets.token_hex(4)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        if _disk_full(error):
            raise DiskFullError(
                f"disk full (ENOSPC) while writing {path}: nothing was written; {previous_state(path, 'file')}. Free "
                f"space on the disk of {path.parent}, then run again.",
                path,
            ) from error
        raise
    with contextlib.suppress(OSError):  # folders cannot be opened for fsync on some platforms
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete ``.*.tmp-<pid>-*`` files of :func:`atomic_save` whose process no longer runs; returns them."""
    removed = []
    for path in Path(folder).glob(f".*{_TMP_MARK}*") if Path(folder).is_dir() else []:
        try:
            os.kill(int(path.name.rsplit(_TMP_MARK, 1)[1].split("-")[0]), 0)
        except (ValueError, IndexError, ProcessLookupError):
            with contextlib.suppress(OSError):
                path.unlink()
                removed.append(path)
        except PermissionError:  # alive, owned by someone else
            pass
    return removed


def state_tree(objects: Any) -> Any:
    """``state_dict()`` of every object in nested dicts/lists (DDP/compile wrappers removed), as ignite does."""
    if isinstance(objects, Mapping):
        return {key: state_tree(value) for key, value in objects.items()}
    if isinstance(objects, (list, tuple)):
        return [state_tree(value) for value in objects]
    if isinstance(objects, torch.nn.Module):
        return unwrap_module(objects).state_dict()
    return objects.state_dict()
