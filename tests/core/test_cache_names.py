"""Disk cache folders are named from what they hold, not from memory addresses (issue 15 case 14): a resume, in a
new process, finds the folder its first run filled."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BUILD = """
import sys
from monai_kdml.apps.msi import tile_transforms
from monai_kdml.data import cached_dataset
tiles = [{"image": sys.argv[1], "label": 0}]
print(cached_dataset(tiles, tile_transforms(int(sys.argv[3])), cache="disk", cache_dir=sys.argv[2]).cache_dir)
"""


def cache_folder(tile: Path, cache_dir: Path, image_size: int) -> str:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    args = [sys.executable, "-c", BUILD, str(tile), str(cache_dir), str(image_size)]
    out = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300, check=True)
    return out.stdout.strip().splitlines()[-1]


def test_a_new_process_finds_the_same_cache_folder(tmp_path: Path) -> None:
    from PIL import Image

    tile = tmp_path / "TCGA-AA-0001_tile.png"
    Image.new("RGB", (40, 40), (200, 100, 50)).save(tile)
    first, again = cache_folder(tile, tmp_path / "c", 32), cache_folder(tile, tmp_path / "c", 32)
    assert first == again and "0x" not in first
    assert cache_folder(tile, tmp_path / "c", 64) != first  # another image size: another folder
