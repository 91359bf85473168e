"""Everything the MSI bundle needs from the data in one call: demo tiles, class folders or a CSV, checked and split by
patient."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

from monai.utils import look_up_option

from monai_kdml.apps.msi.classes import TileClasses
from monai_kdml.apps.msi.demo import ensure_msi_demo
from monai_kdml.apps.msi.kather import (
    KATHER,
    DatasetLayoutError,
    class_folders,
    kather_datalist,
    patient_id_from_path,
    split_by_patient,
    undersample,
)
from monai_kdml.apps.msi.label_csv import is_label_csv, read_label_csv
from monai_kdml.apps.msi.tiles import TileCheckReport, check_tiles
from monai_kdml.data.evaluation import EvaluationSplit, check_no_overlap, external_split, held_out_split
from monai_kdml.data.images import IMAGE_SUFFIXES, MAX_IMAGE_PIXELS, is_image_file, is_listed_file

__all__ = ["MSIDatalists", "check_validation_split", "evaluation_split", "prepare_msi_datalists", "tile_datalist"]

logger = logging.getLogger(__name__)

_BALANCING = ("none", "undersample", "weighted")


@dataclass
class MSIDatalists:
    """Train/validation (by patient) and test datalists of one run.

    Args:
        root: the data set root (or CSV) that was read.
        is_demo: whether ``root`` is the generated demo set.
        train: training tiles (after the optional undersampling).
        val: validation tiles, drawn from the training folder by patient (or a CSV's ``val`` rows).
        test: tiles of the test folder or a CSV's ``test`` rows (``[]`` when not requested or absent).
        report: the pre-flight tile check of the training (and a CSV's validation) tiles.
        classes: the classes the labels index.
    """

    root: Path
    is_demo: bool
    train: list[dict[str, Any]]
    val: list[dict[str, Any]]
    test: list[dict[str, Any]]
    report: TileCheckReport
    classes: TileClasses = KATHER


def prepare_msi_datalists(
    dataset_dir: str | Path | None,
    cache_dir: str | Path,
    val_fraction: float = 0.2,
    seed: int = 0,
    cohort: str | None = None,
    balance: Literal["none", "undersample", "weighted"] = "none",
    expected_size: tuple[int, int] | None = (224, 224),
    decode: bool | str | None = None,
    max_image_pixels: int | None = MAX_IMAGE_PIXELS,
    with_test: bool = False,
    demo_patients: int = 48,
    demo_tiles_per_patient: int = 20,
    classes: TileClasses | None = None,
) -> MSIDatalists:
    """Resolve the data (the synthetic demo when ``dataset_dir`` is None), check every tile, split by patient.

    Runs before any network is built, so a missing folder, a missing class or a broken download fails in seconds.

    Args:
        dataset_dir: the Kather root (``<COHORT>_TRAIN``/``<COHORT>_TEST`` holding class folders), a single
            class-folder root, a CSV label table (:mod:`~monai_kdml.apps.msi.label_csv`; its ``val`` rows, if any,
            are the validation split and its ``test`` rows the test split), or ``None`` for the demo set generated
            (once) under ``cache_dir``.
        cache_dir: where the demo set is cached.
        val_fraction: fraction of training patients (per class) held out for validation.
        seed: seed of the patient split and of the undersampling.
        cohort: ``"CRC"`` or ``"STAD"`` when ``dataset_dir`` holds both (folder layouts only).
        balance: ``"undersample"`` the majority class of the training split (as Kather et al.), ``"weighted"``
            (the bundle then uses a ``WeightedRandomSampler``; the lists stay as they are) or ``"none"``.
        expected_size: tile size to count deviations against; other sizes are resized by the pipeline.
        decode: how much the pre-flight check decodes (:func:`check_tiles`): ``None`` every tile but PNGs (whose
            CRCs are checked instead), ``True`` every tile, ``False`` none but 16-bit-integer and float tiles.
        max_image_pixels: tiles with more pixels are skipped (PIL's decompression-bomb guard; ``None``: no limit);
            set as ``PIL.Image.MAX_IMAGE_PIXELS`` in this process, so ``DataLoader`` workers forked later inherit it.
            Pass the same value to :func:`~monai_kdml.apps.msi.tile_transforms` (it sets it in spawned workers).
        with_test: also list and check the test folder (evaluation).
        demo_patients: patients of the demo set.
        demo_tiles_per_patient: tiles per demo patient.
        classes: the classes (names, folder names or CSV labels, positive class); Kather's by default.

    Returns:
        The :class:`MSIDatalists`.

    Raises:
        ValueError: ``dataset_dir`` empty, the demo with other classes, ``cohort`` with a CSV, a patient in both
            the CSV's ``train`` and ``val`` (or ``test``) rows, a class without training tiles, a validation split
            without tiles of every class (:func:`check_validation_split`), or any error of the readers.
    """
    look_up_option(balance, _BALANCING)
    classes = classes or KATHER
    if dataset_dir is not None and not str(dataset_dir).strip():
        raise ValueError("`dataset_dir` is empty: give a folder, or None for the synthetic demo set.")
    is_demo = dataset_dir is None
    if is_demo:
        if classes.aliases != KATHER.aliases:
            raise ValueError(
                f"`class_names` is {classes.config()}, but the synthetic demo (no `dataset_dir`) has Kather's MSI/MSS "
                "classes: give `dataset_dir`, or drop the `class_names` override."
            )
        root = ensure_msi_demo(
            Path(cache_dir), num_patients=demo_patients, tiles_per_patient=demo_tiles_per_patient, seed=0
        )
    else:
        root = Path(str(dataset_dir)).expanduser()
    names = classes.names
    check = partial(
        check_tiles, expected_size=expected_size, decode=decode, max_image_pixels=max_image_pixels, class_names=names
    )
    test: list[dict[str, Any]] = []
    if is_label_csv(root):
        if cohort is not None:
            raise ValueError(f"`cohort` ({cohort!r}) selects <COHORT>_TRAIN folders; {root} is a CSV: drop `cohort`.")
        table = read_label_csv(root, classes)
        pool, report = check([*table["train"], *table["val"]])
        kept = {id(item) for item in pool}
        train, val = [t for t in table["train"] if id(t) in kept], [t for t in table["val"] if id(t) in kept]
        if val:
            _check_disjoint(train, val, root)
        else:
            train, val = split_by_patient(train, val_fraction=val_fraction, seed=seed, class_names=names)
        check_no_overlap([*train, *val], table["test"], f"{root} (its `test` rows)", patient_key="patient")
        if with_test and table["test"]:
            test, _ = check(table["test"])
        elif with_test:
            logger.warning("No test split (%s has no `split` = test rows); evaluation needs --test_dir.", root)
    else:
        tiles, report = check(kather_datalist(root, "train", cohort, classes))
        train, val = split_by_patient(tiles, val_fraction=val_fraction, seed=seed, class_names=names)
        if with_test:
            try:
                test, _ = check(kather_datalist(root, "test", cohort, classes))
            except (ValueError, DatasetLayoutError) as err:
                logger.warning("No test split (%s); evaluation falls back to the validation split.", err)
            check_no_overlap(
                [*train, *val], test, f"{root} (its test folder)", patient_key="patient", patients_are_ids=False
            )
    absent = sorted(set(range(classes.num_classes)) - {int(t["label"]) for t in train})
    if absent:
        raise ValueError(
            f"{root}: no training tile of class {', '.join(names[i] for i in absent)}; every class of `class_names` "
            "needs training tiles."
        )
    check_validation_split(train, val, classes, root, val_fraction)
    if balance == "undersample":
        train = undersample(train, seed=seed)
    logger.info(
        "Tile data from %s: %d train / %d validation tiles (%d / %d patients)%s.",
        root,
        len(train),
        len(val),
        len({t["patient"] for t in train}),
        len({t["patient"] for t in val}),
        f", {len(test)} test tiles" if with_test else "",
    )
    return MSIDatalists(root=root, is_demo=is_demo, train=train, val=val, test=test, report=report, classes=classes)


def check_validation_split(
    train: list[dict[str, Any]],
    val: list[dict[str, Any]],
    classes: TileClasses,
    source: str | Path,
    val_fraction: float,
) -> None:
    """Refuse, before training, a validation split that cannot select a model.

    ``best_networks.pt`` and ``model.pt`` are chosen on the validation AUC. With no validation tile nothing is ever
    selected; with a class absent from validation the AUC is undefined (``nan``) at every epoch, so the first epoch
    would stay "best" whatever followed.

    Args:
        train: the training tiles (``"label"``, ``"patient"``).
        val: the validation tiles.
        classes: the classes the labels index (for the message).
        source: the data set, as the message names it.
        val_fraction: the fraction of patients asked for (for the message).

    Raises:
        ValueError: an empty validation split, or one without tiles of every class; the message counts tiles and
            patients per class on both sides.
    """
    absent = sorted(set(range(classes.num_classes)) - {int(t["label"]) for t in val})
    if not absent:
        return

    def counts(items: list[dict[str, Any]]) -> str:
        return ", ".join(
            f"{name}: {sum(int(t['label']) == c for t in items)} tiles of "
            f"{len({t['patient'] for t in items if int(t['label']) == c})} patients"
            for c, name in enumerate(classes.names)
        )

    problem = (
        "the validation split is empty"
        if not val
        else f"the validation split has no {', '.join(classes.names[c] for c in absent)} tile, so its AUC (the "
        "metric that selects best_networks.pt) is undefined"
    )
    raise ValueError(
        f"{source}: {problem} (val_fraction {val_fraction}; train: {counts(train)}; validation: {counts(val)}). "
        "Give every class at least 2 patients (the patient split keeps a class's only patient in training), or a "
        "CSV's `val` rows of every class."
    )


def _check_disjoint(train: list[dict[str, Any]], val: list[dict[str, Any]], csv_file: Path) -> None:
    both = sorted({t["patient"] for t in train} & {t["patient"] for t in val})
    if both:
        raise ValueError(
            f"{csv_file}: {len(both)} patients have both `train` and `val` rows (e.g. {', '.join(both[:3])}); a "
            "patient's tiles are alike, so validation would be optimistic. Give each patient one split, or leave out "
            "the `val` rows to draw the validation split by patient."
        )


def tile_datalist(
    folder: str | Path,
    expected_size: tuple[int, int] | None = None,
    decode: bool | str | None = None,
    max_image_pixels: int | None = MAX_IMAGE_PIXELS,
) -> list[dict[str, Any]]:
    """Every image tile under ``folder`` (recursively, sorted) or listed in a CSV, checked like training tiles, for
    inference.

    Unlike training, any number of unusable tiles is accepted: every usable tile gets a prediction, and the unusable
    ones are skipped and listed in one WARNING (path and reason each) after the check's summary.

    Args:
        folder: any folder of tiles (PNG, JPEG, TIFF, ...; class sub-folders are allowed and ignored), or a CSV
            with a ``path`` and an optional ``patient`` column (:func:`~monai_kdml.apps.msi.read_label_csv`; labels
            and splits are ignored).
        expected_size: tile size to count deviations against (they are resized anyway).
        decode: how much the check decodes, as in :func:`check_tiles`.
        max_image_pixels: tiles with more pixels are skipped, as in :func:`prepare_msi_datalists`.

    Returns:
        ``[{"image": path, "patient": id}, ...]`` for the usable tiles.

    Raises:
        FileNotFoundError: ``folder`` does not exist, holds no image file, or none that can be read.
        ValueError: a CSV that :func:`~monai_kdml.apps.msi.read_label_csv` refuses.
    """
    root = Path(folder).expanduser()
    if is_label_csv(root) and root.is_file():
        items = read_label_csv(root, labels=False)["train"]
    elif not root.is_dir():
        raise FileNotFoundError(f"dataset_dir {root} is not a folder (nor a .csv file).")
    else:
        paths = sorted(p for p in root.rglob("*") if is_image_file(p) and is_listed_file(p))
        if not paths:
            raise FileNotFoundError(f"dataset_dir {root} holds no image tiles ({', '.join(IMAGE_SUFFIXES)}).")
        items = [{"image": str(p), "patient": patient_id_from_path(p)} for p in paths]
    clean, report = check_tiles(
        items, expected_size=expected_size, decode=decode, max_bad_fraction=None, max_image_pixels=max_image_pixels
    )
    if report.unreadable:
        logger.warning(
            "%d of %d tiles in %s are skipped (no prediction):\n  %s",
            report.skipped,
            report.total,
            root,
            "\n  ".join(report.unreadable),
        )
    if not clean:
        raise FileNotFoundError(f"dataset_dir {root}: none of its {len(items)} images is usable:\n{report.summary()}")
    return clean


def evaluation_split(
    data: MSIDatalists, test_dir: str | Path | None = None, allow_validation: bool = False
) -> EvaluationSplit:
    """Choose what an evaluation scores: an external cohort, the held-out test split, or (only when allowed) the
    validation split, which selected ``best_networks.pt`` and therefore flatters it.

    Args:
        data: the run's datalists (``with_test=True`` unless ``test_dir`` is given); its ``classes`` name the class
            folders or CSV labels of ``test_dir``.
        test_dir: an external cohort: a folder with one sub-folder per class, a root with a ``<COHORT>_TEST``
            folder, or a CSV label table (every row, whatever its split). Every readable tile is scored, nothing is
            re-split.
        allow_validation: score the validation split when there is no test split (the report says "optimistic").

    Raises:
        ValueError: no test split, no ``test_dir`` and ``allow_validation`` false.
    """
    if test_dir is not None:
        root, classes = Path(str(test_dir)).expanduser(), data.classes
        if is_label_csv(root):
            items = [t for split_items in read_label_csv(root, classes).values() for t in split_items]
        else:
            split: Literal["train", "test"] = "train" if root.is_dir() and class_folders(root, classes) else "test"
            items = kather_datalist(root, split, classes=classes)
        tiles, report = check_tiles(items, expected_size=None, max_bad_fraction=1.0, class_names=classes.names)
        counts = (
            f"{report.kept} tiles of {report.total} read, {report.skipped} skipped ({report.missing} missing, "
            f"{report.corrupt} corrupt, {report.not_image} not images), {len({t['patient'] for t in tiles})} patients"
        )
        check_no_overlap(
            [*data.train, *data.val], tiles, f"`test_dir` {root}", patient_key="patient", patients_are_ids=False
        )
        return external_split(root, tiles, counts, report)
    if data.is_demo:
        source = "the SYNTHETIC DEMO"
    else:
        source = str(data.root) if data.test else f"{data.root} (no <COHORT>_TEST folder)"
    return held_out_split(data.test, data.val, source, allow_validation, unit="tiles")


def has_test_split(data: MSIDatalists, cohort: str | None = None) -> bool:
    """Whether the run's data set has a test split that ``evaluate.json`` can score without ``--test_dir``: the demo
    set, a Kather root with ``<COHORT>_TEST`` folders, or a CSV with ``test`` rows (file names are listed, not read).
    """
    if data.is_demo:
        return True
    try:
        if is_label_csv(data.root):
            return bool(read_label_csv(data.root, data.classes)["test"])
        return bool(kather_datalist(data.root, "test", cohort, data.classes))
    except (ValueError, OSError):
        return False
