"""Everything the polyp bundle needs from the data in one call: demo or real frames, checked, split by image id.

:func:`prepare_polyp_datalists` resolves the frames (the generated demo set when no ``dataset_dir`` is given),
runs the pre-flight check of :func:`monai_kdml.apps.polyp.kvasir.kvasir_preflight` once, logs its summary and makes a
seeded train/validation/test split by image id, before any network is built. :func:`polyp_inference_datalist`
lists (and checks) a plain folder of frames for inference.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from monai_kdml.apps.polyp.demo import ensure_polyp_demo, make_polyp_demo
from monai_kdml.apps.polyp.kvasir import FrameLayout, PreflightReport, kvasir_preflight, require_frames
from monai_kdml.data.evaluation import EvaluationSplit, check_no_overlap, external_split, held_out_split
from monai_kdml.data.images import (
    IMAGE_SUFFIXES,
    MAX_IMAGE_PIXELS,
    ImageFileError,
    inspect_image,
    is_image_file,
    is_listed_file,
)

__all__ = [
    "PolypDatalists",
    "evaluation_split",
    "frame_ids",
    "polyp_inference_datalist",
    "prepare_polyp_datalists",
    "split_by_id",
]

logger = logging.getLogger(__name__)


@dataclass
class PolypDatalists:
    """Train/validation/test datalists of one run (items of :func:`monai_kdml.apps.polyp.kvasir.kvasir_datalist`).

    Args:
        root: the data set folder that was read.
        is_demo: whether ``root`` is the generated demo set.
        train: training frames.
        val: validation frames (model selection).
        test: held-out frames, never seen by training or model selection (``evaluate.json`` scores them).
        report: the pre-flight check of ``root``.
    """

    root: Path
    is_demo: bool
    train: list[dict[str, Any]]
    val: list[dict[str, Any]]
    test: list[dict[str, Any]]
    report: PreflightReport


def prepare_polyp_datalists(
    dataset_dir: str | Path | None,
    cache_dir: str | Path,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
    layout: FrameLayout | None = None,
    max_images: int | None = None,
    demo_images: int = 200,
    demo_image_size: int = 160,
    max_image_pixels: int | None = MAX_IMAGE_PIXELS,
) -> PolypDatalists:
    """Resolve the frames (the synthetic demo when ``dataset_dir`` is None), check every one, split by image id.

    Args:
        dataset_dir: a Kvasir-SEG folder or a generic one (layouts in :mod:`monai_kdml.apps.polyp.kvasir`), or ``None``
            (or ``""``) for the demo set generated once under ``cache_dir`` (a WARNING says so on every run).
        cache_dir: where the demo set is cached.
        val_fraction: share of image ids for validation.
        test_fraction: share of image ids held out for testing.
        seed: seed of the split (and of the ``max_images`` subset); the split does not depend on file order.
        layout: where frames, masks and boxes are (:class:`monai_kdml.apps.polyp.FrameLayout`; default Kvasir-SEG's).
        max_images: keep a seeded random subset of this many frames before splitting (quick runs); ``None``: all.
        demo_images: frames of the demo set.
        demo_image_size: longest side of the demo frames, pixels.
        max_image_pixels: frames with more pixels are skipped and counted (PIL's decompression-bomb guard;
            ``None``: no limit); set as ``PIL.Image.MAX_IMAGE_PIXELS`` in this process (forked ``DataLoader``
            workers inherit it). Give the transforms the same value (they set it in spawned workers too).

    Returns:
        The :class:`PolypDatalists`.

    Raises:
        FileNotFoundError: ``dataset_dir`` missing, without images, or without any box source.
        ValueError: no usable frame, no box in any frame or in the training split, a bad annotation file, a bad
            fraction or ``max_images`` < 3.
    """
    if dataset_dir is not None and not str(dataset_dir).strip():
        raise ValueError("`dataset_dir` is empty: give a folder, or None for the synthetic demo set.")
    is_demo = dataset_dir is None
    if is_demo:
        root = ensure_polyp_demo(Path(cache_dir), num_images=demo_images, image_size=demo_image_size, seed=0)
    else:
        root = Path(str(dataset_dir)).expanduser()
    datalist, report = kvasir_preflight(root, layout, max_image_pixels)
    require_frames(root, datalist, report)
    if max_images is not None:
        datalist = _subset(datalist, max_images, seed)
    train, val, test = split_by_id(datalist, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed)
    if not any(item["box"] for item in train):
        raise ValueError(
            f"dataset_dir {str(root)!r}: the {len(train)} training frames have no box (the "
            f"{sum(bool(item['box']) for item in datalist)} frames with boxes all went to validation or test): "
            "add annotated frames or lower val_fraction / test_fraction"
        )
    logger.info(
        "Polyp data from %s%s: %d train / %d validation / %d test frames (%d / %d / %d boxes).",
        root,
        " (SYNTHETIC DEMO)" if is_demo else "",
        len(train),
        len(val),
        len(test),
        *(sum(len(item["box"]) for item in part) for part in (train, val, test)),
    )
    return PolypDatalists(root=root, is_demo=is_demo, train=train, val=val, test=test, report=report)


def evaluation_split(
    data: PolypDatalists,
    test_dir: str | Path | None = None,
    layout: FrameLayout | None = None,
    allow_validation: bool = False,
) -> EvaluationSplit:
    """Choose what an evaluation scores (see :mod:`monai_kdml.data.evaluation`).

    Args:
        data: the run's datalists.
        test_dir: an external cohort in any layout :func:`~monai_kdml.apps.polyp.kvasir.kvasir_preflight` reads
            (e.g. CVC-ClinicDB: frames + masks, boxes from the masks' connected components, ``boxes_file=None``);
            every readable frame is scored, nothing is re-split.
        layout: the external cohort's layout; default Kvasir-SEG's.
        allow_validation: score the validation split when there is no test split (the report says "optimistic").

    Raises:
        ValueError: no test split, no ``test_dir`` and ``allow_validation`` false; an external folder without frames.
    """
    if test_dir is not None:
        root = Path(str(test_dir)).expanduser()
        frames, report = kvasir_preflight(root, layout)
        require_frames(root, frames, report)
        skipped = len(report.corrupt_images) + len(report.no_box_source)
        counts = (
            f"{report.kept} frames of {report.images_found} read, {skipped} skipped ({len(report.corrupt_images)} "
            f"corrupt, {len(report.no_box_source)} without boxes or masks), {sum(len(f['box']) for f in frames)} boxes"
        )
        check_no_overlap([*data.train, *data.val], frames, f"`test_dir` {root}")
        return external_split(root, frames, counts, report)
    source = f"the SYNTHETIC DEMO in {data.root}" if data.is_demo else str(data.root)
    return held_out_split(data.test, data.val, source, allow_validation, unit="frames")


def _subset(datalist: list[dict[str, Any]], max_images: int, seed: int) -> list[dict[str, Any]]:
    """A seeded random ``max_images`` frames, in their original order."""
    if max_images < 3:
        raise ValueError(f"max_images must be >= 3 (one frame per split at least), got {max_images}")
    if max_images >= len(datalist):
        return datalist
    keep = np.sort(np.random.default_rng(seed).permutation(len(datalist))[:max_images])
    return [datalist[int(i)] for i in keep]


def polyp_inference_datalist(
    folder: str | Path | None,
    cache_dir: str | Path | None = None,
    recursive: bool = False,
    demo_images: int = 8,
    max_image_pixels: int | None = MAX_IMAGE_PIXELS,
) -> list[dict[str, Any]]:
    """``[{"image": path, "id": name}, ...]`` for the frames in ``folder``, each decoded once beforehand.

    A folder holding no frame but an ``images/`` sub-folder (a Kvasir-SEG root) is read through it. Frames that do
    not decode, are over ``max_image_pixels`` or have values :func:`~monai_kdml.data.to_rgb` refuses are skipped and
    counted in one WARNING naming each with its reason. ``id`` is the path relative to the folder read, without its
    suffix, unless another frame shares that id (``dup.jpg`` and ``dup.png``) or it equals another frame's file name:
    then the suffix stays (``dup.jpg``), so every frame has its own id and output files.

    Args:
        folder: a folder of frames (suffixes of :data:`monai_kdml.data.IMAGE_SUFFIXES`); ``None`` or ``""``:
            ``demo_images`` synthetic frames generated once under ``cache_dir`` (logged as a WARNING).
        cache_dir: where the synthetic frames go when ``folder`` is not given.
        recursive: also list sub-folders.
        demo_images: number of synthetic frames.
        max_image_pixels: frames with more pixels are skipped, as in :func:`prepare_polyp_datalists`.

    Returns:
        The datalist, sorted by path.

    Raises:
        FileNotFoundError: ``folder`` is missing or holds no frame that decodes.
        ValueError: neither ``folder`` nor ``cache_dir`` given.
    """
    if folder is None or str(folder) == "":
        folder = _demo_frames(cache_dir, demo_images)
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"input folder {str(root)!r} does not exist or is not a folder")
    paths = _frame_paths(root, recursive)
    if not paths and (root / "images").is_dir():
        root = root / "images"
        paths = _frame_paths(root, recursive)
    ids = frame_ids(paths, root)
    items, unusable = [], []
    for path in paths:
        try:
            inspect_image(path, decode=True, max_image_pixels=max_image_pixels)
        except ImageFileError as err:
            unusable.append(str(err))
            continue
        items.append({"image": str(path), "id": ids[path]})
    if unusable:
        logger.warning(
            "%d of %d frames in %s are skipped (no prediction):\n  %s", len(unusable), len(paths), root,
            "\n  ".join(unusable),
        )  # fmt: skip
    if not items:
        raise FileNotFoundError(
            f"input folder {str(root)!r}: no frame left to predict ({len(paths)} found, {len(unusable)} unusable; "
            f"suffixes {', '.join(IMAGE_SUFFIXES)})"
        )
    logger.info("Inference on %d frames from %s.", len(items), root)
    return items


def frame_ids(paths: list[Path], root: Path) -> dict[Path, str]:
    """A unique id per frame: its path relative to ``root`` without the suffix, or with it where that would clash.

    Args:
        paths: distinct files under ``root``.
        root: the folder the ids are relative to.

    Returns:
        ``{path: id}``; no two ids are equal.
    """
    names = {path: path.relative_to(root).as_posix() for path in paths}
    stems = {path: Path(name).with_suffix("").as_posix() for path, name in names.items()}
    shared = Counter(stems.values())
    taken = set(names.values())
    return {path: stem if shared[stem] == 1 and stem not in taken else names[path] for path, stem in stems.items()}


def _frame_paths(root: Path, recursive: bool) -> list[Path]:
    pattern = "**/*" if recursive else "*"
    return sorted(p for p in root.glob(pattern) if is_image_file(p) and is_listed_file(p))


def _demo_frames(cache_dir: str | Path | None, num_images: int) -> Path:
    """A folder of ``num_images`` synthetic frames under ``cache_dir`` (generated on first use)."""
    if cache_dir is None:
        raise ValueError("polyp_inference_datalist: give an input `folder` (or a `cache_dir` for synthetic frames)")
    folder = Path(cache_dir) / f"polyp_inference_demo_n{num_images}"
    logger.warning(
        "No input folder given: running inference on %d SYNTHETIC demo frames in %s; pass dataset_dir=<folder>.",
        num_images,
        folder / "images",
    )
    if len(_frame_paths(folder / "images", False)) != num_images:
        make_polyp_demo(folder, num_images, image_size=288, seed=12345)  # a seed the training demo never uses
    return folder / "images"


def split_by_id(
    datalist: Sequence[dict[str, Any]], val_fraction: float = 0.1, test_fraction: float = 0.1, seed: int = 0
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """Seeded train/val/test split by image id, independent of the input order.

    Ids are sorted, shuffled with ``numpy.random.default_rng(seed)``; the first ``round(test_fraction * n)`` go to
    test, the next ``round(val_fraction * n)`` to val, the rest to train. Items sharing an id stay together;
    each part is sorted by id.

    Args:
        datalist: items with an ``"id"`` key.
        val_fraction: share of ids for validation, in [0, 1).
        test_fraction: share of ids for testing, in [0, 1).
        seed: shuffling seed.

    Returns:
        ``(train, val, test)``.

    Raises:
        ValueError: a fraction outside [0, 1), fractions leaving no training id, or an item without ``"id"``.
    """
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0 <= value < 1:
            raise ValueError(f"{name} must be in [0, 1), got {value}")
    if any("id" not in item for item in datalist):
        raise ValueError("split_by_id: every datalist item needs an 'id' key")
    ids = sorted({str(item["id"]) for item in datalist})
    order = [ids[i] for i in np.random.default_rng(seed).permutation(len(ids))]
    n_test, n_val = round(test_fraction * len(ids)), round(val_fraction * len(ids))
    if n_test + n_val >= len(ids):
        raise ValueError(
            f"val_fraction={val_fraction} and test_fraction={test_fraction} leave no training image of {len(ids)}"
        )
    part = {i: 2 for i in order[:n_test]} | {i: 1 for i in order[n_test : n_test + n_val]}
    splits: tuple[list, list, list] = ([], [], [])
    for item in sorted(datalist, key=lambda item: str(item["id"])):
        splits[part.get(str(item["id"]), 0)].append(item)
    return splits
