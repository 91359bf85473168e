"""Synthetic MSI demo tiles: determinism, Kather layout and naming, H&E look, idempotent cached generation."""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage.color import rgb2hed

from monai_kdml.apps.msi import demo as msi_demo
from monai_kdml.apps.msi.demo import GENERATOR_VERSION, ensure_msi_demo, make_msi_demo, render_msi_tile
from monai_kdml.apps.msi.kather import kather_datalist
from monai_kdml.apps.msi.tiles import check_tiles

TINY = {"num_patients": 4, "tiles_per_patient": 2, "tile_size": 32, "test_fraction": 0.5}
NAME = re.compile(r"^blk-[A-Z]{12}-TCGA-ZZ-\d{4}-01Z-00-DX1\.png$")


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.png"))}


def test_same_seed_gives_identical_bytes_other_seed_differs(tmp_path: Path):
    first = _files(make_msi_demo(tmp_path / "a", seed=7, **TINY))
    assert first == _files(make_msi_demo(tmp_path / "b", seed=7, **TINY))
    other = _files(make_msi_demo(tmp_path / "c", seed=8, **TINY))
    assert set(first.values()).isdisjoint(other.values())


def test_kather_layout_naming_and_patient_splits(tmp_path: Path):
    root = make_msi_demo(tmp_path, num_patients=8, tiles_per_patient=3, tile_size=32, test_fraction=0.25)
    paths = sorted(root.rglob("*.png"))
    assert len(paths) == 8 * 3 and all(NAME.match(p.name) for p in paths)
    assert {p.parent.relative_to(root).as_posix() for p in paths} == {
        f"CRC_DX_{s}/{c}" for s in ("TRAIN", "TEST") for c in ("MSIMUT", "MSS")
    }
    where: dict[str, set[str]] = defaultdict(set)
    for p in paths:
        where[re.search(r"TCGA-ZZ-\d{4}", p.name).group(0)].add(p.parent.relative_to(root).as_posix())
    assert len(where) == 8 and all(len(folders) == 1 for folders in where.values())
    train, test = kather_datalist(root, "train"), kather_datalist(root, "test")
    assert len(train) + len(test) == 24 and {d["label"] for d in test} == {0, 1}
    _, report = check_tiles(train + test, expected_size=(32, 32), decode=True)
    assert report.kept == 24 and report.converted == report.resized == 0
    assert Image.open(paths[0]).size == (32, 32) and Image.open(paths[0]).mode == "RGB"


def test_refuses_to_mix_into_an_existing_set(tmp_path: Path):
    make_msi_demo(tmp_path, **TINY)
    with pytest.raises(FileExistsError, match="CRC_DX_TRAIN"):
        make_msi_demo(tmp_path, **TINY)


@pytest.mark.parametrize(("key", "value"), [("num_patients", 3), ("test_fraction", 1.0), ("tile_size", 8)])
def test_invalid_parameters_name_the_argument(tmp_path: Path, key: str, value: float):
    with pytest.raises(ValueError, match=key):
        make_msi_demo(tmp_path, **{**TINY, key: value})


def test_tiles_look_like_he_and_carry_the_class_signal():
    def tiles(m: float) -> np.ndarray:
        return np.stack([render_msi_tile(m, np.random.default_rng([i, int(m * 10)]), 96) for i in range(6)])

    mss, msi = tiles(0.1), tiles(0.9)
    for rgb in (mss, msi):
        mean = rgb.reshape(-1, 3).mean(0)
        assert mean[1] < mean[0] and mean[1] < mean[2]  # pink-purple: green absorbed by both stains
        assert 40 < rgb.std() < 90  # nuclei, stroma and white patches, not a flat colour
    hematoxylin = [rgb2hed(rgb).reshape(-1, 3)[:, 0] for rgb in (mss, msi)]
    dark = [float((h > 0.1).mean()) for h in hematoxylin]
    assert dark[1] > 1.2 * dark[0]  # denser small dark nuclei (lymphocytes) and solid sheets with MSI


def test_ensure_is_idempotent_and_warns(tmp_path: Path, monkeypatch, caplog):
    with caplog.at_level(logging.WARNING, logger="monai_kdml.apps.msi.demo"):
        root = ensure_msi_demo(tmp_path, **TINY)
    assert root == tmp_path / "msi_demo"
    marker = json.loads((root / msi_demo.MARKER).read_text())
    assert marker["version"] == GENERATOR_VERSION and marker["params"]["num_patients"] == 4
    before = _files(root)
    monkeypatch.setattr(msi_demo, "make_msi_demo", lambda *a, **k: pytest.fail("regenerated a valid set"))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="monai_kdml.apps.msi.demo"):
        assert ensure_msi_demo(tmp_path, **TINY) == root
    assert _files(root) == before
    assert any("SYNTHETIC DEMO DATA" in r.getMessage() and str(root) in r.getMessage() for r in caplog.records)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["msi_demo"]


def test_ensure_regenerates_on_other_parameters_or_missing_tiles(tmp_path: Path):
    root = ensure_msi_demo(tmp_path, **TINY)
    ensure_msi_demo(tmp_path, **{**TINY, "tiles_per_patient": 3})
    assert len(list(root.rglob("*.png"))) == 12
    assert json.loads((root / msi_demo.MARKER).read_text())["params"]["tiles_per_patient"] == 3
    next(root.rglob("*.png")).unlink()
    ensure_msi_demo(tmp_path, **{**TINY, "tiles_per_patient": 3})
    assert len(list(root.rglob("*.png"))) == 12
    assert sorted(p.name for p in tmp_path.iterdir()) == ["msi_demo"]


def test_interrupted_generation_leaves_nothing_that_looks_complete(tmp_path: Path, monkeypatch):
    real_render = msi_demo.render_msi_tile
    calls = []

    def crash_after_three(*args, **kwargs):
        calls.append(1)
        if len(calls) > 3:
            raise KeyboardInterrupt
        return real_render(*args, **kwargs)

    monkeypatch.setattr(msi_demo, "render_msi_tile", crash_after_three)
    with pytest.raises(KeyboardInterrupt):
        ensure_msi_demo(tmp_path, **TINY)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(msi_demo, "render_msi_tile", real_render)
    root = ensure_msi_demo(tmp_path, **TINY)
    assert len(list(root.rglob("*.png"))) == 8


def test_stale_temp_folder_of_a_dead_process_is_removed(tmp_path: Path):
    stale = tmp_path / ".msi_demo.tmp-999999999-abc"
    (stale / "CRC_DX_TRAIN").mkdir(parents=True)
    ensure_msi_demo(tmp_path, **TINY)
    assert not stale.exists()


@pytest.mark.parametrize("function", [make_msi_demo, ensure_msi_demo])
def test_generator_defaults_are_those_of_the_config(function):
    # the parameters are spelt out for readable signatures; their defaults must stay MSIDemoConfig's
    parameters = inspect.signature(function).parameters
    fields = {f.name: f.default for f in dataclasses.fields(msi_demo.MSIDemoConfig)}
    assert {name: parameters[name].default for name in fields} == fields
