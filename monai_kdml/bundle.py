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
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from monai.bundle import ConfigParser

from monai_kdml._cli import bundle_cli_argv, install_error_summary, literal, parse_fire_args
from monai_kdml.commands import bundle_command, evaluate_command
from monai_kdml.record import (
    RECORD_NAME,
    check_against_record,
    check_weights_file,
    data_source,
    read_record,
    run_record,
    write_record,
)
from monai_kdml.runfolder import RunFolder

__all__ = [
    "RECORD_NAME",
    "bundle_command",
    "check_against_record",
    "check_cli_overrides",
    "check_dataset_dir",
    "check_loader_workers",
    "check_training_options",
    "check_validation_schedule",
    "check_weights_file",
    "data_source",
    "evaluate_command",
    "expand_path",
    "flag",
    "pick_metric",
    "prepare_run_folder",
    "read_record",
    "run_record",
    "write_record",
]

logger = logging.getLogger(__name__)

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
    install_error_summary()
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


def check_training_options(
    teacher_mode: Any,
    teacher_stage_active: bool,
    max_epochs: Any,
    val_interval: Any,
    learning_rate: Any,
    weight_decay: Any,
    teacher_learning_rate: Any,
    teacher_weight_decay: Any,
    warmup_epochs: Any,
    kd_ramp_epochs: Any,
    ml_ramp_epochs: Any,
    ramp_shape: Any,
    teacher_gate_span: Any,
) -> None:
    """Refuse bad values of the training options that are read only after the data check or the teacher stage
    (stage 1 may take hours): each with the rule its component applies, so a typo costs seconds. The loss checks its
    own options when the preflight builds it.

    A ``--teacher_mode online`` typed on the command line while the teacher stage runs is refused too: the stage trains
    the teacher first and distils from it frozen, so the online teacher asked for would silently not happen.

    Raises:
        ValueError: naming the key, the value and the rule.
    """
    from monai_kdml.commands import cli_overrides
    from monai_kdml.handlers.schedules import check_ramp_shape
    from monai_kdml.keys import TeacherMode
    from monai_kdml.options import check_count, check_number

    mode = TeacherMode.parse(teacher_mode)
    if teacher_stage_active and mode == TeacherMode.ONLINE and "teacher_mode" in cli_overrides():
        raise ValueError(
            "`--teacher_mode online` asks for a teacher trained in the same iterations, but `teacher_stage` (default "
            "true) trains the teacher first, alone, and distils from it frozen. Add `--teacher_stage false` for the "
            "online teacher (the paper's protocol), or leave `--teacher_mode` out."
        )
    check_count("max_epochs", max_epochs)
    check_count("val_interval", val_interval)
    for key, value in (("learning_rate", learning_rate), ("teacher_learning_rate", teacher_learning_rate)):
        check_number(key, value, positive=True)
    for key, value in (
        ("weight_decay", weight_decay),
        ("teacher_weight_decay", teacher_weight_decay),
        ("kd_ramp_epochs", kd_ramp_epochs),
        ("ml_ramp_epochs", ml_ramp_epochs),
        ("teacher_gate_span", teacher_gate_span),
    ):
        check_number(key, value)
    check_count("warmup_epochs", warmup_epochs, minimum=0)
    check_ramp_shape(ramp_shape, "ramp_shape")


def check_dataset_dir(dataset_dir: str | os.PathLike | None) -> None:
    """Refuse an empty ``dataset_dir`` (usually an unset shell variable) and one that does not exist, before the
    teacher stage starts; ``None`` selects the demo data. What the folder holds is the data loaders' check.

    Raises:
        ValueError: an empty value, naming what to do.
        FileNotFoundError: a path that does not exist.
    """
    if dataset_dir is not None and (not isinstance(dataset_dir, (str, os.PathLike)) or not str(dataset_dir).strip()):
        raise ValueError(
            f"`dataset_dir` is {dataset_dir!r}: give a data set folder, or leave it out (null) to train on the "
            "synthetic demo data (an empty value is refused: it is usually an unset variable)."
        )
    if dataset_dir is not None and not Path(expand_path(dataset_dir)).exists():
        raise FileNotFoundError(f"dataset_dir {expand_path(dataset_dir)} does not exist.")


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


def check_validation_schedule(max_epochs: Any, val_interval: Any, val_fraction: Any) -> None:
    """Refuse a training whose validation never runs: it would end with rc 0 and no ``model.pt`` (the best model is
    chosen, and saved, at validation). Warns when the last epochs are not validated.

    Args:
        max_epochs: ``max_epochs`` (the total, also when resuming).
        val_interval: validate every ``val_interval`` epochs.
        val_fraction: share of the training data held out for validation.

    Raises:
        ValueError: ``val_interval`` > ``max_epochs``, or ``val_fraction`` 0, naming both values.
    """
    if isinstance(val_fraction, (int, float)) and not isinstance(val_fraction, bool) and val_fraction <= 0:
        raise ValueError(
            f"`val_fraction` is {val_fraction}: no validation split, so no epoch would be validated and no model.pt "
            "saved. Hold out some data (e.g. `--val_fraction 0.2`)."
        )
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in (max_epochs, val_interval)):
        return  # the options check names these
    if val_interval > max_epochs:
        raise ValueError(
            f"`val_interval` {val_interval} > `max_epochs` {max_epochs}: no epoch would be validated and no model.pt "
            f"saved. Use `--val_interval` <= {max_epochs}."
        )
    if max_epochs % val_interval:
        last = max_epochs - max_epochs % val_interval
        logger.warning(
            "`val_interval` %d: the last validation is at epoch %d of %d; the model saved is chosen among the "
            "validated epochs only.",
            val_interval,
            last,
            max_epochs,
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
def expand_path(path: str | os.PathLike) -> str:
    """``path`` with a leading ``~`` expanded, as the shell would have: a quoted ``--bundle_root '~/run'`` reaches
    the config unexpanded, and would otherwise make a folder named ``~``."""
    return os.path.expanduser(str(path))


def prepare_run_folder(ckpt_dir: str | Path, output_dir: str | Path, resume: bool, overwrite: bool = False) -> None:
    """Open a :class:`~monai_kdml.runfolder.RunFolder` over ``ckpt_dir`` and ``output_dir`` (kept for configs that
    call it; the bundles declare the component itself, with their record, under ``run_folder``).

    Raises:
        RunFolderError: another run is there (neither resumed nor replaced), or holds the folder now.
    """
    RunFolder(ckpt_dir, output_dir, resume=resume, overwrite=overwrite).open()
