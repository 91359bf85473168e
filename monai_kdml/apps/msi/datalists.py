"""Everything the MSI bundle needs from the data in one call: demo or real tiles, checked and split by patient."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

from monai.utils import look_up_option

from monai_kdml.apps.msi.demo import ensure_msi_demo
from monai_kdml.apps.msi.kather import (
    DatasetLayoutError,
    class_folders,
    kather_datalist,
    patient_id_from_path,
    split_by_patient,
    undersample,
)
from monai_kdml.apps.msi.tiles import TileCheckReport, check_tiles
from monai_kdml.data.evaluation import EvaluationSplit, external_split, held_out_split
from monai_kdml.data.images import IMAGE_SUFFIXES, MAX_IMAGE_PIXELS, is_image_file

__all__ = ["MSIDatalists", "evaluation_split", "prepare_msi_datalists", "tile_datalist"]

logger = logging.getLogger(__name__)

_BALANCING = ("none", "undersample", "weighted")


@dataclass
class MSIDatalists:
    """Train/validation (by patient) and test datalists of one run.

    Args:
        root: the data set root that was read.
        is_demo: whether ``root`` is the generated demo set.
        train: training tiles (after the optional undersampling).
        val: validation tiles, drawn from the training folder by patient.
        test: tiles of the test folder (``[]`` when not requested or absent).
        report: the pre-flight tile check of the training folder.
    """

    root: Path
    is_demo: bool
    train: list[dict[str, Any]]
    val: list[dict[str, Any]]
    test: list[dict[str, Any]]
    report: TileCheckReport


def prepare_msi_datalists(
    dataset_dir: str | Path | None,
    cache_dir: str | Path,
    val_fraction: float = 0.2,
    seed: int = 0,
    cohort: str | None = None,
    balance: Literal["none", "undersample", "weighted"] = "none",
    expected_size: tuple[int, int] | None = (224, 224),
    decode: bool | None = None,
    max_image_pixels: int | None = MAX_IMAGE_PIXELS,
    with_test: bool = False,
    demo_patients: int = 48,
    demo_tiles_per_patient: int = 20,
) -> MSIDatalists:
    """Resolve the data (the synthetic demo when ``dataset_dir`` is None), check every tile, split by patient.

    Runs before any network is built, so a missing folder, a missing class or a broken download fails in seconds.

    Args:
        dataset_dir: the Kather root (``CRC_DX_TRAIN``/``CRC_DX_TEST``), a single class-folder root, or ``None``
            for the demo set generated (once) under ``cache_dir``.
        cache_dir: where the demo set is cached.
        val_fraction: fraction of training patients (per class) held out for validation.
        seed: seed of the patient split and of the undersampling.
        cohort: ``"CRC"`` or ``"STAD"`` when ``dataset_dir`` holds both.
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

    Returns:
        The :class:`MSIDatalists`.
    """
    look_up_option(balance, _BALANCING)
    if dataset_dir is not None and not str(dataset_dir).strip():
        raise ValueError("`dataset_dir` is empty: give a folder, or None for the synthetic demo set.")
    is_demo = dataset_dir is None
    if is_demo:
        root = ensure_msi_demo(
            Path(cache_dir), num_patients=demo_patients, tiles_per_patient=demo_tiles_per_patient, seed=0
        )
    else:
        root = Path(str(dataset_dir)).expanduser()
    check = partial(check_tiles, expected_size=expected_size, decode=decode, max_image_pixels=max_image_pixels)
    tiles, report = check(kather_datalist(root, "train", cohort))
    train, val = split_by_patient(tiles, val_fraction=val_fraction, seed=seed)
    if balance == "undersample":
        train = undersample(train, seed=seed)
    test: list[dict[str, Any]] = []
    if with_test:
        try:
            test, _ = check(kather_datalist(root, "test", cohort))
        except (ValueError, DatasetLayoutError) as err:
            logger.warning("No test split (%s); evaluation falls back to the validation split.", err)
    logger.info(
        "MSI data from %s: %d train / %d validation tiles (%d / %d patients)%s.",
        root,
        len(train),
        len(val),
        len({t["patient"] for t in train}),
        len({t["patient"] for t in val}),
        f", {len(test)} test tiles" if with_test else "",
    )
    return MSIDatalists(root=root, is_demo=is_demo, train=train, val=val, test=test, report=report)


def tile_datalist(
    folder: str | Path,
    expected_size: tuple[int, int] | None = None,
    decode: bool | None = None,
    max_image_pixels: int | None = MAX_IMAGE_PIXELS,
) -> list[dict[str, Any]]:
    """Every image tile under ``folder`` (recursively, sorted), checked like training tiles, for inference.

    Unlike training, any number of unusable tiles is accepted: every usable tile gets a prediction, and the unusable
    ones are skipped and listed in one WARNING (path and reason each) after the check's summary.

    Args:
        folder: any folder of tiles (PNG, JPEG, TIFF, ...); class sub-folders are allowed and ignored.
        expected_size: tile size to count deviations against (they are resized anyway).
        decode: how much the check decodes, as in :func:`check_tiles`.
        max_image_pixels: tiles with more pixels are skipped, as in :func:`prepare_msi_datalists`.

    Returns:
        ``[{"image": path, "patient": id}, ...]`` for the usable tiles.

    Raises:
        FileNotFoundError: ``folder`` does not exist, holds no image file, or none that can be read.
    """
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"dataset_dir {root} is not a folder.")
    paths = sorted(p for p in root.rglob("*") if is_image_file(p) and p.is_file())
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
        raise FileNotFoundError(f"dataset_dir {root}: none of its {len(paths)} images is usable:\n{report.summary()}")
    return clean


def evaluation_split(
    data: MSIDatalists, test_dir: str | Path | None = None, allow_validation: bool = False
) -> EvaluationSplit:
    """Choose what an evaluation scores: an external cohort, the held-out test split, or (only when allowed) the
    validation split, which selected ``best_networks.pt`` and therefore flatters it.

    Args:
        data: the run's datalists (``with_test=True`` unless ``test_dir`` is given).
        test_dir: an external cohort: a folder with one sub-folder per class (Kather's names), or a Kather root with
            a ``<COHORT>_TEST`` folder. Every readable tile is scored, nothing is re-split.
        allow_validation: score the validation split when there is no test split (the report says "optimistic").

    Raises:
        ValueError: no test split, no ``test_dir`` and ``allow_validation`` false.
    """
    if test_dir is not None:
        root = Path(str(test_dir)).expanduser()
        split: Literal["train", "test"] = "train" if root.is_dir() and class_folders(root) else "test"
        tiles, report = check_tiles(kather_datalist(root, split), expected_size=None, max_bad_fraction=1.0)
        counts = (
            f"{report.kept} tiles of {report.total} read, {report.skipped} skipped ({report.corrupt} corrupt, "
            f"{report.not_image} not images), {len({t['patient'] for t in tiles})} patients"
        )
        return external_split(root, tiles, counts, report)
    if data.is_demo:
        source = "the SYNTHETIC DEMO"
    else:
        source = str(data.root) if data.test else f"{data.root} (no <COHORT>_TEST folder)"
    return held_out_split(data.test, data.val, source, allow_validation, unit="tiles")
