"""Whether this process is ``python -m monai.bundle <command> ...`` (no heavy imports: read before torch loads), and
how it ends on an error: with one line that says what is wrong, the traceback kept in a file.

MONAI's command line ends an error with an 80-110-line traceback whose last line is its own "Failed to evaluate"
wrapper; Ctrl-C ends with a raw ``KeyboardInterrupt`` traceback. Under the bundle command line,
:func:`install_error_summary` makes both end with one ``monai-kdml:`` line (the innermost cause), writes the
traceback to a file (the run's ``<output_dir>/logs/`` once its folder is open, else the temporary folder) and says
where; ``MONAI_KDML_DEBUG=1`` prints the traceback as before. Tracebacks that handlers log on the way out (MONAI's
``StatsHandler`` logs every engine exception with its traceback) go to the same file.
"""

from __future__ import annotations

import ast
import datetime
import logging
import os
import re
import sys
import tempfile
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

__all__ = [
    "DEBUG_VARIABLE",
    "bundle_cli_argv",
    "error_log",
    "install_error_summary",
    "literal",
    "parse_fire_args",
    "root_cause",
    "set_error_log",
]

DEBUG_VARIABLE = "MONAI_KDML_DEBUG"
"""Set to 1 to see full tracebacks on the terminal (they go to a log file otherwise)."""
_LOG: dict[str, str | None] = {"folder": None, "file": None}


def bundle_cli_argv() -> list[str] | None:
    """``[command, *arguments]`` when this process runs MONAI's bundle command line, else ``None``."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    argv0 = Path(sys.argv[0]) if sys.argv else Path()
    as_script = argv0.parts[-3:] == ("monai", "bundle", "__main__.py")
    if getattr(spec, "name", None) != "monai.bundle.__main__" and not as_script:
        return None
    if len(sys.argv) < 2:
        return None
    return list(sys.argv[1:])


def parse_fire_args(args: Sequence[str]) -> tuple[list[Any], dict[str, Any]]:
    """Positional arguments and ``--key value`` / ``--key=value`` / ``--flag`` pairs as python-fire reads them."""
    positional: list[Any] = []
    named: dict[str, Any] = {}
    i = 0
    while i < len(args):
        token = args[i]
        if not token.startswith("--"):
            positional.append(token)
            i += 1
            continue
        key, eq, value = token[2:].partition("=")
        if not eq:
            if i + 1 < len(args) and not args[i + 1].startswith("--"):
                value, i = args[i + 1], i + 1
            else:
                value = "True"
        named[key.replace("-", "_") if key in ("config-file", "meta-file", "args-file") else key] = value
        i += 1
    return positional, named


def literal(value: Any) -> Any:
    try:
        return ast.literal_eval(value) if isinstance(value, str) else value
    except (ValueError, SyntaxError):
        return value


# ---------------------------------------------------------------- errors: one line on the terminal
def _debug() -> bool:
    return os.environ.get(DEBUG_VARIABLE, "").strip().lower() not in ("", "0", "false", "no")


def set_error_log(folder: str | os.PathLike[str]) -> None:
    """Write tracebacks to ``folder`` from now on (a run calls it once its own output folder is locked)."""
    _LOG["folder"], _LOG["file"] = str(folder), None


def error_log() -> Path:
    """This process's traceback file (created on first use): ``<folder>/error-<time>-<pid>.log``."""
    if _LOG["file"] is None:
        folder = Path(_LOG["folder"] or Path(tempfile.gettempdir()) / "monai-kdml")
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        _LOG["file"] = str(folder / f"error-{stamp}-{os.getpid()}.log")
    return Path(str(_LOG["file"]))


def _keep_traceback(text: str) -> str:
    """Append ``text`` to the traceback file; returns where it went (or why it could not)."""
    path = error_log()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as f:
            f.write(text if text.endswith("\n") else text + "\n")
    except OSError as err:
        return f"not kept: {err}"
    return str(path)


def root_cause(error: BaseException) -> BaseException:
    """The innermost exception under MONAI's "Failed to evaluate/instantiate" wrappers."""
    seen: set[int] = set()
    while id(error) not in seen:
        seen.add(id(error))
        inner = error.__cause__ or (None if error.__suppress_context__ else error.__context__)
        if inner is None or not isinstance(error, RuntimeError) or "Failed to" not in str(error):
            break
        error = inner
    return error


def _state_dict_mismatch(message: str) -> str | None:
    """PyTorch's list of every missing and unexpected key (hundreds of names), as counts and one example each."""
    found = re.match(r"Error\(s\) in loading state_dict for (\w+):", message)
    if found is None:
        return None
    parts = []
    for label, pattern in (
        ("missing", r"Missing key\(s\) in state_dict: (.*?)(?:\.\s*$|\.\s*\n|\.\s*Unexpected)"),
        ("unexpected", r"Unexpected key\(s\) in state_dict: (.*?)(?:\.\s*$|\.\s*\n)"),
    ):
        keys = re.findall(r'"([^"]+)"', m.group(1)) if (m := re.search(pattern, message, re.S)) else []
        if keys:
            parts.append(f"{len(keys)} {label} keys (e.g. {keys[0]})")
    sizes = re.findall(r"size mismatch for ([^:]+):", message)
    if sizes:
        parts.append(f"{len(sizes)} of other shapes (e.g. {sizes[0]})")
    argv = bundle_cli_argv()
    ckpt = parse_fire_args(argv[1:])[1].get("ckpt_file") if argv else None
    where = f"{ckpt} does not fit" if ckpt else "the weights file does not fit"
    return f"{where} the network {found.group(1)} the configuration builds: {', '.join(parts)}; it is from another run."


def _summary(error: BaseException) -> str:
    if isinstance(error, KeyboardInterrupt):
        return "monai-kdml: interrupted (Ctrl-C)."
    cause = root_cause(error)
    return f"monai-kdml: {type(cause).__name__}: {_state_dict_mismatch(str(cause)) or cause}"


def _record_factory(make: Callable[..., logging.LogRecord]) -> Callable[..., logging.LogRecord]:
    """Wrap the log-record factory: a logged exception keeps its message, its traceback goes to the traceback file
    (every handler and logger alike, whenever it was configured)."""

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make(*args, **kwargs)
        if record.exc_info and record.exc_info[0] is not None and not _debug():
            where = _keep_traceback("".join(traceback.format_exception(*record.exc_info)))
            record.msg = f"{record.msg} (traceback: {where})"
            record.exc_info, record.exc_text = None, None
        return record

    factory.monai_kdml = True  # type: ignore[attr-defined]
    return factory


def _hook(kind: type[BaseException], error: BaseException, trace: TracebackType | None) -> None:
    if _debug():
        sys.__excepthook__(kind, error, trace)
        print(f"\n{_summary(error)}", file=sys.stderr)
        return
    where = _keep_traceback("".join(traceback.format_exception(kind, error, trace)))
    print(f"(full traceback: {where}; {DEBUG_VARIABLE}=1 prints it here)", file=sys.stderr)
    print(_summary(error), file=sys.stderr)


def install_error_summary() -> None:
    """Under ``python -m monai.bundle``: end an uncaught error or Ctrl-C with one line (module docstring)."""
    if bundle_cli_argv() is None or sys.excepthook is _hook:
        return
    sys.excepthook = _hook
    make = logging.getLogRecordFactory()
    if not getattr(make, "monai_kdml", False):
        logging.setLogRecordFactory(_record_factory(make))
