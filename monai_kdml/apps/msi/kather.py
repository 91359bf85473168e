"""Class-folder tile data sets (Kather et al.'s MSI/MSS by default): datalists, patient-level splits, balancing.

The data (Kather et al., Nat. Med. 2019; Zenodo 2530835) unpacks to 224x224 tiles named
``blk-<12 letters>-TCGA-AA-3516-01Z-00-DX1.png`` in one of these layouts::

    <root>/CRC_DX_TRAIN/{MSIMUT,MSS}/*.png   <root>/CRC_DX_TEST/{MSIMUT,MSS}/*.png   (STAD_TRAIN, STAD_TEST alike)
    <root>/{MSIMUT,MSS}/*.png                 a single split
    ... with {MSIH,nonMSIH} instead of {MSIMUT,MSS} (the later Kather release)

Label 1 is MSI (``MSIMUT``/``MSIH``), 0 is MSS (``MSS``/``nonMSIH``). Other classes are given as a
:class:`~monai_kdml.apps.msi.classes.TileClasses` (``classes=``, from the config's ``class_names``): the same layouts
then hold ``<root>/<class>/`` folders named by those classes (``benign``/``malignant``, three classes, ...).
Every function returns plain lists of ``{"image": str, "label": int, "patient": str}`` dicts usable from MONAI
datasets or a plain PyTorch loop.
"""

from __future__ import annotations

import difflib
import logging
import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from monai_kdml.apps.msi.classes import TileClasses, tile_classes
from monai_kdml.data.images import IMAGE_SUFFIXES, is_image_file

__all__ = [
    "CLASS_FOLDERS",
    "CLASS_NAMES",
    "DatasetLayoutError",
    "class_folders",
    "kather_datalist",
    "patient_id_from_path",
    "resolve_class_root",
    "sample_weights",
    "split_by_patient",
    "tcga_patient_id",
    "undersample",
]

logger = logging.getLogger(__name__)

MSI, MSS = 1, 0
KATHER = tile_classes()
"""Kather et al.'s classes, the default of every function here."""
CLASS_FOLDERS: dict[str, int] = {"MSIMUT": MSI, "MSIH": MSI, "MSS": MSS, "nonMSIH": MSS}
"""Class folder name -> label, both namings of the Kather releases."""
CLASS_NAMES: dict[Any, str] = {MSI: "MSI", MSS: "MSS"}
"""Label -> readable class name of Kather's classes, for messages."""
_TCGA_PATIENT = re.compile(r"TCGA-[A-Z0-9]{2}-[A-Z0-9]{4}", re.IGNORECASE)
_SPLIT_FOLDER = re.compile(r"^(?P<cohort>.+?)_(?P<split>TRAIN|TEST)$", re.IGNORECASE)
_EXAMPLES = 3


class DatasetLayoutError(FileNotFoundError):
    """``dataset_dir`` is missing, empty, or lacks a folder the Kather layout needs; the message names the path."""


def tcga_patient_id(path: str | Path) -> str | None:
    """The TCGA patient id in a tile's file name (upper case), or ``None`` when the name carries none."""
    match = _TCGA_PATIENT.search(Path(path).name)
    return match.group(0).upper() if match else None


def patient_id_from_path(path: str | Path) -> str:
    """The TCGA patient id in a tile's file name, e.g. ``TCGA-AA-3516``; the file stem when there is none.

    Example::

        >>> patient_id_from_path("CRC_DX_TRAIN/MSS/blk-AAAAAAAAAAAA-TCGA-AA-3516-01Z-00-DX1.png")
        'TCGA-AA-3516'
    """
    return tcga_patient_id(path) or Path(path).stem


def class_folders(root: Path, classes: TileClasses | None = None) -> dict[int, Path]:
    """Label -> class folder directly under ``root`` (names matched case-insensitively); may be partial.

    Args:
        root: the folder holding the class folders.
        classes: the classes and the folder names each accepts; Kather's by default.

    Raises:
        ValueError: two folders for one class.
    """
    classes = classes or KATHER
    found: dict[int, list[Path]] = defaultdict(list)
    for child in sorted(root.iterdir()):
        label = classes.label_of(child.name)
        if label is not None and child.is_dir():
            found[label].append(child)
    for label, dirs in found.items():
        if len(dirs) > 1:
            names = ", ".join(d.name for d in dirs)
            raise ValueError(f"{root}: several {classes.names[label]} class folders ({names}); keep only one.")
    return {label: dirs[0] for label, dirs in found.items()}


def _other_folders(root: Path, classes: TileClasses) -> list[str]:
    """Sub-folders of ``root`` that name no class (hidden ones and ``__MACOSX`` of unzipped archives aside)."""
    return sorted(
        c.name
        for c in root.iterdir()
        if c.is_dir() and not c.name.startswith((".", "__")) and classes.label_of(c.name) is None
    )


def _split_folders(root: Path, cohort: str | None) -> dict[str, dict[str, Path]]:
    """Cohort prefix (e.g. ``CRC_DX``, ``STAD``) -> {"train"|"test": folder}, filtered by ``cohort`` if given."""
    found: dict[str, dict[str, Path]] = defaultdict(dict)
    for child in sorted(root.iterdir()):
        match = _SPLIT_FOLDER.match(child.name)
        if child.is_dir() and match:
            found[match["cohort"].upper()][match["split"].lower()] = child
    if cohort is not None:
        want = cohort.upper()
        found = defaultdict(dict, {k: v for k, v in found.items() if want in (k, k.split("_")[0])})
    return found


def resolve_class_root(
    dataset_dir: str | Path,
    split: Literal["train", "test"] = "train",
    cohort: str | None = None,
    classes: TileClasses | None = None,
) -> Path:
    """The folder that holds the class folders for ``split``.

    Args:
        dataset_dir: the Kather root (holding ``<COHORT>_TRAIN``/``<COHORT>_TEST``) or a single class-folder root.
        split: ``"train"`` or ``"test"``; a single class-folder root only has ``"train"``.
        cohort: prefix of the split folders, ``"CRC"`` (matches ``CRC_DX_*``), ``"CRC_DX"``, ``"STAD"``, ...;
            needed only when ``dataset_dir`` holds several cohorts.
        classes: the classes whose folders are looked for; Kather's by default.

    Returns:
        The resolved folder.

    Raises:
        FileNotFoundError: ``dataset_dir`` does not exist.
        NotADirectoryError: ``dataset_dir`` is a file.
        DatasetLayoutError: ``dataset_dir`` is empty or holds neither class folders nor split folders for ``split``.
        ValueError: bad ``split``, an ambiguous ``cohort``, or ``split="test"`` on a single class-folder root.
    """
    if split not in ("train", "test"):
        raise ValueError(f"`split` must be 'train' or 'test', got {split!r}.")
    classes = classes or KATHER
    root = Path(dataset_dir).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"dataset_dir {root} does not exist.")
    if not root.is_dir():
        raise NotADirectoryError(f"dataset_dir {root} is not a folder.")
    if not any(not p.name.startswith(".") for p in root.iterdir()):
        folders = ", ".join(f"{name}/" for name in classes.names)
        raise DatasetLayoutError(f"dataset_dir {root} is empty; expected <COHORT>_TRAIN/, <COHORT>_TEST/ or {folders}.")
    if class_folders(root, classes):
        if split == "test":
            raise ValueError(
                f"dataset_dir {root} holds class folders directly (a single split), so split='test' has no data; "
                "point dataset_dir at the folder holding <COHORT>_TRAIN and <COHORT>_TEST, or use split='train'."
            )
        return root
    cohorts = {name: splits for name, splits in _split_folders(root, cohort).items() if split in splits}
    if not cohorts:
        wanted = f"{cohort.upper()}*_{split.upper()}" if cohort else f"<COHORT>_{split.upper()}"
        others = _other_folders(root, classes)
        hint = ""
        if len(others) >= 2 and not _split_folders(root, None):
            hint = (
                f" If {', '.join(others[:5])} are your class folders, name them in `class_names` (label order), "
                f'e.g. --class_names "{others[:5]!r}".'
            )
        accepted = ", ".join(alias for group in classes.aliases for alias in group)
        raise DatasetLayoutError(
            f"dataset_dir {root} has no {wanted} folder and no class folders ({accepted}); "
            f"found: {sorted(p.name for p in root.iterdir())[:10]}.{hint}"
        )
    if len(cohorts) > 1:
        raise ValueError(
            f"dataset_dir {root} holds several cohorts ({', '.join(sorted(cohorts))}); "
            f"choose one with `cohort=`, e.g. cohort={sorted(cohorts)[0]!r}."
        )
    return next(iter(cohorts.values()))[split]


def kather_datalist(
    dataset_dir: str | Path,
    split: Literal["train", "test"] = "train",
    cohort: str | None = None,
    classes: TileClasses | None = None,
) -> list[dict[str, Any]]:
    """List the tiles of one split as ``{"image": path, "label": index, "patient": "TCGA-XX-XXXX"}``, sorted by path.

    Hidden files (``.DS_Store``, ``._*``) and files without an image suffix are skipped and counted in one warning;
    files whose name carries no TCGA id fall back to their stem as patient id (one warning with the count: each
    such tile then counts as its own patient in :func:`split_by_patient`). Whether the files decode is checked by
    :func:`check_tiles`.

    Args:
        dataset_dir: see :func:`resolve_class_root`.
        split: ``"train"`` or ``"test"``.
        cohort: see :func:`resolve_class_root`.
        classes: the classes, their folder names and labels; Kather's by default (``label`` 1 = MSI, folders
            ``MSIMUT``/``MSIH``; 0 = MSS, folders ``MSS``/``nonMSIH``).

    Returns:
        One dict per tile; ``label`` is the index of its class folder's class.

    Raises:
        DatasetLayoutError: a class folder is missing or holds no image files, or a folder names no class (the
            message names the path and the classes), or any error of :func:`resolve_class_root`.
    """
    classes = classes or KATHER
    root = resolve_class_root(dataset_dir, split, cohort, classes)
    folders = class_folders(root, classes)
    others = _other_folders(root, classes)
    for label in range(classes.num_classes):
        if label not in folders:
            found = f"; other folders there: {', '.join(others[:5])}" if others else ""
            accepted = [a.lower() for a in classes.aliases[label]]
            close = [o for o in others if difflib.get_close_matches(o.lower(), accepted, n=1, cutoff=0.6)]
            name = classes.names[label]
            hint = (
                f" If {close[0]!r} is the {name} class, rename it or give it as an alias: [{name!r}, {close[0]!r}]."
                if close
                else ""
            )
            raise DatasetLayoutError(
                f"{root}: missing the {classes.names[label]} class folder ({classes.accepted(label)}){found}.{hint}"
            )
    if others:
        raise DatasetLayoutError(
            f"{root}: folder {others[0]!r} is not a class of `class_names` ({', '.join(classes.names)}); add it to "
            "`class_names` (as an alias if it is another name of a class), or move it out of the data set."
        )
    datalist: list[dict[str, Any]] = []
    ignored: list[Path] = []
    no_id: list[Path] = []
    for label, folder in sorted(folders.items(), reverse=True):
        files = sorted(p for p in folder.iterdir() if not p.is_dir())
        tiles = [p for p in files if is_image_file(p)]
        ignored += sorted(set(files) - set(tiles))
        if not tiles:
            raise DatasetLayoutError(f"{folder} holds no image tiles ({', '.join(IMAGE_SUFFIXES)}).")
        no_id += [p for p in tiles if tcga_patient_id(p) is None]
        datalist += [{"image": str(p), "label": label, "patient": patient_id_from_path(p)} for p in tiles]
    if ignored:
        logger.warning("%s: skipped %d non-image or hidden files, e.g. %s.", root, len(ignored), ignored[0].name)
    if no_id:
        msg = "%s: %d of %d tiles have no TCGA patient id (e.g. %s); each counts as its own patient (id = file stem)."
        logger.warning(msg, root, len(no_id), len(datalist), no_id[0].name)
    counts, patients = Counter(item["label"] for item in datalist), {item["patient"] for item in datalist}
    per_class = ", ".join(f"{counts[label]} {name}" for label, name in enumerate(classes.names))
    logger.info("%s: %s tiles from %d patients.", root, per_class, len(patients))
    return sorted(datalist, key=lambda item: item["image"])


def _patient_labels(datalist: Sequence[dict[str, Any]]) -> dict[str, int]:
    """Patient -> majority label (ties: the higher label, MSI); patients with tiles of several classes are counted
    in one warning."""
    labels: dict[str, Counter[int]] = defaultdict(Counter)
    for item in datalist:
        labels[item["patient"]][int(item["label"])] += 1
    mixed = sorted(p for p, counts in labels.items() if len(counts) > 1)
    if mixed:
        both = "both" if all(len(labels[p]) == 2 for p in mixed) else "several"
        logger.warning(
            "%d patients have tiles in %s classes (e.g. %s); each is stratified by its majority label. A class such "
            "as MSI status is a patient property: check the labels and the patient ids.",
            len(mixed),
            both,
            mixed[:_EXAMPLES],
        )
    return {p: max(counts, key=lambda lab: (counts[lab], lab)) for p, counts in labels.items()}


def split_by_patient(
    datalist: Sequence[dict[str, Any]],
    val_fraction: float = 0.2,
    seed: int = 0,
    class_names: Sequence[str] | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Seeded train/validation split by patient, stratified by the patient's label.

    Per class with ``n`` patients, ``round(val_fraction * n)`` of them go to validation, at least one and at most
    ``n - 1`` when ``n >= 2`` (so every class appears on both sides whenever possible). No patient is on both sides;
    a patient with tiles of several classes (a labelling problem in Kather's data) counts under its majority label.
    The result depends only on the set of items and ``seed``, not on their order; both lists keep input order.

    Args:
        datalist: dicts with ``"patient"`` and ``"label"``, e.g. from :func:`kather_datalist`.
        val_fraction: fraction of patients (per class) for validation, in ``[0, 1)``.
        seed: seed of the patient shuffle.
        class_names: name of each label, for messages; Kather's by default.

    Returns:
        ``(train, val)``.

    Raises:
        ValueError: ``val_fraction`` outside ``[0, 1)``.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"`val_fraction` must be in [0, 1), got {val_fraction}.")
    labels = _patient_labels(datalist)
    rng = np.random.default_rng(seed)
    val_patients: set[str] = set()
    for label in sorted(set(labels.values())):
        patients = sorted(p for p, lab in labels.items() if lab == label)
        n_val = round(val_fraction * len(patients))
        if val_fraction > 0 and len(patients) >= 2:
            n_val = min(max(n_val, 1), len(patients) - 1)
        elif val_fraction > 0:
            names = CLASS_NAMES if class_names is None else dict(enumerate(class_names))
            logger.warning("Only one %s patient: it stays in training.", names.get(label, label))
        val_patients.update(rng.permutation(patients)[:n_val].tolist())
    train = [item for item in datalist if item["patient"] not in val_patients]
    val = [item for item in datalist if item["patient"] in val_patients]
    n = len(val_patients)
    logger.info("Patient split (seed %d): %d train, %d val tiles; val patients %s.", seed, len(train), len(val), n)
    return train, val


def undersample(datalist: Sequence[dict[str, Any]], seed: int = 0) -> list[dict[str, Any]]:
    """Balance classes by randomly dropping tiles of the larger classes down to the smallest class (as Kather did).

    Args:
        datalist: dicts with ``"label"``.
        seed: seed of the random choice.

    Returns:
        The kept items, in input order; every class has ``min_c count(c)`` items.
    """
    by_label: dict[int, list[int]] = defaultdict(list)
    for index, item in enumerate(datalist):
        by_label[int(item["label"])].append(index)
    if not by_label:
        return []
    smallest = min(len(indices) for indices in by_label.values())
    rng = np.random.default_rng(seed)
    keep: set[int] = set()
    for label in sorted(by_label):
        keep.update(rng.choice(by_label[label], size=smallest, replace=False).tolist())
    logger.info("Undersampled %d -> %d tiles (%d per class).", len(datalist), len(keep), smallest)
    return [item for index, item in enumerate(datalist) if index in keep]


def sample_weights(datalist: Sequence[dict[str, Any]]) -> list[float]:
    """Per-item weights that balance classes, for ``torch.utils.data.WeightedRandomSampler``.

    ``w_i = N / (C * n_{y_i})`` with ``N`` items, ``C`` classes and ``n_c`` items of class ``c``: every class gets
    the same total weight ``N / C`` and the mean weight is 1.

    Example::

        sampler = WeightedRandomSampler(sample_weights(train), num_samples=len(train), replacement=True)
    """
    counts = Counter(int(item["label"]) for item in datalist)
    total, classes = len(datalist), len(counts)
    return [total / (classes * counts[int(item["label"])]) for item in datalist]
