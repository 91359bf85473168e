"""The folders one training run writes to: held by a lock for the whole run, never taken over silently, and
replaced (``--overwrite true``) only file by file, for the files a run wrote.

A bundle declares one :class:`RunFolder` component over its ``ckpt_dir`` and ``output_dir`` and opens it in its
preflight, before anything is written:

1. each folder is locked (``filelock``, an advisory OS lock the kernel drops when the process dies, so a killed run
   leaves no stale lock); a second run into the same folder is refused, naming the first run's process (pid, host,
   start time, command) from the holder file beside the lock;
2. an earlier run in ``ckpt_dir`` (``model.pt``, ``best_networks.pt``, ``network.json``, checkpoints) is refused
   unless resumed or replaced, and the refusal suggests only what works for it (``--resume true`` only when its
   record matches this run's);
3. with ``overwrite``, the earlier run's files are deleted: those its manifest lists and the names a training run
   writes, inside these two folders only, and folders it created once they are empty. Anything else stays;
4. at exit, the files and folders this run created are added to the manifest (:data:`MANIFEST_NAME`), and the
   lock is released.
"""

from __future__ import annotations

import atexit
import datetime
import fnmatch
import json
import logging
import os
import socket
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ignite.distributed as idist
from filelock import FileLock, Timeout

from monai_kdml.record import RECORD_NAME, read_record, record_differences, resume_refusal

__all__ = [
    "LOCK_NAME",
    "MANIFEST_NAME",
    "RUN_FILE_PATTERNS",
    "RunExistsError",
    "RunFolder",
    "RunFolderBusyError",
    "RunFolderError",
]

logger = logging.getLogger(__name__)

LOCK_NAME = ".monai_kdml.lock"
"""The lock file a run holds in each of its folders; its holder is described in ``<LOCK_NAME>.json`` beside it."""
MANIFEST_NAME = "run_files.json"
"""File in ``ckpt_dir`` listing every file and folder the run (and its resumes) created."""
RUN_FILE_PATTERNS = {
    "ckpt_dir": ("model.pt", "best_networks.pt", RECORD_NAME, "checkpoint*.pt", MANIFEST_NAME, "ensemble.ts"),
    "output_dir": ("events.out.tfevents.*", "metrics.csv", "metrics_history.csv"),
}
"""Names a training run writes in each folder: deleted by ``overwrite`` even when a killed run left no manifest."""
_RUN_MARKERS = ("model.pt", "best_networks.pt", RECORD_NAME, "checkpoint*.pt")


class RunFolderError(RuntimeError):
    """A run folder that cannot be used as asked (another run there, or a path that is not what was meant)."""


class RunFolderBusyError(RunFolderError):
    """Another live process holds the run folder."""


class RunExistsError(RunFolderError, FileExistsError):
    """An earlier run is in the folder, and this one neither resumes nor replaces it."""


def _matches(name: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def _inside(path: Path, folders: list[Path]) -> bool:
    return any(path == f or f in path.parents for f in folders)


class RunFolder:
    """The ``ckpt_dir`` and ``output_dir`` of one training run (see the module docstring).

    Args:
        ckpt_dir: the run's ``models/`` folder.
        output_dir: the run's logs and metrics folder.
        resume: the run continues the one in ``ckpt_dir``.
        overwrite: the run replaces the one in ``ckpt_dir`` (deleting that run's files only).
        record: this run's trained-network record, to tell whether ``--resume true`` would fit the run found.
    """

    def __init__(
        self,
        ckpt_dir: str | os.PathLike,
        output_dir: str | os.PathLike,
        resume: bool = False,
        overwrite: bool = False,
        record: Mapping[str, Any] | None = None,
    ) -> None:
        self.paths = {"ckpt_dir": str(ckpt_dir), "output_dir": str(output_dir)}
        self.ckpt_dir, self.output_dir = Path(ckpt_dir), Path(output_dir)
        self.resume, self.overwrite = resume, overwrite
        self.record = None if record is None else dict(record)
        self._locks: list[FileLock] = []
        self._before: set[Path] = set()
        self._created: list[Path] = []  # folders this run made, removed at close if it wrote nothing into them

    # -------------------------------------------------------------- 1-4
    def open(self) -> RunFolder:
        """Lock the folders, refuse or replace an earlier run, and arrange the manifest and the release at exit.

        Raises:
            RunFolderBusyError: another process holds a folder, naming it.
            RunFolderError: a path starts with an unexpanded ``~``, an earlier run is there (neither resumed nor
                replaced; the message says what works), or a resume contradicts that run's record.
        """
        self._check_paths()
        main = idist.get_rank() == 0  # one lock holder, deleter and manifest writer under DDP
        if main:
            self._lock()
        found = self.previous_run()
        refusal = resume_refusal(self.ckpt_dir, self.record) if self.resume and self.record is not None else None
        if refusal:  # before the data are read and checked, which may take minutes
            self.close()
            raise RunFolderError(refusal)
        if found and not self.resume:
            if not self.overwrite:
                self.close()
                raise RunExistsError(self._refusal(found))
            if main:
                self._delete_previous_run()
        if main:
            self._before = self._tree()
            atexit.register(self.close)
            from monai_kdml._cli import set_error_log

            set_error_log(self.output_dir / "logs")
        return self

    def close(self) -> None:
        """Add what this run created to the manifest and release the locks (idempotent; registered at exit)."""
        if self._locks and self._before:
            self._write_manifest()
        for lock in self._locks:
            Path(f"{lock.lock_file}.json").unlink(missing_ok=True)
            lock.release()
        self._locks = []
        self._remove_unused_folders()

    def _remove_unused_folders(self) -> None:
        """Remove the folders this run created and left empty but for its lock and manifest (a run refused before it
        wrote anything there, e.g. by the data pre-flight)."""
        for folder in sorted(self._created, key=lambda p: len(p.parts), reverse=True):
            try:
                if {p.name for p in folder.iterdir()} <= {LOCK_NAME, MANIFEST_NAME}:
                    for name in (LOCK_NAME, MANIFEST_NAME):
                        (folder / name).unlink(missing_ok=True)
                    folder.rmdir()
            except OSError:  # not empty, or gone: leave it
                pass
        self._created = []

    # -------------------------------------------------------------- helpers
    def _check_paths(self) -> None:
        for key, value in self.paths.items():
            if value.startswith("~"):
                raise RunFolderError(
                    f"`{key}` is {value!r}: the shell did not expand '~' (it was quoted), so the run would write to a "
                    f"folder named '~'. Give it unquoted or as {os.path.expanduser(value)!r}."
                )

    def _folders(self) -> list[Path]:
        folders: list[Path] = []
        for folder in (self.ckpt_dir, self.output_dir):
            resolved = folder.expanduser().resolve()
            if resolved not in folders:
                folders.append(resolved)
        return folders

    def _lock(self) -> None:
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "command": " ".join(getattr(sys, "orig_argv", sys.argv)),
        }
        for folder in self._folders():
            missing = [p for p in (folder, *folder.parents) if not p.exists()]
            folder.mkdir(parents=True, exist_ok=True)
            self._created.extend(m for m in missing if m not in self._created)
            # one lock object per path in a process: in-process workflows (tests, notebooks) run one after another
            lock = FileLock(str(folder / LOCK_NAME), timeout=0, is_singleton=True)
            try:
                lock.acquire()
            except Timeout:
                self.close()
                raise RunFolderBusyError(self._busy_message(folder)) from None
            self._locks.append(lock)
            Path(f"{lock.lock_file}.json").write_text(json.dumps(holder) + "\n")

    @staticmethod
    def _busy_message(folder: Path) -> str:
        try:
            holder = json.loads((folder / f"{LOCK_NAME}.json").read_text())
            who = f"process {holder['pid']} on {holder['host']}, started {holder['started']}: {holder['command']}"
        except (OSError, ValueError, KeyError):
            who = "another process (it left no description)"
        return (
            f"{folder} is in use by another run, {who}. Wait for it to end, or write this run elsewhere with "
            "`--bundle_root <folder>`."
        )

    def previous_run(self) -> list[str]:
        """Names of an earlier run's files in ``ckpt_dir`` (empty when there is none)."""
        if not self.ckpt_dir.is_dir():
            return []
        return sorted(p.name for p in self.ckpt_dir.iterdir() if _matches(p.name, _RUN_MARKERS))

    def _refusal(self, found: list[str]) -> str:
        head = f"{self.ckpt_dir} already holds a run ({', '.join(found[:4])})."
        elsewhere = "write this run elsewhere with `--bundle_root <folder>`"
        delete = "delete that run's files with `--overwrite true`"
        try:
            trained = read_record(self.ckpt_dir)
        except (FileNotFoundError, ValueError):
            trained = None
        if self.record is not None and trained is not None:
            if trained.get("bundle", self.record.get("bundle")) != self.record.get("bundle"):
                return f"{head[:-1]} of the {trained['bundle']} bundle: {elsewhere}, or {delete}."
            diffs = record_differences(trained, self.record)
            if diffs:
                return f"{head[:-1]}, trained with other settings ({'; '.join(diffs)}): {elsewhere}, or {delete}."
        return (
            f"{head} Continue it with `--resume true` (raise `--max_epochs` to train longer), {elsewhere}, or {delete}."
        )

    def _manifest(self) -> set[Path]:
        try:
            listed = json.loads((self.ckpt_dir / MANIFEST_NAME).read_text())
            return {Path(p) for p in listed["created"]}
        except (OSError, ValueError, KeyError, TypeError):
            return set()

    def _delete_previous_run(self) -> None:
        folders = self._folders()
        listed = {p for p in self._manifest() if _inside(p, folders)}
        for key, folder in (("ckpt_dir", self.ckpt_dir), ("output_dir", self.output_dir)):
            if folder.is_dir():
                listed |= {
                    p.resolve() for p in folder.iterdir() if p.is_file() and _matches(p.name, RUN_FILE_PATTERNS[key])
                }
        files = sorted(p for p in listed if p.is_file() or p.is_symlink())
        for path in files:
            path.unlink(missing_ok=True)  # another rank may have been first
        for path in sorted((p for p in listed if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
            if not any(path.iterdir()):
                path.rmdir()
        kept = sum(1 for f in folders for p in f.rglob("*") if p.is_file() and not p.name.startswith(LOCK_NAME))
        logger.warning(
            "--overwrite true: deleted the earlier run's %d files in %s; kept %d other files there.",
            len(files),
            " and ".join(str(f) for f in folders),
            kept,
        )

    def _tree(self) -> set[Path]:
        return {p for f in self._folders() if f.is_dir() for p in f.rglob("*")}

    def _write_manifest(self) -> None:
        created = {p for p in self._tree() - self._before if not p.name.startswith(LOCK_NAME)}
        entries = sorted(str(p) for p in (self._manifest() | created) if p.exists())
        path = self.ckpt_dir / MANIFEST_NAME
        if not entries and not path.exists():
            return
        try:
            tmp = path.with_suffix(".json.tmp")
            tmp.write_text(json.dumps({"created": entries}, indent=1) + "\n")
            os.replace(tmp, path)
        except OSError as err:  # at exit: a full disk must not hide the run's own error
            logger.warning("could not write %s (%s).", path, err)
