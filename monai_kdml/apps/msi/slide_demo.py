"""Synthetic whole-slide images with a known layout, for tests, benchmarks and the bundle README's figure.

A slide is a grid of demo tiles (:func:`monai_kdml.apps.msi.demo_render.render_msi_tile`) on a white background
border, written as a pyramidal tiled TIFF with ``tifffile`` (levels as successive pages, each half the previous one,
the resolution in the tags), which both of MONAI's ``openslide`` and ``tifffile`` readers open. Each tissue tile
has a known MSI-ness, so the slide's ground truth is known tile by tile.
``python -m monai_kdml.apps.msi.slide_demo DIR`` writes a small demo cohort (:func:`write_demo_slides`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np

from monai_kdml.apps.msi.demo_render import KATHER_MICRONS_PER_PIXEL, render_msi_tile

__all__ = ["MSI_LIKE", "MSS_LIKE", "demo_slide_layout", "write_demo_slide", "write_demo_slides", "write_pyramid_tiff"]

MSI_LIKE, MSS_LIKE = 0.95, 0.05
"""MSI-ness of the tiles painted as MSI-like and as MSS-like."""


def demo_slide_layout(
    rows: int, cols: int, pattern: Literal["halves", "mostly_msi", "mostly_mss"] = "halves", seed: int = 0
) -> np.ndarray:
    """MSI-ness of every tissue tile, ``(rows, cols)``.

    ``"halves"``: MSI-like on the left half, MSS-like on the right. ``"mostly_msi"``/``"mostly_mss"``: 80 % of the
    tiles of that kind at random places (``seed``), the rest of the other.
    """
    if pattern == "halves":
        layout = np.full((rows, cols), MSS_LIKE)
        layout[:, : cols // 2] = MSI_LIKE
        return layout
    rng = np.random.default_rng(seed)
    major, minor = (MSI_LIKE, MSS_LIKE) if pattern == "mostly_msi" else (MSS_LIKE, MSI_LIKE)
    return np.where(rng.random((rows, cols)) < 0.8, major, minor)


def write_pyramid_tiff(path: str | Path, rgb: np.ndarray, mpp: float | None, levels: int = 3, tile: int = 128) -> Path:
    """Write ``rgb`` (``(H, W, 3)`` uint8) as a tiled pyramidal TIFF with ``levels`` levels (each half the previous).

    Args:
        path: the file.
        rgb: level 0.
        mpp: microns per pixel of level 0, written as the X/Y resolution in centimetres; ``None``: none stated.
        levels: pyramid levels (fewer when the image gets smaller than a tile).
        tile: TIFF tile side, a multiple of 16.
    """
    import tifffile
    from skimage.transform import downscale_local_mean

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = rgb
    with tifffile.TiffWriter(path) as tif:
        for level in range(levels):
            scale = None if mpp is None else 1e4 / (mpp * 2**level)  # pixels per centimetre
            tif.write(
                image,
                tile=(tile, tile),
                photometric="rgb",
                compression="zlib",
                subfiletype=0 if level == 0 else 1,
                resolution=None if scale is None else (scale, scale),
                resolutionunit="CENTIMETER" if scale is not None else None,
            )
            h, w = image.shape[0] // 2, image.shape[1] // 2
            if min(h, w) < tile:
                break
            image = downscale_local_mean(image[: 2 * h, : 2 * w], (2, 2, 1)).round().astype(np.uint8)
    return path


def write_demo_slide(
    path: str | Path,
    layout: np.ndarray,
    tile_size: int = 64,
    mpp: float | None = KATHER_MICRONS_PER_PIXEL,
    border: int = 1,
    seed: int = 0,
    levels: int = 3,
) -> Path:
    """Paint a slide from demo tiles: ``layout[r, c]`` is the MSI-ness of tile ``(r, c)``, ``border`` tiles of white
    background around.

    Args:
        path: the TIFF file.
        layout: ``(rows, cols)`` MSI-ness in [0, 1] (:func:`demo_slide_layout`); NaN leaves a tile as background.
        tile_size: side of a painted tile in pixels (at level 0).
        mpp: microns per pixel of level 0 (the demo tiles' scale by default); ``None`` states none in the file.
        border: background tiles around the tissue.
        seed: seed of the tiles' random streams.
        levels: pyramid levels.
    """
    rows, cols = layout.shape
    scale = KATHER_MICRONS_PER_PIXEL if mpp is None else mpp
    canvas = np.full(((rows + 2 * border) * tile_size, (cols + 2 * border) * tile_size, 3), 242, np.uint8)
    for r in range(rows):
        for c in range(cols):
            if np.isnan(layout[r, c]):
                continue
            rng = np.random.default_rng([seed, r, c])
            y, x = (r + border) * tile_size, (c + border) * tile_size
            canvas[y : y + tile_size, x : x + tile_size] = render_msi_tile(float(layout[r, c]), rng, tile_size, scale)
    return write_pyramid_tiff(path, canvas, mpp, levels=levels, tile=max(16, min(256, tile_size // 16 * 16)))


def write_demo_slides(folder: str | Path, tile_size: int = 224, rows: int = 6, cols: int = 8) -> Path:
    """A small demo cohort at the demo tiles' scale: ``halves.tif`` and two slides each of mostly MSI-like and mostly
    MSS-like tiles, plus ``labels.csv`` (``slide,label,patient``) for the slide- and patient-level AUCs.

    Returns:
        ``folder``.
    """
    folder = Path(folder)
    lines = ["slide,label,patient", "halves.tif,MSI,PH"]
    write_demo_slide(folder / "halves.tif", demo_slide_layout(rows, cols), tile_size, seed=1000)
    for i, kind in enumerate(["mostly_msi", "mostly_mss"] * 2):
        name = f"{kind}_{i // 2}.tif"
        layout = demo_slide_layout(rows // 2, cols // 2, kind, seed=i)  # type: ignore[arg-type]
        write_demo_slide(folder / name, layout, tile_size, seed=2000 + i)
        lines.append(f"{name},{'MSI' if kind == 'mostly_msi' else 'MSS'},P{i}")
    (folder / "labels.csv").write_text("\n".join(lines) + "\n")
    return folder


if __name__ == "__main__":
    import sys

    print(write_demo_slides(sys.argv[1] if len(sys.argv) > 1 else "demo_slides"))
