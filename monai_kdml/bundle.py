"""What both bundles need around MONAI's config workflow: checked overrides and options, run folders that are never
silently overwritten, and the record that makes a trained bundle describe itself.

MONAI's ``python -m monai.bundle run`` accepts any ``--key value`` and silently adds unknown keys, so a misspelt
override (``--max_epoch 1``) trains with the default. :func:`check_cli_overrides` reads the command line the
bundle was started with and refuses keys the configuration does not define, naming the closest valid ones.

Training writes ``models/network.json`` (:data:`RECORD_NAME`) beside ``models/model.pt``: everything the bundle's
``network_def`` needs to rebuild the deployed model. Evaluation, inference and ``ckpt_export`` read it, so nothing
given at training time has to be repeated, and an override that contradicts it is an error naming both values.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import shutil
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import ignite.distributed as idist
from monai.bundle import ConfigParser

from monai_kdml._cli import bundle_cli_argv, literal, parse_fire_args
from monai_kdml.commands import bundle_command

__all__ = [
    "RECORD_NAME",
    "bundle_command",
    "check_against_record",
    "check_cli_overrides",
    "check_dataset_dir",
    "check_loader_workers",
    "flag",
    "pick_metric",
    "prepare_run_folder",
    "read_record",
    "run_record",
    "write_record",
]

logger = logging.getLogger(__name__)

RECORD_NAME = "network.json"
"""File name of the trained-network record in a bundle's ``models/`` folder."""
_CHECKED: set[tuple[str, ...]] = set()


# ---------------------------------------------------------------- command-line overrides
def _cli_command() -> tuple[str, list[str]] | None:
    """``(command, arguments)`` when this process is ``python -m monai.bundle <command> ...``, else ``None``."""
    argv = bundle_cli_argv()
    return None if argv is None else (argv[0], argv[1:])


def _config_ids(config: Mapping | Sequence, prefix: str = "") -> list[str]:
    ids: list[str] = []
    items = config.items() if isinstance(config, Mapping) else enumerate(config)
    for key, value in items:
        name = f"{prefix}{key}"
        ids.append(name)
        if isinstance(value, (Mapping, list)):
            ids.extend(_config_ids(value, f"{name}#"))
    return ids


def check_cli_overrides(known: Iterable[str] = ()) -> None:
    """Refuse command-line keys that the bundle's configuration files do not define.

    A no-op unless this process runs ``python -m monai.bundle run|ckpt_export ...`` (in-process
    ``ConfigWorkflow`` users pass Python keyword arguments, and get Python's own errors). Keys may be nested ids
    (``--validate#dataloader#batch_size 16``); the arguments of MONAI's command itself (``--config_file``,
    ``--meta_file``, ``--filepath``, ...) and ``known`` are accepted. Keys of an ``--args_file`` are checked too.
    Runs once per process.

    Raises:
        ValueError: naming the unknown key and the closest valid keys, before anything is built.
    """
    command = _cli_command()
    if command is None:
        return
    _summarise_errors_at_exit()
    name, args = command
    _, named = parse_fire_args(args)
    key = (name, *args)
    if key in _CHECKED:
        return
    import inspect

    import monai.bundle.scripts as scripts

    accepted = set(known) | {"args_file", "config_file", "meta_file", "logging_file"}
    function = getattr(scripts, name, None)
    if function is not None:
        accepted |= {p for p in inspect.signature(function).parameters if p != "override"}
    if "args_file" in named:
        extra = ConfigParser.load_config_file(str(literal(named["args_file"])))
        named = {**{str(k): v for k, v in extra.items()}, **named}
    files = literal(named.get("config_file"))
    if not files:
        return
    files = [str(f) for f in (files if isinstance(files, (list, tuple)) else [files])]
    parser = ConfigParser()
    parser.read_config(files)
    for key_name in named:
        if key_name in accepted or key_name in parser:
            continue
        ids = _config_ids(parser.get())
        close = difflib.get_close_matches(key_name, ids, n=3, cutoff=0.6)
        hint = f" Did you mean {', '.join(f'--{c}' for c in close)}?" if close else ""
        raise ValueError(
            f"`--{key_name}` is not a key of {', '.join(files)}; MONAI would add it and ignore it.{hint} "
            "Every key the bundle reads is listed at the top of its train.json and in its README."
        )
    _CHECKED.add(key)


def _root_cause(error: BaseException) -> BaseException:
    """The innermost exception under MONAI's "Failed to evaluate/instantiate" wrappers."""
    seen: set[int] = set()
    while id(error) not in seen:
        seen.add(id(error))
        inner = error.__cause__ or (None if error.__suppress_context__ else error.__context__)
        if inner is None or not isinstance(error, RuntimeError) or "Failed to" not in str(error):
            break
        error = inner
    return error


def _summarise_errors_at_exit() -> None:
    """After the usual traceback, end with the one line that says what is wrong (MONAI ends with its wrapper)."""
    previous = sys.excepthook

    def hook(kind: type[BaseException], error: BaseException, trace: Any) -> None:
        previous(kind, error, trace)
        cause = _root_cause(error)
        if cause is not error:
            print(f"\nmonai-kdml: {type(cause).__name__}: {cause}", file=sys.stderr)

    if getattr(sys.excepthook, "__name__", "") != "hook":
        sys.excepthook = hook


# ---------------------------------------------------------------- options shared by both bundles
def flag(value: Any, key: str) -> bool:
    """A bundle switch as a bool: ``True``/``False``, or the strings ``"true"``/``"false"`` (any case) that
    python-fire passes on for ``--key true`` (as a string, ``"false"`` would count as set).

    The bundles convert each switch once, as a component of their ``switch`` section
    (``{"_target_": "monai_kdml.bundle.flag", "value": "@amp", "key": "amp"}``), and read ``@switch#amp``.

    Raises:
        ValueError: anything else, naming ``key``.
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise ValueError(f"`{key}` must be true or false, got {value!r}.")


def check_dataset_dir(dataset_dir: str | os.PathLike | None) -> None:
    """Refuse an empty ``dataset_dir`` (usually an unset shell variable); ``None`` selects the demo data.

    Raises:
        ValueError: naming the value and what to do.
    """
    if dataset_dir is not None and (not isinstance(dataset_dir, (str, os.PathLike)) or not str(dataset_dir).strip()):
        raise ValueError(
            f"`dataset_dir` is {dataset_dir!r}: give a data set folder, or leave it out (null) to train on the "
            "synthetic demo data (an empty value is refused: it is usually an unset variable)."
        )


def check_loader_workers(num_workers: int, persistent_workers: bool) -> None:
    """Refuse ``persistent_workers`` without workers, naming both keys (PyTorch's own message names neither).

    Raises:
        ValueError: ``persistent_workers`` with ``num_workers`` 0.
    """
    if persistent_workers and not num_workers:
        raise ValueError(
            "`persistent_workers` keeps DataLoader worker processes between epochs and needs `num_workers` > 0 "
            f"(got {num_workers!r}); set `--persistent_workers false` or give workers."
        )


def pick_metric(metrics: Mapping[str, Any], name: str, key: str = "key_metric") -> dict[str, Any]:
    """``{name: metrics[name]}`` for an evaluator's ``key_val_metric``; a bad name lists the valid ones.

    Raises:
        ValueError: ``name`` is not one of ``metrics``.
    """
    if name not in metrics:
        close = difflib.get_close_matches(str(name), list(metrics), n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"`{key}` is {name!r}, which is not a metric of this bundle.{hint} Valid: {sorted(metrics)}.")
    return {name: metrics[name]}


# ---------------------------------------------------------------- run folders
_RUN_FILES = ("model.pt", "best_networks.pt", RECORD_NAME)


def prepare_run_folder(ckpt_dir: str | Path, output_dir: str | Path, resume: bool, overwrite: bool = False) -> None:
    """Refuse to train into a folder that holds another run, unless it is resumed or explicitly replaced.

    A run is there when ``ckpt_dir`` holds ``model.pt``, ``best_networks.pt``, the record or a training checkpoint.
    With ``overwrite``, that run's ``ckpt_dir`` files and its ``output_dir`` are deleted first.

    Raises:
        FileExistsError: a run is there and neither ``resume`` nor ``overwrite`` is set; the message says what to do.
    """
    models = Path(ckpt_dir)
    found = sorted(p.name for p in models.glob("*") if p.name in _RUN_FILES or p.name.startswith("checkpoint"))
    if not found or resume:
        return
    if not overwrite:
        raise FileExistsError(
            f"{models} already holds a run ({', '.join(found[:4])}). Continue it with `--resume true` (raise "
            "`--max_epochs` to train longer), write this run elsewhere with `--bundle_root <folder>`, or delete "
            "that run with `--overwrite true`."
        )
    logger.warning("--overwrite true: deleting the run in %s and %s.", models, output_dir)
    for name in found:
        (models / name).unlink(missing_ok=True)  # another rank may have been first
    shutil.rmtree(output_dir, ignore_errors=True)


# ---------------------------------------------------------------- the trained-network record
def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=lambda v: v.__dict__ if hasattr(v, "__dict__") else str(v)))


def write_record(ckpt_dir: str | Path, record: Mapping[str, Any], resume: bool = False) -> Path:
    """Write ``record`` as ``<ckpt_dir>/network.json`` (atomically); on resume, check it against the one there.

    Raises:
        ValueError: resuming a run whose record differs, naming each differing key with both values.
    """
    path = Path(ckpt_dir) / RECORD_NAME
    record = _jsonable(dict(record))
    if resume and path.is_file():
        check_against_record(read_record(ckpt_dir), **record)
        return path
    if idist.get_rank() != 0:  # one writer under DDP
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return path


def run_record(
    record: Mapping[str, Any], cohorts: Sequence[str] | None = None, mode: str | None = None, **extra: Any
) -> dict[str, Any]:
    """``record`` plus what only some runs have: ``cohorts`` and ``mode`` for a cohort run, and each ``extra`` value
    that is not ``None`` (e.g. mixed student architectures), so a single-mode run's record keeps its keys."""
    out = dict(record)
    if cohorts is not None:
        out["cohorts"], out["mode"] = [str(c) for c in cohorts], str(mode)
    out.update({key: value for key, value in extra.items() if value is not None})
    return out


def read_record(ckpt_dir: str | Path, fallback: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The record in ``ckpt_dir``; ``fallback`` (with a warning) when there is none and a fallback is given.

    Raises:
        FileNotFoundError: no record and no fallback.
        ValueError: an unreadable record.
    """
    path = Path(ckpt_dir) / RECORD_NAME
    if not path.is_file():
        if fallback is None:
            raise FileNotFoundError(f"{path} does not exist: train the bundle first (it writes this record).")
        if (Path(ckpt_dir) / "model.pt").is_file():
            logger.warning("%s has no %s: using the configuration's network settings.", ckpt_dir, path.name)
        return _jsonable(dict(fallback))
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: cannot read the trained-network record ({err}).") from None
    if not isinstance(record, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(record).__name__}.")
    return record


def check_against_record(record: Mapping[str, Any], **configured: Any) -> None:
    """Raise when a configured value contradicts the trained-network ``record`` (keys absent from it are skipped).

    Raises:
        ValueError: naming every differing key with the trained and the configured value.
    """
    configured = _jsonable(configured)
    diffs = [
        f"`{key}`: trained with {record[key]!r}, configured {value!r}"
        for key, value in configured.items()
        if key in record and record[key] != value
    ]
    if diffs:
        raise ValueError(
            "the configuration contradicts the trained model's record (models/network.json): "
            + "; ".join(diffs)
            + ". Drop these overrides (the record supplies them), or train a new model."
        )
