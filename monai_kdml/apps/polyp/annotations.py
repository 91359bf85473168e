"""The annotation files of a detection data set: a Kvasir-style JSON or a CSV of boxes (layouts in
:mod:`monai_kdml.apps.polyp.kvasir`).

Malformed files fail with a ``ValueError`` naming the file and the entry or line; values that are numbers but make no
box (NaN, inverted, outside the frame) are kept here and counted by the pre-flight, which clips or drops them.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from monai_kdml.data.images import IMAGE_SUFFIXES

__all__ = ["Annotation", "image_id", "read_annotations"]


@dataclass
class Annotation:
    """Boxes of one frame from the annotation file.

    Args:
        boxes: ``[xmin, ymin, xmax, ymax]`` per box, floats as written (NaN kept: the pre-flight drops them).
        labels: class index per box.
        size: ``(width, height)`` when the file records it.
    """

    boxes: list[list[float]]
    labels: list[int]
    size: tuple[int, int] | None = None


def _read_json(path: Path, classes: Sequence[str]) -> dict[str, Annotation]:
    """Annotations from a Kvasir-style JSON (see module doc)."""
    try:
        raw = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise ValueError(f"{path}: cannot read the boxes JSON ({err})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected an object {{image id: {{'bbox': [...]}}}}, got {type(raw).__name__}")
    out: dict[str, Annotation] = {}
    for key, entry in raw.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("bbox"), list):
            raise ValueError(f"{path}: entry {key!r} needs a 'bbox' list")
        where = f"{path}: entry {key!r}"
        size = None
        if "width" in entry and "height" in entry:
            size = (_side(entry["width"], where), _side(entry["height"], where))
        ann = Annotation([], [], size)
        for box in entry["bbox"]:
            ann.boxes.append(_coords(box, where))
            ann.labels.append(_label(box.get("label"), classes, where))
        if image_id(key) in out:
            raise ValueError(f"{where}: a second entry for image id {image_id(key)!r} (keys with and without suffix?)")
        out[image_id(key)] = ann
    return out


def _side(value: Any, where: str) -> int:
    """A ``width`` or ``height``: a positive whole number of pixels (``48``, ``48.0`` or ``"48"``)."""
    try:
        number = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number) or number < 1 or number != int(number):
        raise ValueError(f"{where}: width/height {value!r} is not a positive whole number of pixels")
    return int(number)


def _read_csv(path: Path, classes: Sequence[str]) -> dict[str, Annotation]:
    """Annotations from a CSV with header ``image,xmin,ymin,xmax,ymax[,label]`` (see module doc)."""
    try:
        with path.open(newline="") as fh:
            reader = csv.DictReader(fh)
            header, rows = set(reader.fieldnames or ()), list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise ValueError(f"{path}: cannot read the boxes CSV ({err})") from None
    missing = {"image", "xmin", "ymin", "xmax", "ymax"} - header
    if missing:
        raise ValueError(f"{path}: CSV header lacks {sorted(missing)} (need image,xmin,ymin,xmax,ymax[,label])")
    out: dict[str, Annotation] = {}
    for line, row in enumerate(rows, start=2):
        where = f"{path}: line {line}"
        if not (row["image"] or "").strip():
            raise ValueError(f"{where}: no image file name")
        ann = out.setdefault(image_id(row["image"].strip()), Annotation([], []))
        if all(not (row[k] or "").strip() for k in ("xmin", "ymin", "xmax", "ymax")):
            continue  # a frame declared without polyps
        ann.boxes.append(_coords(row, where))
        ann.labels.append(_label(row.get("label"), classes, where))
    return out


def _coords(box: Any, where: str) -> list[float]:
    """``[xmin, ymin, xmax, ymax]`` of one box record, as floats (NaN kept: dropped later as degenerate)."""
    try:
        if any(isinstance(box[k], bool) for k in ("xmin", "ymin", "xmax", "ymax")):
            raise TypeError("true/false is not a coordinate")
        return [float(box[k]) for k in ("xmin", "ymin", "xmax", "ymax")]
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{where}: box {box!r} needs numeric xmin, ymin, xmax, ymax ({err!r})") from None


def _label(name: Any, classes: Sequence[str], where: str) -> int:
    """Class index of a label name; blank or missing means ``classes[0]``."""
    if name is None or str(name).strip() == "":
        return 0
    if str(name) not in classes:
        raise ValueError(f"{where}: label {name!r} is not one of classes={list(classes)}")
    return list(classes).index(str(name))


def image_id(name: str) -> str:
    """Image id of a file name: its path without an image suffix (``"a/b.jpg"`` -> ``"a/b"``)."""
    path = Path(name)
    return path.with_suffix("").as_posix() if path.suffix.lower() in IMAGE_SUFFIXES else path.as_posix()


def read_annotations(path: Path, classes: Sequence[str]) -> dict[str, Annotation]:
    """``{image id: Annotation}`` from a ``.csv`` file, else from a Kvasir-style JSON.

    Args:
        path: the annotation file.
        classes: label names; the index is the label.

    Returns:
        The annotations by image id (keys without their image suffix).

    Raises:
        ValueError: an unreadable or malformed file, or an unknown label; the message names the file.
    """
    return (_read_csv if path.suffix.lower() == ".csv" else _read_json)(path, classes)
