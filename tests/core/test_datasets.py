"""Where decoded data live between epochs: the cache holds uint8 images, in memory or on disk."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from monai.data import CacheDataset, Dataset, PersistentDataset
from PIL import Image

import monai_kdml.data.datasets as datasets
from monai_kdml.apps.msi import tile_transforms
from monai_kdml.data import GIB, cached_dataset, choose_cache


@pytest.fixture
def tiles(tmp_path: Path) -> list[dict]:
    rng = np.random.default_rng(0)
    items = []
    for i in range(4):
        path = tmp_path / f"tile_{i}.png"
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(path)
        items.append({"image": str(path), "label": i % 2, "patient": f"P{i}"})
    return items


@pytest.mark.parametrize("train", [False, True])
def test_memory_cache_keeps_uint8_tiles_and_serves_unit_floats(tiles, train: bool) -> None:
    dataset = cached_dataset(tiles, tile_transforms(32, train=train), cache="memory")
    assert isinstance(dataset, CacheDataset)
    assert dataset._cache[0]["image"].dtype == torch.uint8  # a quarter of float32, also without random transforms
    item = dataset[0]
    assert item["image"].dtype == torch.float32 and item["image"].shape == (3, 32, 32)
    if not train:  # the intensity augmentation may step a little outside [0, 1]
        assert float(item["image"].min()) >= 0.0 and float(item["image"].max()) <= 1.0
        with Image.open(tiles[0]["image"]) as img:  # the tile, area-resized, not scrambled (MONAI's order: W, H)
            raw = torch.as_tensor(np.asarray(img), dtype=torch.float32).permute(2, 1, 0)
        expected = torch.nn.functional.interpolate(raw[None], size=(32, 32), mode="area")[0].round()
        assert float((item["image"] * 255 - expected).abs().max()) <= 1.0


def test_disk_cache_writes_files_and_reads_them_back(tiles, tmp_path: Path) -> None:
    transform = tile_transforms(32)
    dataset = cached_dataset(tiles, transform, cache="disk", cache_dir=tmp_path / "cache")
    assert isinstance(dataset, PersistentDataset)
    first = dataset[0]["image"]
    assert len(list((tmp_path / "cache" / "persistent").rglob("*.pt"))) == 1
    assert torch.equal(dataset[0]["image"], first)
    assert torch.equal(cached_dataset(tiles, transform, cache="none")[0]["image"], first)
    assert type(cached_dataset(tiles, transform, cache="none")) is Dataset


def test_auto_picks_disk_when_the_cache_would_crowd_memory(monkeypatch) -> None:
    monkeypatch.setattr(datasets, "available_memory", lambda device="cpu": 8 * GIB)
    assert choose_cache("auto", 93_000, (3, 224, 224)) == "disk"  # Kather's 93k tiles: 14 GiB as uint8
    assert choose_cache("auto", 1_000, (3, 224, 224)) == "memory"
    with pytest.raises(ValueError, match="memory"):
        choose_cache("ram", 1, (3, 8, 8))
