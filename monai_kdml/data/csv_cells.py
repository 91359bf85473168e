"""CSV cells a spreadsheet shows as text, never runs: the one escaping rule of every CSV the project writes.

A cell starting with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return is a formula to Excel, LibreOffice and
Google Sheets (OWASP "CSV injection"); tile and patient names come from users' file names, so they may start so. The
OWASP remedy is applied: such a cell gets a leading single quote (shown as text, the quote hidden). Numbers stay as
they are (``-0.25``, ``-0.012 ± 0.004``: nothing but digits, a sign, a point, an exponent), and so does a lone ``-``
(the reports' "no value"), so the project's own readers parse the files unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["escape_cell", "escape_row", "escape_rows"]

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_PLAIN = re.compile(rf"-|[-+]?inf|{_NUMBER}%?|{_NUMBER} ± {_NUMBER}")  # numbers, mean ± std, "no value"


def escape_cell(value: Any) -> Any:
    """``value`` with a leading ``'`` when a spreadsheet would read it as a formula; anything else unchanged.

    Example::

        >>> escape_cell("=HYPERLINK(\\"http://x\\")"), escape_cell("-0.25"), escape_cell(-0.25), escape_cell("TCGA-AA")
        ('\\'=HYPERLINK("http://x")', '-0.25', -0.25, 'TCGA-AA')
    """
    if not isinstance(value, str) or not value.startswith(_FORMULA_START) or _PLAIN.fullmatch(value):
        return value
    return "'" + value


def escape_row(row: Mapping[str, Any] | Iterable[Any]) -> dict[str, Any] | list[Any]:
    """Every cell of one row escaped (:func:`escape_cell`): a dict for ``csv.DictWriter`` (its values; the keys are
    the writer's own column names), a list for ``csv.writer``."""
    if isinstance(row, Mapping):
        return {k: escape_cell(v) for k, v in row.items()}
    return [escape_cell(v) for v in row]


def escape_rows(rows: Iterable[Mapping[str, Any] | Iterable[Any]]) -> list[Any]:
    """:func:`escape_row` of every row."""
    return [escape_row(row) for row in rows]
