"""What an evaluation scores, and what its report says about it: one rule for every app.

A held-out test split is scored when there is one. The validation split selected ``best_networks.pt``, so scoring
it flatters the model: that needs an explicit ``allow_validation`` and the report says "optimistic". An external
cohort (another hospital's folder) is scored whole, never re-split, and its report says so in its name and title.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["EvaluationSplit", "check_no_overlap", "external_report_name", "external_split", "held_out_split"]

logger = logging.getLogger(__name__)


@dataclass
class EvaluationSplit:
    """The items an evaluation scores, and how its report names them.

    Args:
        name: folder name of the report under the bundle's ``eval/``: ``test``, ``validation`` or
            :func:`external_report_name` of the cohort, so the files say what was scored.
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
    return EvaluationSplit(external_report_name(root), list(items), f"the EXTERNAL cohort {root}: {counts}", report)


def external_report_name(folder: str | Path) -> str:
    """The report folder of an external cohort: ``external_<parent>_<name>_<8 hex digits of its absolute path>``.

    Two cohorts whose folders share a name (``siteA/test``, ``siteB/test``) get different folders, so neither report
    replaces the other; the same cohort always gets the same folder, so a re-evaluation replaces only its own report.

    Example::

        >>> external_report_name("/data/siteA/test").startswith("external_siteA_test_")
        True
    """
    root = Path(folder).expanduser().resolve()
    digest = hashlib.sha256(str(root).encode()).hexdigest()[:8]
    readable = "_".join(part for part in (root.parent.name, root.name) if part) or "cohort"
    safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in readable)
    return f"external_{safe}_{digest}"


def check_no_overlap(
    training: Iterable[dict[str, Any]],
    test: Iterable[dict[str, Any]],
    test_source: str,
    image_key: str = "image",
    patient_key: str | None = None,
    patients_are_ids: bool = True,
) -> None:
    """Refuse a test set that shares files (or patients) with the training data: it would be scored as held-out.

    Files are compared by their resolved paths, so a link or another spelling of a training file counts as that file.

    Args:
        training: the training and validation items (both shaped the networks or selected them).
        test: the items about to be scored as held-out.
        test_source: how the message names the test set (e.g. "`test_dir` /data/siteA/test").
        image_key: the item key holding the file path.
        patient_key: the item key holding the patient id; ``None``: files only.
        patients_are_ids: whether shared patient ids are an error (``True``), or only a counted WARNING (``False``:
            ids derived from file stems may coincide between unrelated cohorts).

    Raises:
        ValueError: a file, or (``patients_are_ids``) a patient, in both; the message counts them and names three.
    """
    train_list, test_list = list(training), list(test)

    def resolved(items: list[dict[str, Any]]) -> set[str]:
        return {str(Path(str(item[image_key])).expanduser().resolve()) for item in items}

    files = sorted(resolved(train_list) & resolved(test_list))
    if files:
        raise ValueError(
            f"{test_source}: {len(files)} of its {len(test_list)} files were used for training or validation (e.g. "
            f"{', '.join(files[:3])}): scoring them as held-out would be optimistic. Give a cohort the training never "
            "read."
        )
    if patient_key is None:
        return
    patients = sorted({str(t[patient_key]) for t in train_list} & {str(t[patient_key]) for t in test_list})
    if not patients:
        return
    message = (
        f"{test_source}: {len(patients)} of its {len({str(t[patient_key]) for t in test_list})} patients also have "
        f"training or validation tiles (e.g. {', '.join(patients[:3])}); a patient's tiles are alike, so the "
        "held-out scores would be optimistic."
    )
    if patients_are_ids:
        raise ValueError(message + " Give each patient one split.")
    logger.warning("%s Check that these ids name the same patients.", message)
