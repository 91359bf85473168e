"""Compare synthetic MSI demo tiles with real H&E tiles: colour, stain and nucleus statistics, side by side.

Usage (from the repository root)::

    python benchmarks/compare_demo_he.py [--real ../shared/data/he-tiles-real] [--num-demo 72] [--seed 0]

Prints one Markdown table. Nuclei are counted the same way in every column: ``skimage.color.rgb2hed``, the
hematoxylin channel smoothed (sigma 1 px) and thresholded at the Otsu threshold of the *real* tiles, an opening
with a radius-1 disk, objects under 10 px dropped, then ``regionprops``. The real tiles are ~0.5 um/px (estimated
from lymphocyte size), so the demo is rendered at that scale too, next to the Kather scale it uses by default.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image
from skimage.color import rgb2hed
from skimage.filters import gaussian, threshold_otsu
from skimage.measure import label, regionprops
from skimage.morphology import disk, opening, remove_small_objects

from monai_kdml.apps.msi.demo import KATHER_MICRONS_PER_PIXEL, render_msi_tile

__all__ = ["main", "tile_stats"]

REAL_DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "data" / "he-tiles-real"
REAL_MICRONS_PER_PIXEL = 0.5  # estimate: lymphocytes (~7 um) are ~14 px across in these tiles


def _smoothed_h(rgb: np.ndarray) -> np.ndarray:
    return gaussian(rgb2hed(rgb)[..., 0], sigma=1.0)


def tile_stats(tiles: list[np.ndarray], threshold: float, microns_per_pixel: float) -> dict[str, str]:
    """Colour, stain and nucleus statistics of a set of ``(H, W, 3)`` uint8 tiles, formatted for the table."""
    pixels = np.concatenate([t.reshape(-1, 3) for t in tiles]).astype(np.float64)
    hed = np.concatenate([rgb2hed(t).reshape(-1, 3) for t in tiles])
    counts, diameters, fractions = [], [], []
    for tile in tiles:
        mask = remove_small_objects(opening(_smoothed_h(tile) > threshold, disk(1)), max_size=9)
        regions = regionprops(label(mask))
        counts.append(len(regions))
        diameters += [r.equivalent_diameter_area for r in regions]
        fractions.append(mask.mean())
    area_mm2 = tiles[0].shape[0] * tiles[0].shape[1] * (microns_per_pixel * 1e-3) ** 2
    median_d = float(np.median(diameters)) if diameters else float("nan")
    mean, std = pixels.mean(0), pixels.std(0)
    return {
        "RGB mean (R, G, B)": ", ".join(f"{v:.0f}" for v in mean),
        "RGB std (R, G, B)": ", ".join(f"{v:.0f}" for v in std),
        "hematoxylin mean / std (rgb2hed)": f"{hed[:, 0].mean():.3f} / {hed[:, 0].std():.3f}",
        "eosin mean / std (rgb2hed)": f"{hed[:, 1].mean():.3f} / {hed[:, 1].std():.3f}",
        "H-positive area fraction": f"{np.mean(fractions):.2f}",
        "nuclei per tile (mean)": f"{np.mean(counts):.0f}",
        "nuclei per 10k px^2": f"{np.mean(counts) / (tiles[0].size / 3 / 1e4):.1f}",
        "nuclei per 0.01 mm^2": f"{np.mean(counts) / area_mm2 * 0.01:.0f}",
        "nucleus diameter, median px (um)": f"{median_d:.1f} ({median_d * microns_per_pixel:.1f})",
    }


def _demo_tiles(num: int, seed: int, microns_per_pixel: float) -> tuple[list[np.ndarray], float]:
    """``num`` demo tiles with MSI-ness spread over [0, 1] and patient-like stain jitter; seconds per tile."""
    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    tiles = [
        render_msi_tile(m, np.random.default_rng([seed, i]), 224, microns_per_pixel, tuple(rng.uniform(0.85, 1.15, 2)))
        for i, m in enumerate(rng.uniform(0, 1, num))
    ]
    return tiles, (time.perf_counter() - start) / num


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real", type=Path, default=REAL_DEFAULT, help="folder of real tiles (searched recursively)")
    parser.add_argument("--num-demo", type=int, default=72, help="demo tiles per column")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    paths = sorted(args.real.rglob("*.png")) if args.real.is_dir() else []
    if not paths:
        print(f"SKIPPED: no real H&E tiles at {args.real} (see ../shared/data/he-tiles-real/README.md).")
        return 0
    real = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    threshold = float(threshold_otsu(np.concatenate([_smoothed_h(t).ravel() for t in real])))
    columns = {f"real ({len(real)} tiles, ~{REAL_MICRONS_PER_PIXEL} um/px)": tile_stats(real, threshold, 0.5)}
    for mpp in (REAL_MICRONS_PER_PIXEL, KATHER_MICRONS_PER_PIXEL):
        tiles, seconds = _demo_tiles(args.num_demo, args.seed, mpp)
        columns[f"demo @ {mpp:.2f} um/px ({seconds * 1e3:.0f} ms/tile)"] = tile_stats(tiles, threshold, mpp)
    print(f"Nucleus threshold (Otsu of the real tiles' smoothed hematoxylin): {threshold:.4f}\n")
    print("| statistic | " + " | ".join(columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for key in next(iter(columns.values())):
        print(f"| {key} | " + " | ".join(col[key] for col in columns.values()) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
