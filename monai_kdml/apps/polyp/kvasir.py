"""Kvasir-SEG polyp detection datalist with a pre-flight check, and a seeded split by image id.

Layout read by :func:`kvasir_datalist` (Kvasir-SEG's own; Jha et al., MMM 2020)::

    dataset_dir/images/<id>.jpg       RGB frame (any of .jpg .jpeg .png .bmp .tif .tiff; not recursive)
    dataset_dir/masks/<id>.jpg        optional polyp mask, any channels, foreground = gray value > 127
    dataset_dir/kavsir_bboxes.json    {"<id>": {"height": H, "width": W, "bbox": [{"label": "polyp",
                                                "xmin": .., "ymin": .., "xmax": .., "ymax": ..}, ...]}, ...}

The same function reads a generic layout: a folder of images plus ``boxes_file=`` either a JSON with the schema
above (``height``/``width`` optional, ``label`` optional, keys may keep the file suffix) or a CSV with header
``image,xmin,ymin,xmax,ymax[,label]``, one row per box, ``image`` the file name inside ``images_dir``; a row whose
coordinates are blank declares a frame without polyps. Labels are class names from ``classes`` (blank = the first).

Boxes are ``[xmin, ymin, xmax, ymax]`` in original pixel edges (``xmax`` exclusive, as in Kvasir, whose boxes often
end at ``xmax == width``). Where the annotation file lacks a frame, or is absent, boxes come from the mask's
8-connected components (scikit-image). Every frame and mask is decoded once before training (about 5 ms of CPU per
frame with its mask, 4 s for Kvasir-SEG), and problems become counted, logged skips: see :class:`PreflightReport`.
Frames left without boxes are kept as negatives (they teach background) unless ``keep_empty=False``; a data set
without any box is refused (:func:`require_frames`). Frames are read as the loaders read them
(:func:`monai_kdml.data.to_rgb`: 16-bit and [0, 1] float frames scaled, not clipped; frames over ``max_image_pixels``
or with values it refuses are skipped and counted).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
from monai.data.box_utils import box_iou
from PIL import Image
from skimage import measure

from monai_kdml.apps.polyp.annotations import Annotation, read_annotations
from monai_kdml.data.images import (
    IMAGE_SUFFIXES,
    MAX_IMAGE_PIXELS,
    ImageFileError,
    displayed_size,
    inspect_image,
    is_image_file,
    is_listed_file,
    scaling_of,
    to_rgb,
)

__all__ = ["FrameLayout", "PreflightReport", "kvasir_datalist", "kvasir_preflight", "require_frames"]

logger = logging.getLogger(__name__)

_MASK_THRESHOLD = 127
_NOT_PROBLEMS = (
    "boxes_from_mask",
    "empty_frames",
    "converted_images",
    "scaled_from_16bit",
    "scaled_from_float",
    "exif_oriented",
)
_SKIPS = {"too_large": "too_large_images", "unsupported": "unsupported_images"}


@dataclass(frozen=True)
class FrameLayout:
    """Where a detection data set keeps its frames, masks and boxes, and how boxes are cleaned (see module doc).

    Args:
        images_dir: frames folder inside the data set folder.
        masks_dir: masks folder inside it (optional when the annotation file covers every frame).
        boxes_file: annotation file inside it, ``.json`` or ``.csv``; ``None`` or absent: boxes from the masks.
        min_box_size: boxes narrower or shorter than this (pixels, after clipping to the frame) are dropped;
            Kvasir-SEG has a few 1-3 px slivers along frame edges and mask holes.
        keep_empty: keep frames left without boxes as negatives; ``False`` skips them.
        classes: label names; the index is the label (Kvasir: ``("polyp",)``, so 0 = polyp).

    Raises:
        ValueError: a negative ``min_box_size`` or no ``classes``.
    """

    images_dir: str = "images"
    masks_dir: str = "masks"
    boxes_file: str | None = "kavsir_bboxes.json"
    min_box_size: float = 10.0
    keep_empty: bool = True
    classes: tuple[str, ...] = ("polyp",)

    def __post_init__(self) -> None:
        object.__setattr__(self, "classes", tuple(str(c) for c in self.classes))  # JSON gives lists
        if self.min_box_size < 0:
            raise ValueError(f"`min_box_size` must be >= 0 pixels, got {self.min_box_size}")
        if not self.classes:
            raise ValueError("`classes` must name at least one class")


@dataclass
class PreflightReport:
    """What the pre-flight check found; each list holds the affected image ids (or box descriptions).

    Attributes:
        dataset_dir: the folder checked.
        images_found: image files in ``images_dir``.
        kept: frames in the datalist.
        corrupt_images: undecodable or truncated frames (skipped).
        too_large_images: frames over ``max_image_pixels`` (skipped; raise the limit for genuine ones).
        unsupported_images: frames whose values :func:`~monai_kdml.data.to_rgb` refuses, e.g. floats outside [0, 1]
            (skipped).
        corrupt_masks: undecodable masks (mask ignored).
        mask_size_mismatch: masks whose size differs from their frame (mask ignored).
        annotation_size_mismatch: annotation ``height``/``width`` differ from the frame (annotation ignored).
        box_mask_disagreement: annotation boxes and mask components do not pair up at IoU >= 0.5 (annotation
            kept; ``boxes_file=None`` uses the masks instead).
        entries_without_image: annotation ids with no image file.
        images_without_entry: frames the annotation file lacks (none listed when there is no such file).
        boxes_from_mask: frames whose boxes come from their mask.
        no_box_source: frames with neither a usable annotation nor a usable mask (skipped).
        empty_frames: frames with no box left (kept as negatives or skipped, see ``keep_empty``).
        clipped_boxes: boxes reaching outside their frame, clipped to it.
        dropped_boxes: boxes under ``min_box_size`` on a side after clipping, or inverted (dropped).
        converted_images: frames the loader converts to RGB from another mode (kept).
        scaled_from_16bit: 16-bit frames the loader scales to 8 bits (kept).
        scaled_from_float: [0, 1] float frames the loader scales to 8 bits (kept).
        exif_oriented: frames whose EXIF orientation tag the loader applies (kept; boxes and masks are read in the
            displayed orientation).
    """

    dataset_dir: str
    images_found: int = 0
    kept: int = 0
    corrupt_images: list[str] = field(default_factory=list)
    too_large_images: list[str] = field(default_factory=list)
    unsupported_images: list[str] = field(default_factory=list)
    corrupt_masks: list[str] = field(default_factory=list)
    mask_size_mismatch: list[str] = field(default_factory=list)
    annotation_size_mismatch: list[str] = field(default_factory=list)
    box_mask_disagreement: list[str] = field(default_factory=list)
    entries_without_image: list[str] = field(default_factory=list)
    images_without_entry: list[str] = field(default_factory=list)
    boxes_from_mask: list[str] = field(default_factory=list)
    no_box_source: list[str] = field(default_factory=list)
    empty_frames: list[str] = field(default_factory=list)
    clipped_boxes: list[str] = field(default_factory=list)
    dropped_boxes: list[str] = field(default_factory=list)
    converted_images: list[str] = field(default_factory=list)
    scaled_from_16bit: list[str] = field(default_factory=list)
    scaled_from_float: list[str] = field(default_factory=list)
    exif_oriented: list[str] = field(default_factory=list)

    @property
    def has_problems(self) -> bool:
        """Whether anything was skipped, ignored, clipped or dropped (boxes from masks, negatives and conversions are
        normal)."""
        listed = [getattr(self, f.name) for f in fields(self) if f.name not in _NOT_PROBLEMS]
        return any(isinstance(values, list) and values for values in listed)

    def summary(self, examples: int = 3) -> str:
        """One readable block: a line per check with its count and up to ``examples`` names."""
        lines = [f"Pre-flight of {self.dataset_dir}: {self.images_found} images found, {self.kept} frames kept"]
        for f in fields(self):
            values = getattr(self, f.name)
            if isinstance(values, list):
                shown = ", ".join(values[:examples]) + (", ..." if len(values) > examples else "")
                lines.append(
                    f"  {f.name.replace('_', ' '):<26}{len(values):>6}" + (f"   e.g. {shown}" if values else "")
                )
        return "\n".join(lines)


def _index_images(folder: Path) -> dict[str, Path]:
    """``{id: file}`` for the image files directly in ``folder`` (hidden files ignored)."""
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        if is_image_file(path) and is_listed_file(path):
            if path.stem in found:
                raise ValueError(
                    f"{folder}: two files for image id {path.stem!r}: {found[path.stem].name}, {path.name}"
                )
            found[path.stem] = path
    return found


def _mask_boxes(foreground: np.ndarray, size: tuple[int, int], min_size: float) -> list[list[float]]:
    """Boxes of a mask's 8-connected components in pixel edges, specks under ``min_size`` dropped.

    Dropped specks are not counted: JPEG masks carry isolated noise pixels (Kvasir-SEG: 115 over 824 masks).
    """
    regions = measure.regionprops(measure.label(foreground, connectivity=2))
    boxes = [[float(r.bbox[1]), float(r.bbox[0]), float(r.bbox[3]), float(r.bbox[2])] for r in regions]
    return _clean_boxes(boxes, [0] * len(boxes), size, min_size, "", PreflightReport(""))[0]


def _disagree(boxes: list[list[float]], mask_boxes: list[list[float]], min_iou: float = 0.5) -> bool:
    """Whether some annotation box or mask component has no partner with IoU >= ``min_iou`` on the other side."""
    if not boxes or not mask_boxes:
        return bool(boxes) != bool(mask_boxes)
    iou = np.asarray(box_iou(np.asarray(boxes), np.asarray(mask_boxes)))
    return bool((iou.max(axis=1) < min_iou).any() or (iou.max(axis=0) < min_iou).any())


def _clean_boxes(
    boxes: list[list[float]],
    labels: list[int],
    size: tuple[int, int],
    min_size: float,
    name: str,
    report: PreflightReport,
) -> tuple[list[list[float]], list[int]]:
    """Clip boxes to the frame ``size`` (width, height); drop those under ``min_size`` on a side or non-finite."""
    width, height = size
    kept_boxes, kept_labels = [], []
    for box, label in zip(boxes, labels, strict=True):
        clipped = [min(max(v, 0.0), float(limit)) for v, limit in zip(box, (width, height, width, height), strict=True)]
        described = f"{name} {[round(v, 1) for v in box]}"
        side = min(clipped[2] - clipped[0], clipped[3] - clipped[1])
        if not all(math.isfinite(v) for v in box) or side <= 0 or side < min_size:
            report.dropped_boxes.append(described)
            continue
        if clipped != box:
            report.clipped_boxes.append(described)
        kept_boxes.append(clipped)
        kept_labels.append(label)
    return kept_boxes, kept_labels


def _read_mask(path: Path | None, name: str, size: tuple[int, int], report: PreflightReport) -> np.ndarray | None:
    """Foreground (gray value > 127) of a mask that decodes and matches its frame's ``size``, else ``None`` (counted).

    Decoded once here rather than through :func:`~monai_kdml.data.images.inspect_image`, since the pixels are needed;
    through :func:`~monai_kdml.data.to_rgb`, as the loaders read masks, so 16-bit and [0, 1] float masks are scaled.
    """
    if path is None:
        return None
    try:
        with Image.open(path) as img:
            if displayed_size(img) != size:
                report.mask_size_mismatch.append(name)
                return None
            return np.asarray(to_rgb(img).convert("L")) > _MASK_THRESHOLD
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError):  # unreadable, damaged, huge
        report.corrupt_masks.append(name)
        return None


def kvasir_preflight(
    dataset_dir: str | Path, layout: FrameLayout | None = None, max_image_pixels: int | None = MAX_IMAGE_PIXELS
) -> tuple[list[dict[str, Any]], PreflightReport]:
    """Check every frame, mask and box once and build the datalist; arguments as in :func:`kvasir_datalist`.

    Returns:
        ``(datalist, report)``; nothing is logged here.
    """
    layout = layout or FrameLayout()
    images_dir, masks_dir, boxes_file = layout.images_dir, layout.masks_dir, layout.boxes_file
    min_box_size, keep_empty, classes = layout.min_box_size, layout.keep_empty, layout.classes
    root = Path(dataset_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset_dir {str(root)!r} does not exist or is not a folder")
    images = _index_images(root / images_dir)
    if not images:
        raise FileNotFoundError(f"dataset_dir {str(root)!r}: no images ({', '.join(IMAGE_SUFFIXES)}) in {images_dir}/")
    masks = _index_images(root / masks_dir)
    box_path = root / boxes_file if boxes_file else None
    annotations: dict[str, Annotation] | None = None
    if box_path is not None and box_path.is_file():
        annotations = read_annotations(box_path, classes)
    elif not masks:
        raise FileNotFoundError(
            f"dataset_dir {str(root)!r}: no boxes: neither the annotation file {boxes_file!r} nor masks in {masks_dir}/"
        )

    report = PreflightReport(dataset_dir=str(root), images_found=len(images))
    report.entries_without_image = sorted(set(annotations or ()) - set(images))
    datalist = []
    for name, image_path in images.items():
        try:
            info = inspect_image(image_path, decode=True, max_image_pixels=max_image_pixels)
        except ImageFileError as err:
            getattr(report, _SKIPS.get(err.kind, "corrupt_images")).append(name)
            continue
        size = (info.width, info.height)
        ann = annotations.get(name) if annotations is not None else None
        if annotations is not None and ann is None:
            report.images_without_entry.append(name)
        if ann is not None and ann.size not in (None, size):
            report.annotation_size_mismatch.append(name)
            ann = None
        mask = _read_mask(masks.get(name), name, size, report)
        mask_boxes = _mask_boxes(mask, size, min_box_size) if mask is not None else None
        if ann is not None:
            boxes, labels = _clean_boxes(ann.boxes, ann.labels, size, min_box_size, name, report)
            if mask_boxes is not None and _disagree(boxes, mask_boxes):
                report.box_mask_disagreement.append(name)
        elif mask_boxes is not None:
            boxes, labels = mask_boxes, [0] * len(mask_boxes)
            report.boxes_from_mask.append(name)
        else:
            report.no_box_source.append(name)
            continue
        if not boxes:
            report.empty_frames.append(name)
            if not keep_empty:
                continue
        datalist.append({"image": str(image_path), "box": boxes, "label": labels, "id": name})
        if info.orientation != 1:
            report.exif_oriented.append(name)
        if info.mode != "RGB":
            scaled = {"16-bit": report.scaled_from_16bit, "float": report.scaled_from_float}
            scaled.get(str(scaling_of(info.mode)), report.converted_images).append(name)
    report.kept = len(datalist)
    return datalist, report


def kvasir_datalist(
    dataset_dir: str | Path, layout: FrameLayout | None = None, max_image_pixels: int | None = MAX_IMAGE_PIXELS
) -> list[dict[str, Any]]:
    """Datalist of a Kvasir-SEG style folder after a logged pre-flight check (layouts in the module doc).

    Each item is ``{"image": path, "box": [[xmin, ymin, xmax, ymax], ...], "label": [class index, ...], "id": id}``
    with boxes in original pixel edges, sorted by file name. The pre-flight summary is logged as one block
    (WARNING when something was skipped, clipped or dropped, else INFO).

    Args:
        dataset_dir: the data set folder.
        layout: where frames, masks and boxes are and how boxes are cleaned; default :class:`FrameLayout`
            (Kvasir-SEG's own layout).
        max_image_pixels: frames with more pixels are skipped (PIL's decompression-bomb guard; ``None``: no limit);
            set as ``PIL.Image.MAX_IMAGE_PIXELS`` in this process, so ``DataLoader`` workers forked later inherit it.
            Give the transforms the same value (they set it in spawned workers).

    Returns:
        The datalist, ready for ``monai.data.CacheDataset`` with
        :func:`monai_kdml.apps.polyp.transforms.polyp_train_transforms`.

    Raises:
        FileNotFoundError: ``dataset_dir`` missing, no images in it, or no annotation file and no masks.
        ValueError: an unreadable or malformed annotation file, an unknown label, two files for one image id, no
            usable frame, or no box in any frame.
    """
    datalist, report = kvasir_preflight(dataset_dir, layout, max_image_pixels)
    return require_frames(dataset_dir, datalist, report)


def require_frames(
    dataset_dir: str | Path, datalist: list[dict[str, Any]], report: PreflightReport
) -> list[dict[str, Any]]:
    """Log the pre-flight ``report`` in one block (WARNING when it found problems); refuse a datalist to train on
    that has no frame, or no box in any frame.

    Frames without boxes are fine as negatives beside positive ones, but a data set of negatives only trains the
    detector on nothing, and its metrics come out NaN: that is a broken or mismatched annotation file.

    Args:
        dataset_dir: the folder checked, for the messages.
        datalist: the pre-flight's datalist.
        report: the pre-flight's report.

    Returns:
        ``datalist``.

    Raises:
        ValueError: no usable frame, or no box in any of them; the message carries the counts and the report.
    """
    logger.log(logging.WARNING if report.has_problems else logging.INFO, "%s", report.summary())
    if not datalist:
        raise ValueError(f"dataset_dir {str(dataset_dir)!r}: no usable frames\n{report.summary()}")
    if not any(item["box"] for item in datalist):
        raise ValueError(
            f"dataset_dir {str(dataset_dir)!r}: none of the {len(datalist)} usable frames has a box "
            f"({len(report.empty_frames)} frames without boxes, {len(report.dropped_boxes)} boxes dropped as too "
            f"small or degenerate): training would see no polyp. Check the annotation file and masks.\n"
            f"{report.summary()}"
        )
    return datalist
