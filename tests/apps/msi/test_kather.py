"""Kather MSI/MSS datalists: layouts, patient ids, patient-level split, balancing, pre-flight checks, loading."""

from __future__ import annotations

import logging
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from monai.data import PILReader
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged
from PIL import Image

from monai_kdml.apps.msi.kather import (
    DatasetLayoutError,
    kather_datalist,
    patient_id_from_path,
    sample_weights,
    split_by_patient,
    undersample,
)
from monai_kdml.apps.msi.tiles import TileCheckError, check_tiles
from monai_kdml.data.images import to_rgb

SIZE = 8


def _tile(path: Path, mode: str = "RGB", size: int = SIZE, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, len(mode)), dtype=np.uint8)
    Image.fromarray(pixels.squeeze(-1) if mode == "L" else pixels, mode).save(path)
    return path


def _name(patient: int, tile: int) -> str:
    return f"blk-{chr(65 + tile) * 12}-TCGA-AA-{patient:04d}-01Z-00-DX1.png"


def _split(folder: Path, msi: tuple[int, ...], mss: tuple[int, ...], classes=("MSIMUT", "MSS"), tiles: int = 2) -> None:
    """Class folders under ``folder``: ``tiles`` tiles for each patient number in ``msi`` and ``mss``."""
    for cls, patients in zip(classes, (msi, mss), strict=True):
        for p in patients:
            for t in range(tiles):
                _tile(folder / cls / _name(p, t), seed=p * 10 + t)


@pytest.fixture
def kather_root(tmp_path: Path) -> Path:
    _split(tmp_path / "CRC_DX_TRAIN", msi=(1, 2, 3), mss=(4, 5, 6, 7, 8))
    _split(tmp_path / "CRC_DX_TEST", msi=(11,), mss=(12, 13))
    return tmp_path


def _patients(datalist: list[dict]) -> set[str]:
    return {item["patient"] for item in datalist}


# ------------------------------------------------------------------------------------------------ layouts and ids


def test_patient_id_from_kather_name_and_fallback():
    assert patient_id_from_path("x/MSS/blk-ABCDEFGHIJKL-TCGA-AA-3516-01Z-00-DX1.png") == "TCGA-AA-3516"
    assert patient_id_from_path("blk-abcdefghijkl-tcga-cm-4743-01z-00-dx1.png") == "TCGA-CM-4743"
    assert patient_id_from_path("x/MSS/tile_0042.png") == "tile_0042"


def test_train_test_layout(kather_root: Path):
    train, test = kather_datalist(kather_root, "train"), kather_datalist(kather_root, "test")
    assert len(train) == 16 and len(test) == 6
    assert all(isinstance(item["image"], str) and isinstance(item["label"], int) for item in train)
    assert Counter(item["label"] for item in train) == {1: 6, 0: 10}
    assert _patients(test) == {"TCGA-AA-0011", "TCGA-AA-0012", "TCGA-AA-0013"}
    assert all(("MSIMUT" in item["image"]) == (item["label"] == 1) for item in train + test)
    assert [item["image"] for item in train] == sorted(item["image"] for item in train)


def test_single_folder_root_and_test_split_error(tmp_path: Path):
    _split(tmp_path, msi=(1,), mss=(2,))
    assert len(kather_datalist(tmp_path)) == 4
    with pytest.raises(ValueError, match="split='test'") as err:
        kather_datalist(tmp_path, "test")
    assert str(tmp_path) in str(err.value)


def test_msih_nonmsih_naming(tmp_path: Path):
    _split(tmp_path / "CRC_DX_TRAIN", msi=(1,), mss=(2, 3), classes=("MSIH", "nonMSIH"))
    datalist = kather_datalist(tmp_path)
    assert {item["patient"]: item["label"] for item in datalist} == {
        "TCGA-AA-0001": 1,
        "TCGA-AA-0002": 0,
        "TCGA-AA-0003": 0,
    }


def test_stad_and_cohort_choice(kather_root: Path):
    _split(kather_root / "STAD_TRAIN", msi=(21,), mss=(22,), tiles=1)
    _split(kather_root / "STAD_TEST", msi=(31,), mss=(32,), tiles=1)
    with pytest.raises(ValueError, match="CRC_DX, STAD"):
        kather_datalist(kather_root)
    assert _patients(kather_datalist(kather_root, "test", cohort="STAD")) == {"TCGA-AA-0031", "TCGA-AA-0032"}
    assert len(kather_datalist(kather_root, cohort="crc")) == 16
    with pytest.raises(DatasetLayoutError, match="KR"):
        kather_datalist(kather_root, cohort="KR")


# ------------------------------------------------------------------------------------------------ bad layouts


def test_missing_and_empty_dataset_dir(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="nope"):
        kather_datalist(tmp_path / "nope")
    (tmp_path / ".DS_Store").write_text("")
    with pytest.raises(DatasetLayoutError, match="is empty"):
        kather_datalist(tmp_path)
    (tmp_path / "notes").mkdir()
    with pytest.raises(DatasetLayoutError, match="no <COHORT>_TRAIN folder"):
        kather_datalist(tmp_path)


def test_dataset_dir_is_a_file_or_has_two_msi_folders(tmp_path: Path):
    with pytest.raises(NotADirectoryError, match="not a folder"):
        kather_datalist(_tile(tmp_path / "tile.png"))
    _split(tmp_path / "CRC_DX_TRAIN", msi=(1,), mss=(2,))
    _tile(tmp_path / "CRC_DX_TRAIN" / "MSIH" / _name(3, 0))
    with pytest.raises(ValueError, match="several MSI class folders \\(MSIH, MSIMUT\\)"):
        kather_datalist(tmp_path)


def test_missing_or_empty_class_folder(tmp_path: Path):
    _tile(tmp_path / "CRC_DX_TRAIN" / "MSIMUT" / _name(1, 0))
    with pytest.raises(DatasetLayoutError, match="missing the MSS class folder") as err:
        kather_datalist(tmp_path)
    assert str(tmp_path / "CRC_DX_TRAIN") in str(err.value)
    (tmp_path / "CRC_DX_TRAIN" / "MSS").mkdir()
    (tmp_path / "CRC_DX_TRAIN" / "MSS" / "readme.txt").write_text("x")
    with pytest.raises(DatasetLayoutError, match="MSS holds no image tiles"):
        kather_datalist(tmp_path)


def test_non_image_and_hidden_files_skipped_with_one_warning(kather_root: Path, caplog):
    (kather_root / "CRC_DX_TRAIN" / "MSS" / "notes.txt").write_text("x")
    (kather_root / "CRC_DX_TRAIN" / "MSIMUT" / ".DS_Store").write_bytes(b"\0")
    with caplog.at_level(logging.WARNING, logger="monai_kdml.apps.msi.kather"):
        datalist = kather_datalist(kather_root)
    assert len(datalist) == 16
    skipped = [r for r in caplog.records if "non-image or hidden" in r.getMessage()]
    assert len(skipped) == 1 and "skipped 2" in skipped[0].getMessage()


def test_patient_id_fallback_warns_once_with_count(tmp_path: Path, caplog):
    _split(tmp_path, msi=(1,), mss=(2,))
    for i in range(3):
        _tile(tmp_path / "MSS" / f"tile_{i}.png")
    with caplog.at_level(logging.WARNING, logger="monai_kdml.apps.msi.kather"):
        datalist = kather_datalist(tmp_path)
    fallback = [r for r in caplog.records if "no TCGA patient id" in r.getMessage()]
    assert len(fallback) == 1 and "3 of 7 tiles have no TCGA patient id" in fallback[0].getMessage()
    assert {"tile_0", "tile_1", "tile_2"} <= _patients(datalist)


# ------------------------------------------------------------------------------------------------ split, balancing


def _synthetic_datalist(n_msi: int, n_mss: int, tiles: int = 3) -> list[dict]:
    return [
        {"image": f"p{p}_{t}.png", "label": int(p < n_msi), "patient": f"P{p:03d}"}
        for p in range(n_msi + n_mss)
        for t in range(tiles)
    ]


def test_split_by_patient_is_disjoint_stratified_and_seeded():
    datalist = _synthetic_datalist(n_msi=6, n_mss=14)
    train, val = split_by_patient(datalist, val_fraction=0.25, seed=3)
    assert not _patients(train) & _patients(val)
    assert len(train) + len(val) == len(datalist)
    val_patients = Counter(item["label"] for item in val if item["image"].endswith("_0.png"))
    assert val_patients == {1: round(0.25 * 6), 0: round(0.25 * 14)}
    shuffled = random.Random(0).sample(datalist, len(datalist))
    assert _patients(split_by_patient(shuffled, 0.25, seed=3)[1]) == _patients(val)
    others = {frozenset(_patients(split_by_patient(datalist, 0.25, seed=s)[1])) for s in range(5)}
    assert len(others) > 1


def test_split_by_patient_keeps_both_classes_when_possible():
    train, val = split_by_patient(_synthetic_datalist(n_msi=2, n_mss=9), val_fraction=0.1, seed=0)
    assert {item["label"] for item in val} == {0, 1}
    assert {item["label"] for item in train} == {0, 1}


def test_split_by_patient_bad_fraction_and_mixed_patients(caplog):
    with pytest.raises(ValueError, match="val_fraction"):
        split_by_patient(_synthetic_datalist(2, 2), val_fraction=1.0)
    mixed = [*_synthetic_datalist(3, 3), {"image": "x.png", "label": 0, "patient": "P000"}]  # P000: 3 MSI + 1 MSS
    with caplog.at_level(logging.WARNING, logger="monai_kdml.apps.msi.kather"):
        train, val = split_by_patient(mixed, val_fraction=0.34, seed=0)
    assert any("1 patients have tiles in both classes" in r.getMessage() for r in caplog.records)
    assert not _patients(train) & _patients(val)
    assert Counter(item["label"] for item in val if item["image"].endswith("_0.png")) == {0: 1, 1: 1}


def test_undersample_balances_deterministically():
    datalist = _synthetic_datalist(n_msi=2, n_mss=5)
    kept = undersample(datalist, seed=1)
    assert Counter(item["label"] for item in kept) == {0: 6, 1: 6}
    assert kept == undersample(datalist, seed=1)
    assert all(item in datalist for item in kept)
    assert [item for item in kept if item["label"] == 1] == [item for item in datalist if item["label"] == 1]


def test_sample_weights_follow_formula():
    datalist = _synthetic_datalist(n_msi=1, n_mss=3, tiles=1)  # 1 MSI, 3 MSS
    weights = sample_weights(datalist)
    assert weights == pytest.approx([4 / (2 * 1), 4 / (2 * 3), 4 / (2 * 3), 4 / (2 * 3)])
    assert sum(w for w, item in zip(weights, datalist, strict=True) if item["label"] == 1) == pytest.approx(2.0)


# ------------------------------------------------------------------------------------------------ pre-flight checks


def _damage(root: Path) -> dict[str, Path]:
    """Every kind of bad tile in the MSS folder of ``root/CRC_DX_TRAIN``; returns them by kind."""
    folder = root / "CRC_DX_TRAIN" / "MSS"
    corrupt = _tile(folder / _name(40, 0), size=32)
    data = bytearray(corrupt.read_bytes())
    data[data.index(b"IDAT") + 8] ^= 0xFF
    corrupt.write_bytes(bytes(data))
    truncated = _tile(folder / _name(41, 0), size=32)
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    text = folder / _name(42, 0)
    text.write_text("not a png")
    return {
        "corrupt": corrupt,
        "truncated": truncated,
        "text": text,
        "gray": _tile(folder / _name(43, 0), "L"),
        "rgba": _tile(folder / _name(44, 0), "RGBA"),
        "small": _tile(folder / _name(45, 0), size=SIZE // 2),
    }


@pytest.mark.parametrize("decode", [False, True])
def test_check_tiles_skips_bad_files_and_counts_fixable_ones(kather_root: Path, decode: bool, caplog):
    bad = _damage(kather_root)
    datalist = kather_datalist(kather_root)
    with caplog.at_level(logging.WARNING, logger="monai_kdml.apps.msi.kather"):
        clean, report = check_tiles(datalist, expected_size=(SIZE, SIZE), decode=decode, max_bad_fraction=0.5)
    kept = {item["image"] for item in clean}
    assert not {str(bad[k]) for k in ("corrupt", "truncated", "text")} & kept
    assert {str(bad[k]) for k in ("gray", "rgba", "small")} <= kept
    assert (report.total, report.kept, report.corrupt, report.not_image) == (22, 19, 2, 1)
    assert (report.converted, report.resized) == (2, 1)
    assert report.modes == {"L": 1, "RGBA": 1} and report.sizes == {f"{SIZE // 2}x{SIZE // 2}": 1}
    assert any(str(bad["truncated"]) in line for line in report.examples["corrupt"])
    assert sum("Tile check" in r.getMessage() for r in caplog.records) == 1


def test_check_tiles_raises_when_too_many_or_a_whole_class_are_bad(kather_root: Path):
    _damage(kather_root)
    datalist = kather_datalist(kather_root)
    with pytest.raises(TileCheckError, match="max_bad_fraction"):
        check_tiles(datalist, expected_size=(SIZE, SIZE), max_bad_fraction=0.1)
    for path in (kather_root / "CRC_DX_TRAIN" / "MSIMUT").iterdir():
        path.write_bytes(b"garbage")
    with pytest.raises(TileCheckError, match="every tile of class \\['MSI'\\]"):
        check_tiles(datalist, expected_size=(SIZE, SIZE), max_bad_fraction=1.0)


# ------------------------------------------------------------------------------------------------ loading


def _loader() -> Compose:
    return Compose(
        [LoadImaged(keys="image", reader=PILReader(converter=to_rgb), image_only=True), EnsureChannelFirstd("image")]
    )


def test_loader_gives_three_channels_for_rgb_gray_and_rgba(tmp_path: Path):
    loader = _loader()
    for mode in ("RGB", "L", "RGBA"):
        image = loader({"image": str(_tile(tmp_path / f"{mode}.png", mode, size=12))})["image"]
        assert tuple(image.shape) == (3, 12, 12), mode
    gray = loader({"image": str(tmp_path / "L.png")})["image"]
    assert np.allclose(gray[0], gray[1]) and np.allclose(gray[1], gray[2])


def test_real_tiles_list_check_and_load(real_tiles: Path):
    datalist = kather_datalist(real_tiles)
    counts = Counter(item["label"] for item in datalist)
    assert counts[1] > 0 and counts[0] > 0
    assert all(item["patient"].startswith("TCGA-") for item in datalist)
    clean, report = check_tiles(datalist, decode=True)
    assert report.kept == len(datalist) and report.resized == 0
    train, val = split_by_patient(clean, 0.25, seed=0)
    assert not _patients(train) & _patients(val)
    loader = _loader()
    for item in (clean[0], clean[-1]):
        image = loader(dict(item))["image"]
        assert tuple(image.shape) == (3, 224, 224) and float(image.max()) <= 255.0
