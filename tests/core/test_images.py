"""The one RGB converter and loader: 16-bit and float images scaled, not clipped; the pixel limit; errors name files."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from monai.data import DataLoader, Dataset, PILReader
from monai.transforms import LoadImaged
from PIL import Image, ImageOps

from monai_kdml.apps.msi.tiles import check_tiles
from monai_kdml.apps.msi.transforms import tile_transforms
from monai_kdml.data.images import ImageFileError, inspect_image, to_rgb
from monai_kdml.data.loading import LoadRGBImaged

GRADIENT = np.arange(256 * 4, dtype=np.float64).reshape(16, 64) / (256 * 4 - 1)  # 0 .. 1 over 1024 pixels


def _load_as_the_bundles_json_does(path: Path) -> np.ndarray:
    return np.asarray(
        LoadImaged("image", reader=PILReader(converter=to_rgb), image_only=True)({"image": str(path)})["image"]
    )


def _bundle_loader(path: Path) -> np.ndarray:
    """The bundles' loading step as their JSON writes it; ``(H, W)`` of the first channel."""
    image = _load_as_the_bundles_json_does(path)
    assert image.shape[-1] == 3
    return image[..., 0].T


def test_16_bit_png_and_unit_float_tiff_are_scaled_not_clipped(tmp_path: Path) -> None:
    sixteen = np.rint(GRADIENT * 65535).astype(np.uint16)
    Image.fromarray(sixteen).save(tmp_path / "g16.png")
    Image.fromarray(GRADIENT.astype(np.float32)).save(tmp_path / "f.tif")
    assert np.array_equal(_bundle_loader(tmp_path / "g16.png"), np.floor((sixteen + 128.0) / 257))  # not all 255
    assert np.array_equal(_bundle_loader(tmp_path / "f.tif"), np.rint(GRADIENT.astype(np.float32) * 255.0))
    for name in ("g16.png", "f.tif"):
        loaded = np.asarray(LoadRGBImaged("image")({"image": str(tmp_path / name)})["image"])
        assert loaded.min() == 0 and loaded.max() == 255 and np.unique(loaded).size > 200


def test_values_outside_the_rules_are_refused_naming_the_file(tmp_path: Path) -> None:
    Image.fromarray((GRADIENT * 300).astype(np.float32)).save(tmp_path / "wide.tif")
    Image.fromarray(np.full((4, 4), np.nan, np.float32)).save(tmp_path / "nan.tif")
    Image.fromarray(np.full((4, 4), 70000, np.int32)).save(tmp_path / "int32.tif")
    for name, words in (("wide.tif", "outside|only \\[0, 1\\]"), ("nan.tif", "NaN"), ("int32.tif", "0..65535")):
        path = tmp_path / name
        for check in (inspect_image, lambda p: LoadRGBImaged("image")({"image": str(p)})):
            with pytest.raises(ImageFileError, match=words) as err:
                check(path)
            assert err.value.kind == "unsupported" and str(err.value).startswith(f"{path}: ")
    # why the bundles need LoadRGBImaged: when a reader's converter refuses a file, MONAI's LoadImaged falls back to
    # its default readers and returns the raw one-channel floats
    assert float(_load_as_the_bundles_json_does(tmp_path / "wide.tif").max()) == pytest.approx(300, rel=1e-3)


def test_pixel_limit_refuses_a_huge_png_naming_it_and_can_be_raised(huge_png: Path, tmp_path: Path) -> None:
    with pytest.raises(ImageFileError, match="196000000 pixels is over max_image_pixels=89478485") as err:
        inspect_image(huge_png)
    assert err.value.kind == "too_large" and err.value.path == str(huge_png)
    assert inspect_image(huge_png, decode=False, max_image_pixels=200_000_000).width == 14000  # header only
    Image.new("RGB", (30, 20)).save(tmp_path / "small.png")
    with pytest.raises(ImageFileError, match="600 pixels is over max_image_pixels=599"):
        inspect_image(tmp_path / "small.png", max_image_pixels=599)
    with pytest.raises(ImageFileError, match="over max_image_pixels=599"):
        LoadRGBImaged("image", max_image_pixels=599)({"image": str(tmp_path / "small.png")})
    assert LoadRGBImaged("image", max_image_pixels=600)({"image": str(tmp_path / "small.png")})["image"].shape == (
        30,
        20,
        3,
    )


def test_loader_names_the_file_for_every_failure(tmp_path: Path, huge_png: Path, hidden_damage_png: Path) -> None:
    Image.new("RGB", (64, 64), (9, 90, 200)).save(tmp_path / "ok.jpg")
    data = (tmp_path / "ok.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.png").write_text("not an image")
    cases = {
        tmp_path / "missing.png": "missing",
        tmp_path / "text.png": "not_image",
        tmp_path / "cut.jpg": "corrupt",
        hidden_damage_png: "corrupt",
        huge_png: "too_large",
    }
    load = LoadRGBImaged("image")
    for path, kind in cases.items():
        with pytest.raises(ImageFileError) as err:
            load({"image": str(path)})
        assert (err.value.kind, err.value.path) == (kind, str(path)) and str(err.value).startswith(f"{path}: ")
    assert pickle.loads(pickle.dumps(err.value)).kind == "too_large"  # crosses process boundaries intact


def test_a_tile_failing_in_a_loader_worker_ends_with_an_error_naming_it(hidden_damage_png: Path) -> None:
    _, report = check_tiles([{"image": str(hidden_damage_png)}], expected_size=None)
    assert report.kept == 1  # the default pre-flight (PNG checksums) passes it: only decoding fails
    dataset = Dataset([{"image": str(hidden_damage_png)}], tile_transforms(32, labels=False))
    with pytest.raises(RuntimeError) as in_process:
        dataset[0]
    causes, err = [], in_process.value
    while err is not None:
        causes.append(err)
        err = err.__cause__
    assert isinstance(causes[-1], ImageFileError) and causes[-1].path == str(hidden_damage_png)
    assert f"failed: {hidden_damage_png}: corrupt or truncated" in str(in_process.value)
    with pytest.raises(RuntimeError, match=f"ImageFileError: {hidden_damage_png}: corrupt or truncated") as worker:
        next(iter(DataLoader(dataset, batch_size=1, num_workers=1)))
    lines = str(worker.value).splitlines()
    assert f"failed: {hidden_damage_png}: corrupt or truncated" in lines[-1]  # the last line names the file
    assert len(lines) < 60  # one short chain, no reader-by-reader tracebacks


# --------------------------------------------------------------- EXIF orientation (issue 15, case 13)


def _exif_rotated(path: Path, orientation: int = 6) -> np.ndarray:
    """A 20 x 40 (h x w) frame stored unrotated with an EXIF tag; returns the pixels a viewer shows."""
    stored = np.zeros((20, 40, 3), dtype=np.uint8)
    stored[:5, :10] = 255  # a white corner, so a rotation shows
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(stored).save(path, exif=exif)  # PNG: lossless, so the comparison is exact
    with Image.open(path) as img:
        return np.asarray(ImageOps.exif_transpose(img))


def test_frames_with_an_exif_orientation_are_loaded_as_displayed(tmp_path: Path) -> None:
    displayed = _exif_rotated(tmp_path / "frame.png")
    assert displayed.shape == (40, 20, 3)
    loaded = LoadRGBImaged("image")({"image": str(tmp_path / "frame.png")})["image"]  # MONAI's (W, H, C)
    np.testing.assert_array_equal(np.asarray(loaded).transpose(1, 0, 2), displayed)
    info = inspect_image(tmp_path / "frame.png")
    assert (info.width, info.height, info.orientation) == (20, 40, 6)


def test_the_tile_check_counts_and_names_exif_oriented_tiles(tmp_path: Path) -> None:
    _exif_rotated(tmp_path / "tile.png")
    _, report = check_tiles([{"image": str(tmp_path / "tile.png")}], expected_size=(40, 20))
    assert report.oriented == 1 and report.resized == 0  # the displayed size is 40 x 20 (h x w)
    assert "turned by their EXIF tag:       1" in report.summary()
