"""Whole-slide images for the MSI app: which slides, their pyramid and resolution, the tissue mask and the tile grid.

A slide is read with MONAI's :class:`monai.data.WSIReader` (``openslide`` or ``tifffile`` backend; the
``monai-kdml[wsi]`` extra). :func:`plan_slide` turns one slide into a list of tissue tiles, each a
:class:`monai.data.PatchWSIDataset` item (``location`` in level-0 pixels as ``(row, col)``, ``level``, ``size``):
the tiles cover ``image_size * tile_mpp`` microns, are read from the pyramid level nearest *below* (finer than or
equal to) ``tile_mpp`` and resized to ``image_size`` by the tile transform, so no whole level 0 is ever loaded.
The tissue mask (Otsu on the HSV saturation, scikit-image) is computed on a thumbnail of at most
``mask_side`` pixels, read block by block from the coarsest level, so memory stays bounded on any slide size.
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "SLIDE_SUFFIXES",
    "SlideError",
    "SlidePlan",
    "SlideSource",
    "list_slides",
    "plan_slide",
    "slide_name",
    "tissue_mask",
]

logger = logging.getLogger(__name__)

SLIDE_SUFFIXES = (".svs", ".tif", ".tiff", ".ndpi", ".scn", ".mrxs", ".vms", ".vmu", ".bif", ".svslide")
"""File suffixes taken from a slide folder (OpenSlide's formats and pyramidal TIFF)."""
_BLOCK = 2048  # pixels per side of one read while building the thumbnail
_MIN_SATURATION = 0.07  # a floor under Otsu: a blank slide's noise is not tissue


class SlideError(ValueError):
    """A slide that cannot be used; the message names the slide and the reason."""


@dataclass(frozen=True)
class SlideSource:
    """One slide to process: its file and, when known, its patient (``None``: the slide is its own patient)."""

    path: Path
    patient: str | None = None

    @property
    def name(self) -> str:
        return slide_name(self.path)


def slide_name(path: str | Path) -> str:
    """The slide's name: its file name without the suffix (``TCGA-AA-0001-01Z-00-DX1.svs`` -> ``TCGA-AA-...``)."""
    return Path(path).name.split(".")[0] if Path(path).suffix else Path(path).name


def list_slides(
    slide_dir: str | Path | None = None, slides: str | Path | Sequence[str] | None = None
) -> list[SlideSource]:
    """The slides of a folder, a list of files, or a CSV with a ``slide`` column (and an optional ``patient``).

    Relative paths in a CSV are taken from the CSV's folder; a slide named without a suffix is looked up in
    ``slide_dir``. Names must be unique (they name the output folders).

    Args:
        slide_dir: a folder; every file with a suffix of :data:`SLIDE_SUFFIXES` in it (not recursive).
        slides: a list of slide files, or the path of a ``.csv`` file ``slide[,patient]``.

    Raises:
        ValueError: neither or nothing given, a missing folder or CSV, a CSV without a ``slide`` column, two slides
            with the same name.
    """
    sources: list[SlideSource] = []
    base = None if slide_dir is None else Path(slide_dir).expanduser()
    if base is not None and not base.is_dir():
        raise ValueError(f"`slide_dir` {base} is not a folder.")
    if isinstance(slides, (str, Path)) and str(slides).lower().endswith(".csv"):
        sources = _read_slide_csv(Path(slides).expanduser(), base)
    elif slides is not None:
        sources = [SlideSource(Path(s).expanduser()) for s in ([slides] if isinstance(slides, (str, Path)) else slides)]
    elif base is not None:
        sources = [SlideSource(p) for p in sorted(base.iterdir()) if p.suffix.lower() in SLIDE_SUFFIXES]
    else:
        raise ValueError(
            "give `slide_dir` (a folder of slides) or `slides` (a list of files or a CSV slide[,patient])."
        )
    if not sources:
        raise ValueError(f"no slides found in {base} (suffixes {', '.join(SLIDE_SUFFIXES)}).")
    names = [s.name for s in sources]
    if dup := sorted({n for n in names if names.count(n) > 1}):
        raise ValueError(f"slide names must be unique (they name the output folders), repeated: {', '.join(dup)}.")
    return sources


def _read_slide_csv(path: Path, base: Path | None) -> list[SlideSource]:
    if not path.is_file():
        raise ValueError(f"`slides` CSV {path} does not exist.")
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        if "slide" not in (reader.fieldnames or []):
            raise ValueError(f"{path}: needs a `slide` column (and optionally `patient`), has {reader.fieldnames}.")
        rows = [r for r in reader if (r.get("slide") or "").strip()]
    out = []
    for row in rows:
        file = Path(row["slide"].strip()).expanduser()
        if not file.is_absolute():
            file = (base or path.parent) / file
        if not file.suffix and base is not None:
            file = next((p for p in base.glob(file.name + ".*") if p.suffix.lower() in SLIDE_SUFFIXES), file)
        out.append(SlideSource(file, (row.get("patient") or "").strip() or None))
    return out


def tissue_mask(rgb: np.ndarray, min_saturation: float = _MIN_SATURATION, smooth: float = 2.0) -> np.ndarray:
    """Tissue pixels of an RGB thumbnail: smoothed HSV saturation above its Otsu threshold (at least
    ``min_saturation``), holes filled, specks removed.

    Stained tissue is coloured; glass and background are grey or white. Smoothing first makes Otsu split glass from
    tissue rather than pale stroma from nuclei; filling holes keeps lumens and tears inside the tissue.

    Args:
        rgb: ``(H, W, 3)`` uint8.
        min_saturation: floor of the threshold, so a blank slide yields no tissue rather than its noise.
        smooth: Gaussian sigma in thumbnail pixels.

    Returns:
        ``(H, W)`` bool.
    """
    from scipy import ndimage
    from skimage.color import rgb2hsv
    from skimage.filters import gaussian, threshold_otsu

    saturation = gaussian(rgb2hsv(rgb[..., :3])[..., 1], sigma=smooth)
    threshold = threshold_otsu(saturation) if np.ptp(saturation) > 1e-3 else 1.0
    mask = saturation > max(float(threshold), min_saturation)
    mask = ndimage.binary_fill_holes(ndimage.binary_closing(mask, iterations=2))
    return np.asarray(ndimage.binary_opening(mask, iterations=1), bool)


@dataclass
class SlidePlan:
    """What :func:`plan_slide` found: the tissue tiles to read and what the heatmap needs.

    Attributes:
        name: the slide's name; ``path``: its file.
        mpp: microns per pixel of level 0; ``level``: the level the tiles are read from; ``read_size``: pixels read
            per tile side at that level (then resized to the network's input).
        step: tile side in level-0 pixels; ``grid``: tiles per column and per row ``(rows, cols)``.
        tiles: :class:`monai.data.PatchWSIDataset` items of the tissue tiles (with ``row``/``col`` grid indices).
        skipped: grid tiles without enough tissue; ``thumbnail``: ``(h, w, 3)`` uint8 RGB of the slide, whose
            pixel is ``thumbnail_ratio`` level-0 pixels.
    """

    name: str
    path: Path
    mpp: float
    level: int
    read_size: int
    step: float
    grid: tuple[int, int]
    tiles: list[dict[str, Any]] = field(default_factory=list)
    skipped: int = 0
    thumbnail: np.ndarray = field(default_factory=lambda: np.zeros((1, 1, 3), np.uint8))
    thumbnail_ratio: float = 1.0


def _pyramid(reader: Any, wsi: Any) -> list[tuple[int, float]]:
    """``(level, downsample)`` of the levels of the slide's own pyramid, finest first (a tifffile reader lists the
    label, macro and thumbnail pages as levels too: those with another aspect ratio are dropped)."""
    height, width = reader.get_size(wsi, 0)
    levels, count = [(0, 1.0)], reader.get_level_count(wsi)
    if hasattr(wsi, "series"):  # a tifffile.TiffFile: the readable levels are those of its first series
        count = min(count, len(wsi.series[0].levels))
    for level in range(1, count):
        h, w = reader.get_size(wsi, level)
        ratio = float(reader.get_downsample_ratio(wsi, level))
        if abs(height / h - width / w) <= 0.05 * max(height / h, width / w) and ratio > levels[-1][1]:
            levels.append((level, ratio))
    return levels


def _slide_mpp(reader: Any, wsi: Any, slide_mpp: float | None, name: str) -> float:
    try:
        mpp = float(np.mean(reader.get_mpp(wsi, 0)))
    except (ValueError, KeyError, TypeError, AttributeError):
        mpp = math.nan
    if math.isfinite(mpp) and mpp > 0:
        return mpp
    if slide_mpp is None:
        raise SlideError(
            f"slide {name}: its resolution (microns per pixel) is not stated in the file; give --slide_mpp."
        )
    return float(slide_mpp)


def _thumbnail(reader: Any, wsi: Any, levels: list[tuple[int, float]], max_side: int) -> tuple[np.ndarray, float]:
    """An RGB thumbnail of at most ``max_side`` pixels per side and its downsample from level 0, read in blocks of
    ``_BLOCK`` pixels from the coarsest level (bounded memory even when that level is large)."""
    from PIL import Image

    level, ratio = levels[-1]
    height, width = reader.get_size(wsi, level)
    factor = max(1.0, max(height, width) / max_side)
    out_h, out_w = max(1, round(height / factor)), max(1, round(width / factor))
    thumb = np.zeros((out_h, out_w, 3), np.uint8)
    for top in range(0, height, _BLOCK):
        for left in range(0, width, _BLOCK):
            h, w = min(_BLOCK, height - top), min(_BLOCK, width - left)
            block, _ = reader.get_data(
                wsi, location=(round(top * ratio), round(left * ratio)), size=(h, w), level=level
            )
            block = np.moveaxis(np.asarray(block)[:3], 0, -1)
            y0, x0 = round(top / factor), round(left / factor)
            y1, x1 = min(out_h, round((top + h) / factor)), min(out_w, round((left + w) / factor))
            if y1 > y0 and x1 > x0:
                small = Image.fromarray(np.ascontiguousarray(block, np.uint8)).resize(
                    (x1 - x0, y1 - y0), Image.Resampling.BOX
                )
                thumb[y0:y1, x0:x1] = np.asarray(small)
    return thumb, ratio * factor


def plan_slide(
    reader: Any,
    source: SlideSource,
    image_size: int,
    tile_mpp: float,
    slide_mpp: float | None = None,
    min_tissue: float = 0.5,
    mask_side: int = 1024,
    max_tiles: int | None = None,
    seed: int = 0,
) -> SlidePlan:
    """Open one slide and list its tissue tiles.

    Args:
        reader: a :class:`monai.data.WSIReader`.
        source: the slide.
        image_size: the network's input side in pixels.
        tile_mpp: microns per pixel of the network's input (the model's ``tile_mpp``).
        slide_mpp: level-0 microns per pixel, used only when the file states none.
        min_tissue: smallest fraction of a tile's area that must be tissue.
        mask_side: longest side of the thumbnail the mask is computed on.
        max_tiles: keep at most this many tissue tiles, drawn at random (``seed``); ``None``: all.
        seed: seed of that draw.

    Returns:
        A :class:`SlidePlan`.

    Raises:
        SlideError: naming the slide: unreadable, unsupported, no resolution, or no tissue.
    """
    name = source.name
    if not source.path.is_file():
        raise SlideError(f"slide {name}: {source.path} does not exist.")
    try:
        wsi = reader.read(str(source.path))
        levels = _pyramid(reader, wsi)
        mpp = _slide_mpp(reader, wsi, slide_mpp, name)
        thumb, thumb_ratio = _thumbnail(reader, wsi, levels, mask_side)
    except SlideError:
        raise
    except Exception as err:  # every backend raises its own types for unreadable, truncated or unknown files
        raise SlideError(f"slide {name}: cannot read {source.path} ({type(err).__name__}: {err}).") from None
    height, width = reader.get_size(wsi, 0)
    step = image_size * tile_mpp / mpp  # tile side in level-0 pixels
    fine_enough = [(lv, r) for lv, r in levels if mpp * r <= tile_mpp * 1.01]
    if not fine_enough:
        logger.warning("slide %s: level 0 (%.3f um/px) is coarser than the model's %.3f um/px.", name, mpp, tile_mpp)
    level, ratio = fine_enough[-1] if fine_enough else levels[0]
    rows, cols = int(height // step), int(width // step)
    if rows == 0 or cols == 0:
        raise SlideError(f"slide {name}: {height} x {width} px is smaller than one tile ({step:.0f} px at level 0).")
    mask = tissue_mask(thumb)
    tiles, skipped = [], 0
    for r in range(rows):
        for c in range(cols):
            y0, y1 = (
                int(r * step / thumb_ratio),
                max(int(r * step / thumb_ratio) + 1, int((r + 1) * step / thumb_ratio)),
            )
            x0, x1 = (
                int(c * step / thumb_ratio),
                max(int(c * step / thumb_ratio) + 1, int((c + 1) * step / thumb_ratio)),
            )
            if mask[y0:y1, x0:x1].mean() >= min_tissue:
                tiles.append(
                    {"image": str(source.path), "location": (round(r * step), round(c * step)), "row": r, "col": c}
                )
            else:
                skipped += 1
    if not tiles:
        raise SlideError(f"slide {name}: no tissue found ({rows * cols} tiles, none with {min_tissue:.0%} tissue).")
    if max_tiles is not None and len(tiles) > max_tiles:
        keep = np.sort(np.random.default_rng(seed).choice(len(tiles), max_tiles, replace=False))
        tiles = [tiles[i] for i in keep]
    read_size = max(1, round(step / ratio))
    for tile in tiles:
        tile.update(level=level, size=read_size)
    return SlidePlan(name, source.path, mpp, level, read_size, step, (rows, cols), tiles, skipped, thumb, thumb_ratio)
