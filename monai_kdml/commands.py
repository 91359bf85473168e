"""The command lines a bundle suggests at the end of a run, with the overrides of the command that ran.

``python -m monai.bundle run --config_file bundles/msi/train.json --bundle_root /runs/a --dataset_dir /data/kather``
ends with the evaluation command for the same folder and data; :func:`bundle_command` builds it from this process's
own command line (read, never re-parsed by the config), so what the user typed is what they see again.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from monai_kdml._cli import bundle_cli_argv, literal, parse_fire_args

__all__ = ["bundle_command", "cli_overrides", "command_argument", "evaluate_command"]

# arguments of MONAI's command itself, never overrides of a config
_COMMAND_ARGS = ("config_file", "meta_file", "args_file", "filepath", "ckpt_file", "net_id", "key_in_ckpt")


def cli_overrides() -> dict[str, str]:
    """``--key value`` overrides of this process's ``python -m monai.bundle`` command line, as typed (else ``{}``)."""
    argv = bundle_cli_argv()
    if argv is None:
        return {}
    _, named = parse_fire_args(argv[1:])
    return {k: str(v) for k, v in named.items() if k not in _COMMAND_ARGS}


def _bundle_dir(default_dir: str) -> str:
    """The bundle's folder as the user typed it (from ``--config_file``), else ``default_dir``."""
    argv = bundle_cli_argv()
    if argv is not None:
        _, named = parse_fire_args(argv[1:])
        files = literal(named.get("config_file"))
        first = files[0] if isinstance(files, (list, tuple)) and files else files
        if isinstance(first, str) and first:
            return str(PurePosixPath(first).parent) if "/" in first else "."
    return default_dir


def _quote(value: Any) -> str:
    text = str(value)
    return text if text.startswith("<") and text.endswith(">") else shlex.quote(text)


def bundle_command(
    configs: str | Sequence[str],
    command: str = "run",
    keep: Iterable[str] | None = None,
    drop: Iterable[str] = ("resume", "overwrite"),
    add: Mapping[str, Any] | None = None,
    meta_file: bool = False,
    default_dir: str = "bundles/msi",
) -> str:
    """``python -m monai.bundle <command> --config_file <configs> <overrides>`` for a follow-up step.

    Args:
        configs: config file names inside the bundle folder, e.g. ``["train.json", "evaluate.json"]``.
        command: MONAI's bundle command, e.g. ``"run"`` or ``"ckpt_export network_def"``.
        keep: the overrides of the current command to repeat (``None``: all but ``drop``).
        drop: overrides never repeated.
        add: arguments to add or replace; a value like ``"<folder of tiles>"`` is shown as a placeholder.
        meta_file: add ``--meta_file <bundle folder>/metadata.json``.
        default_dir: the bundle folder when this process is not the bundle command line (e.g. in-process runs).
    """
    folder = _bundle_dir(default_dir)
    names = [configs] if isinstance(configs, str) else list(configs)
    files = [str(PurePosixPath(folder) / name) for name in names]
    config = files[0] if len(files) == 1 else '"[' + ",".join(f"'{f}'" for f in files) + ']"'
    overrides = cli_overrides()
    kept = set(overrides) if keep is None else set(keep)
    args = {k: v for k, v in overrides.items() if k in kept and k not in set(drop)}
    args.update({k: str(v) for k, v in (add or {}).items()})
    parts = ["python -m monai.bundle", command, "--config_file", config]
    if meta_file:
        parts += ["--meta_file", str(Path(folder) / "metadata.json")]
    parts += [f"--{k} {_quote(v)}" for k, v in args.items()]
    return " ".join(parts)


def command_argument(name: str, command: str) -> str | None:
    """The value of ``--<name>`` when this process is ``python -m monai.bundle <command> ...``, else ``None``."""
    argv = bundle_cli_argv()
    if argv is None or argv[0] != command:
        return None
    _, named = parse_fire_args(argv[1:])
    value = named.get(name)
    return None if value is None else str(literal(value))


def evaluate_command(
    configs: str | Sequence[str],
    has_test: bool,
    placeholder: str = "<folder of test images>",
    default_dir: str = "bundles/msi",
) -> str:
    """The evaluation command a training run suggests: as is when its data set has a test split, else with
    ``--test_dir <placeholder>`` (the command without it would stop at "no test split").

    Args:
        configs: config file names inside the bundle folder, e.g. ``["train.json", "evaluate.json"]``.
        has_test: whether the run's data set has a test split.
        placeholder: what to write for the test folder.
        default_dir: the bundle folder when this process is not the bundle command line.
    """
    add = None if has_test else {"test_dir": placeholder}
    return bundle_command(configs, add=add, default_dir=default_dir)
