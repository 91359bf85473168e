"""The tile pre-flight as training and inference meet it: truncated JPEGs, 16-bit and float tiles, huge images, and
inference on a few tiles of which some are broken."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from monai_kdml.apps.msi.datalists import prepare_msi_datalists, tile_datalist
from monai_kdml.apps.msi.kather import kather_datalist
from monai_kdml.apps.msi.tiles import check_tiles
from monai_kdml.apps.msi.transforms import tile_transforms


def _name(patient: int, tile: int, suffix: str = ".png") -> str:
    return f"blk-{chr(65 + tile) * 12}-TCGA-AA-{patient:04d}-01Z-00-DX1{suffix}"


def _tile(path: Path, seed: int = 0, size: int = 16) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture
def jpeg_root(tmp_path: Path) -> Path:
    """A Kather layout of JPEG tiles: 4 MSI and 4 MSS patients, 8 tiles each (64 tiles)."""
    for cls, first in (("MSIMUT", 1), ("MSS", 11)):
        for patient in range(first, first + 4):
            for t in range(8):
                _tile(tmp_path / "CRC_DX_TRAIN" / cls / _name(patient, t, ".jpg"), seed=patient * 10 + t)
    return tmp_path


def test_default_check_catches_a_truncated_jpeg_before_training(jpeg_root: Path, caplog) -> None:
    cut = jpeg_root / "CRC_DX_TRAIN" / "MSS" / _name(11, 0, ".jpg")
    cut.write_bytes(cut.read_bytes()[:-40])  # the header and most scans intact: PIL's verify() passes it
    with caplog.at_level(logging.WARNING):
        data = prepare_msi_datalists(jpeg_root, jpeg_root / "cache", expected_size=(16, 16))
    assert data.report.corrupt == 1 and data.report.kept == 63 and data.report.decoded == 63
    assert str(cut) not in {item["image"] for item in data.train + data.val}
    assert str(cut) in caplog.text and "truncated" in caplog.text


def test_16_bit_and_float_tiles_are_counted_as_scaled(tmp_path: Path) -> None:
    values = np.linspace(0, 1, 256).reshape(16, 16)
    Image.fromarray(np.rint(values * 65535).astype(np.uint16)).save(tmp_path / "a16.png")
    Image.fromarray(values.astype(np.float32)).save(tmp_path / "f.tif")
    Image.fromarray((values * 4).astype(np.float32)).save(tmp_path / "wide.tif")
    _tile(tmp_path / "rgb.png")
    items = [{"image": str(p)} for p in sorted(tmp_path.iterdir())]
    clean, report = check_tiles(items, expected_size=(16, 16), max_bad_fraction=1.0)
    assert [Path(item["image"]).name for item in clean] == ["a16.png", "f.tif", "rgb.png"]
    assert report.scaled == {"16-bit": 1, "float": 1} and report.unsupported == 1
    assert "scaled from 16-bit:             1" in report.summary()
    assert "wide.tif: float image with values in [0, 4]" in report.unreadable[0]
    for item in clean:  # the loader scales as the check said: a gradient, not all white or all black
        image = np.asarray(tile_transforms(32, labels=False)(dict(item))["image"])
        assert image.min() < 0.1 and image.max() > 0.9


def test_a_tile_over_the_pixel_limit_is_skipped_naming_it(jpeg_root: Path, huge_png: Path) -> None:
    huge = jpeg_root / "CRC_DX_TRAIN" / "MSS" / _name(12, 9)
    shutil.copy(huge_png, huge)
    clean, report = check_tiles(kather_datalist(jpeg_root), expected_size=(16, 16))
    assert report.too_large == 1 and len(clean) == 64
    assert report.examples["too_large"] == [f"{huge}: 196000000 pixels is over max_image_pixels=89478485 (PIL's "
                                           "guard against decompression bombs); pass a larger max_image_pixels if "
                                           "the image is genuine"]  # fmt: skip
    _, raised = check_tiles(
        kather_datalist(jpeg_root), expected_size=(16, 16), max_image_pixels=200_000_000, decode=False
    )
    assert raised.too_large == 0 and raised.kept == 65  # header only: the PNG's CRCs are checked, nothing decoded


def test_inference_predicts_every_readable_tile_and_lists_the_others(tmp_path: Path, caplog) -> None:
    for i in range(5):
        _tile(tmp_path / "slide" / f"tile_{i}.png", seed=i)
    broken = tmp_path / "slide" / "tile_2.png"
    broken.write_bytes(broken.read_bytes()[:100])
    (tmp_path / "slide" / "notes.tif").write_text("not a tile")
    with caplog.at_level(logging.WARNING):
        items = tile_datalist(tmp_path / "slide")  # 2 of 6 unreadable: far over the 5 % training rule
    assert [Path(item["image"]).name for item in items] == ["tile_0.png", "tile_1.png", "tile_3.png", "tile_4.png"]
    assert (
        "2 of 6 tiles" in caplog.text
        and f"{broken}: corrupt" in caplog.text
        and "notes.tif: not an image" in caplog.text
    )
    for path in (tmp_path / "slide").iterdir():
        path.write_bytes(b"junk")
    with pytest.raises(FileNotFoundError, match="none of its 6 images is usable"):
        tile_datalist(tmp_path / "slide")
