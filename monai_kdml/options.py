"""Checks of scalar options, shared by the constructors that take them, with messages naming the config key."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["check_count", "check_number"]


def check_number(key: str, value: Any, positive: bool = False) -> float:
    """``value`` as given when it is a finite number ``>= 0`` (``> 0`` when ``positive``).

    Raises:
        ValueError: e.g. "`kd_weight` must be a finite number >= 0, got -5".
    """
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (positive and value == 0):
        raise ValueError(f"`{key}` must be a finite number {'> 0' if positive else '>= 0'}, got {value!r}.")
    return value


def check_count(key: str, value: Any, minimum: int = 1) -> int:
    """``value`` when it is an integer ``>= minimum``.

    Raises:
        ValueError: e.g. "`max_epochs` must be an integer >= 1, got 0".
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"`{key}` must be an integer >= {minimum}, got {value!r}.")
    return value
