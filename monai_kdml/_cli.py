"""Whether this process is ``python -m monai.bundle <command> ...`` (no heavy imports: read before torch loads)."""

from __future__ import annotations

import ast
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["bundle_cli_argv", "literal", "parse_fire_args"]


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
