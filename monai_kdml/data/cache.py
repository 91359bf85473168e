"""Cache folders built atomically: a crash, a kill or a concurrent rank never leaves a half-written folder that looks
complete, and temporary folders of dead processes are cleaned up; and names for cache folders that are the same in
every process that builds the same thing (:func:`stable_description`), so a resume finds its cache again."""

from __future__ import annotations

import enum
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["MARKER_NAME", "cache_folder_is_complete", "ensure_cache_folder", "stable_description", "stable_name"]

logger = logging.getLogger(__name__)

MARKER_NAME = "cache.json"
"""File that records what a cache folder was built from; written last, so its presence means "complete"."""


def cache_folder_is_complete(
    folder: str | Path,
    marker: Mapping[str, Any],
    verify: Callable[[Path], bool] | None = None,
    marker_name: str = MARKER_NAME,
) -> bool:
    """Whether ``folder`` holds a finished build made from ``marker`` (and passes ``verify``, e.g. a file count)."""
    folder = Path(folder)
    try:
        recorded = json.loads((folder / marker_name).read_text())
    except (OSError, ValueError):
        return False
    return recorded == json.loads(json.dumps(dict(marker))) and (verify is None or verify(folder))


def _remove_stale_temps(parent: Path, prefix: str) -> None:
    """Delete temporary folders of interrupted builds whose process (its pid is in the name) no longer runs."""
    for path in parent.glob(f"{prefix}*"):
        try:
            os.kill(int(path.name[len(prefix) :].split("-")[0]), 0)
        except (ValueError, IndexError, ProcessLookupError):
            shutil.rmtree(path, ignore_errors=True)
        except PermissionError:  # alive, owned by someone else
            pass


def ensure_cache_folder(
    target: str | Path,
    marker: Mapping[str, Any],
    build: Callable[[Path], object],
    verify: Callable[[Path], bool] | None = None,
    marker_name: str = MARKER_NAME,
) -> bool:
    """Make ``target`` a complete build of ``marker``, building it only when absent, incomplete or made otherwise.

    ``build(folder)`` fills a fresh temporary sibling folder (same file system); the marker is written last and the
    folder is renamed into place, which is atomic. A stale ``target`` (other marker, or half deleted) is moved aside
    first, since a rename cannot replace a folder. Concurrent callers (e.g. DDP ranks) each build and the first
    rename wins; the others accept the winner's folder when its marker matches.

    Args:
        target: the cache folder.
        marker: JSON-serialisable description of what the folder holds (generator, version, parameters).
        build: fills the folder it is given.
        verify: an extra completeness check of a folder (e.g. that every file is there).
        marker_name: file name of the marker inside the folder.

    Returns:
        ``True`` when the folder was built by this call, ``False`` when a complete one was there.
    """
    target = Path(target)
    if cache_folder_is_complete(target, marker, verify, marker_name):
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{target.name}.tmp-"
    _remove_stale_temps(target.parent, prefix)
    tmp = Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", dir=target.parent))
    try:
        build(tmp / "new")
        (tmp / "new").mkdir(parents=True, exist_ok=True)
        (tmp / "new" / marker_name).write_text(json.dumps(dict(marker), indent=1))
        if target.exists():
            target.rename(tmp / "old")
        try:
            (tmp / "new").rename(target)
        except OSError:
            if not cache_folder_is_complete(target, marker, verify, marker_name):  # nobody won the race
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return True


_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def stable_description(obj: Any, depth: int = 4) -> Any:
    """A JSON-able description of ``obj`` that is the same in every process building the same object: its type and
    public attributes, recursively (``depth`` levels), never a memory address (the default ``repr`` of most MONAI
    transforms is ``<... object at 0x7f...>``, different in every process).
    """
    if obj is None or isinstance(obj, (bool, int, float)):
        return obj
    if isinstance(obj, str):
        return _ADDRESS.sub("", obj)
    if isinstance(obj, enum.Enum):
        return f"{type(obj).__name__}.{obj.name}"
    if isinstance(obj, Mapping):
        return {str(k): stable_description(v, depth - 1) for k, v in obj.items()} if depth > 0 else type(obj).__name__
    if isinstance(obj, (list, tuple, set, frozenset)):
        items = sorted(obj, key=repr) if isinstance(obj, (set, frozenset)) else obj
        return [stable_description(v, depth - 1) for v in items] if depth > 0 else type(obj).__name__
    kind = f"{type(obj).__module__}.{type(obj).__qualname__}"
    if callable(obj) and hasattr(obj, "__qualname__"):  # functions and classes
        return f"{getattr(obj, '__module__', '')}.{obj.__qualname__}"
    attributes = getattr(obj, "__dict__", None)
    if attributes is None or depth <= 0:
        text = _ADDRESS.sub("", repr(obj))
        return text if text and not text.startswith("<") else kind
    public = {k: v for k, v in sorted(attributes.items()) if not k.startswith("_")}
    return {"type": kind, **{k: stable_description(v, depth - 1) for k, v in public.items()}}


def stable_name(parts: Iterable[Any], length: int = 12) -> str:
    """A short hex name for what ``parts`` describe (:func:`stable_description` of each)."""
    text = json.dumps([stable_description(p) for p in parts], sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:length]
