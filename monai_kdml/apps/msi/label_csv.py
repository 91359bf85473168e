"""Tiles listed in a CSV instead of class folders: ``path,label[,patient][,split]``, one row per tile.

- ``path``: the tile, relative to the CSV's folder (and inside it) or absolute;
- ``label``: a class name or alias of ``class_names`` (case-insensitive) or a class index ``0..C-1``;
- ``patient`` (optional): the patient id; an empty cell or no column takes the id from the file name
  (:func:`~monai_kdml.apps.msi.kather.patient_id_from_path`), so ids that no file name carries still give true
  patient-level splits and AUCs;
- ``split`` (optional): ``train``, ``val`` or ``test``. Without the column every row is in the training pool, from
  which the validation split is drawn by patient. ``val`` rows, when there are any, are the validation split as given.

Column names are case-insensitive (``image`` for ``path``, ``patient_id`` for ``patient`` and ``class`` for ``label``
are accepted too); other columns are ignored; ``,``, ``;`` and tab delimit. Whether the files exist and decode is
the pre-flight's (:func:`~monai_kdml.apps.msi.tiles.check_tiles`): missing and unreadable files are counted skips.
"""

from __future__ import annotations

import csv
import logging
import os
from collections import Counter
from pathlib import Path
from typing import Any

from monai_kdml.apps.msi.classes import TileClasses
from monai_kdml.apps.msi.kather import KATHER, patient_id_from_path, tcga_patient_id

__all__ = ["SPLITS", "is_label_csv", "read_label_csv"]

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
"""Values of the optional ``split`` column."""
_COLUMNS = {"path": ("path", "image"), "label": ("label", "class"), "patient": ("patient", "patient_id"), "split": ()}
_EXAMPLES = 3


def is_label_csv(path: str | Path) -> bool:
    """Whether ``path`` names a CSV label table (by its ``.csv`` suffix) rather than a folder."""
    return Path(str(path)).suffix.lower() == ".csv"


def _columns(header: list[str], csv_file: Path, labels: bool) -> dict[str, int]:
    names = [h.strip().lower() for h in header]
    found: dict[str, int] = {}
    for key, accepted in _COLUMNS.items():
        hits = [i for i, n in enumerate(names) if n in (accepted or (key,))]
        if len(hits) > 1:
            raise ValueError(f"{csv_file}: several {key} columns ({', '.join(header[i] for i in hits)}); keep one.")
        if hits:
            found[key] = hits[0]
    required = ("path", "label") if labels else ("path",)
    missing = [key for key in required if key not in found]
    if missing:
        raise ValueError(
            f"{csv_file}: no {' and no '.join(f'`{m}`' for m in missing)} column; the header is {header}. "
            "Expected a header row `path,label[,patient][,split]`."
        )
    return found


def _tile_path(value: str, csv_file: Path, line: int) -> str:
    if not value:
        raise ValueError(f"{csv_file} row {line}: empty path.")
    path = Path(value).expanduser()
    if path.is_absolute():
        return str(path)
    folder = csv_file.parent
    full = Path(os.path.normpath(folder / path))
    if os.path.relpath(full, folder).startswith(".."):
        raise ValueError(
            f"{csv_file} row {line}: path {value!r} leads outside the CSV's folder {folder}. Relative paths are "
            "read from the CSV's folder: write absolute paths, or put the CSV in a folder above the tiles."
        )
    return str(full)


def _label(value: str, classes: TileClasses, csv_file: Path, line: int) -> int:
    text = value.strip()
    if text.lstrip("+-").isdigit():
        index = int(text)
        if 0 <= index < classes.num_classes:
            return index
    else:
        label = classes.label_of(text)
        if label is not None:
            return label
    raise ValueError(
        f"{csv_file} row {line}: label {value!r} is not a class of `class_names` ({', '.join(classes.names)}; "
        f"accepted: {', '.join(a for group in classes.aliases for a in group)}) nor a class index in "
        f"[0, {classes.num_classes}).{classes.suggest(text)}"
    )


def _split(value: str, csv_file: Path, line: int) -> str:
    split = value.strip().lower()
    if split not in SPLITS:
        raise ValueError(f"{csv_file} row {line}: split {value!r} must be one of {', '.join(SPLITS)}.")
    return split


def _dialect(sample: str) -> str:
    first = sample.splitlines()[0] if sample else ""
    return next((d for d in (",", ";", "\t") if d in first), ",")


def read_label_csv(
    csv_file: str | Path, classes: TileClasses | None = None, labels: bool = True
) -> dict[str, list[dict[str, Any]]]:
    """Read a CSV label table (module docstring) into one datalist per split.

    Args:
        csv_file: the CSV file.
        classes: the classes that labels name; Kather's by default.
        labels: read the ``label`` column; ``False`` (inference) needs only ``path`` and ignores ``label`` and
            ``split`` (every row is then in ``"train"``).

    Returns:
        ``{"train": [...], "val": [...], "test": [...]}`` of ``{"image", "label", "patient"}`` dicts (no ``"label"``
        when ``labels`` is false), in row order; ``"val"`` and ``"test"`` are empty without a ``split`` column.

    Raises:
        FileNotFoundError: no such file.
        ValueError: an unreadable or empty CSV, a missing column, an empty or escaping path, a label that names no
            class, a bad split, one path listed with two labels, or a class without rows; each names the file (and
            the row).
    """
    classes = classes or KATHER
    csv_file = Path(csv_file).expanduser()
    if not csv_file.is_file():
        raise FileNotFoundError(f"CSV {csv_file} does not exist (or is not a file).")
    try:
        text = csv_file.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"{csv_file}: cannot read the CSV as UTF-8 text ({err}).") from None
    reader = csv.reader(text.splitlines(), delimiter=_dialect(text))
    header = next(reader, None)
    if not header or not any(h.strip() for h in header):
        raise ValueError(
            f"{csv_file} is empty: expected a header row `path,label[,patient][,split]` and one row per tile."
        )
    cols = _columns(header, csv_file, labels)
    splits: dict[str, list[dict[str, Any]]] = {split: [] for split in SPLITS}
    seen: dict[str, tuple[int, Any]] = {}
    duplicates = 0
    no_id: list[str] = []
    for row in reader:
        line = reader.line_num
        if not any(cell.strip() for cell in row):
            continue
        cells = [*row, *[""] * (len(header) - len(row))]
        image = _tile_path(cells[cols["path"]].strip(), csv_file, line)
        item: dict[str, Any] = {"image": image}
        if labels:
            item["label"] = _label(cells[cols["label"]], classes, csv_file, line)
        patient = cells[cols["patient"]].strip() if "patient" in cols else ""
        guessed = not patient and tcga_patient_id(image) is None
        item["patient"] = patient or patient_id_from_path(image)
        split = _split(cells[cols["split"]], csv_file, line) if labels and "split" in cols else "train"
        key = (item.get("label"), split)
        if image in seen:
            first_line, first_key = seen[image]
            if first_key != key:
                raise ValueError(
                    f"{csv_file} rows {first_line} and {line} list {image} differently ({first_key} vs {key}); "
                    "a tile has one label and one split."
                )
            duplicates += 1
            continue
        seen[image] = (line, key)
        splits[split].append(item)
        if guessed:
            no_id.append(image)
    rows = [item for items in splits.values() for item in items]
    if not rows:
        raise ValueError(f"{csv_file} has a header but no rows: list one tile per row.")
    if duplicates:
        logger.warning("%s: %d duplicate rows (same path, label and split) are read once.", csv_file, duplicates)
    if labels:
        counts = Counter(item["label"] for item in rows)
        empty = [name for label, name in enumerate(classes.names) if not counts[label]]
        if empty:
            raise ValueError(
                f"{csv_file}: no row of class {', '.join(empty)} (`class_names` lists {', '.join(classes.names)}); "
                "every class needs tiles, or drop it from `class_names`."
            )
    if no_id:
        logger.warning(
            "%s: %d of %d tiles have no patient id (no `patient` cell, none in the file name, e.g. %s); each counts "
            "as its own patient (id = file stem).",
            csv_file,
            len(no_id),
            len(rows),
            Path(no_id[0]).name,
        )
    sizes = ", ".join(f"{len(items)} {split}" for split, items in splits.items() if items)
    logger.info("%s: %s tiles from %d patients.", csv_file, sizes, len({item["patient"] for item in rows}))
    return splits
