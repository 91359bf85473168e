"""What an evaluation scores, and what its report says about it: one rule for every app.

A held-out test split is scored when there is one. The validation split selected ``best_networks.pt``, so scoring
it flatters the model: that needs an explicit ``allow_validation`` and the report says "optimistic". An external
cohort (another hospital's folder) is scored whole, never re-split, and its report says so in its name and title.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["EvaluationSplit", "external_split", "held_out_split"]


@dataclass
class EvaluationSplit:
    """The items an evaluation scores, and how its report names them.

    Args:
        name: folder name of the report under the bundle's ``eval/``: ``test``, ``validation`` or
            ``external_<folder>``, so the files say what was scored.
        items: the datalist.
        title: what the report's heading says about the data.
        report: the pre-flight report of an external folder (read, skipped and why), else ``None``.
    """

    name: str
    items: list[dict[str, Any]]
    title: str
    report: Any = None


def held_out_split(
    test: Sequence[dict[str, Any]],
    val: Sequence[dict[str, Any]],
    source: str,
    allow_validation: bool = False,
    unit: str = "images",
) -> EvaluationSplit:
    """The test split when there is one, else the validation split if explicitly allowed.

    Args:
        test: the held-out test items (may be empty).
        val: the validation items (model selection).
        source: how the title names the data set (e.g. its folder, or "the synthetic DEMO").
        allow_validation: score the validation split when there is no test split.
        unit: what an item is, for the title ("tiles", "frames").

    Raises:
        ValueError: no test split and ``allow_validation`` is false; the message names both ways out.
    """
    if test:
        return EvaluationSplit("test", list(test), f"the held-out test split of {source} ({len(test)} {unit})")
    if not allow_validation:
        raise ValueError(
            f"{source} has no test split. Scoring the validation split would be optimistic: it selected "
            "best_networks.pt. Give an external cohort with `--test_dir <folder>`, or accept the optimistic estimate "
            "with `--allow_validation_as_test true`."
        )
    title = f"the VALIDATION split of {source} ({len(val)} {unit}; OPTIMISTIC: it selected best_networks.pt)"
    return EvaluationSplit("validation", list(val), title)


def external_split(
    folder: str | Path, items: Sequence[dict[str, Any]], counts: str, report: Any = None
) -> EvaluationSplit:
    """An external cohort scored whole; ``counts`` says how many files were read and skipped (and why).

    Raises:
        ValueError: no readable item in ``folder``.
    """
    root = Path(folder)
    if not items:
        raise ValueError(f"`test_dir` {root}: no readable image ({counts}).")
    return EvaluationSplit(
        f"external_{root.name or 'cohort'}", list(items), f"the EXTERNAL cohort {root}: {counts}", report
    )
