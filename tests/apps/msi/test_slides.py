"""Whole-slide reading, tissue masking, tiling and the slide outputs: on the shared real Aperio slide and on
generated pyramidal TIFF slides with a known layout (tiny sizes)."""

from __future__ import annotations

import csv
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("openslide", reason="the wsi extra (pip install 'monai-kdml[wsi]') is not installed")
pytest.importorskip("tifffile", reason="the wsi extra (pip install 'monai-kdml[wsi]') is not installed")

from monai.data import WSIReader

from monai_kdml.apps.msi import tile_classes, training_tile_mpp
from monai_kdml.apps.msi.demo_render import KATHER_MICRONS_PER_PIXEL
from monai_kdml.apps.msi.slide_demo import demo_slide_layout, write_demo_slide, write_pyramid_tiff
from monai_kdml.apps.msi.slide_inference import SlideInference
from monai_kdml.apps.msi.slide_report import slide_score
from monai_kdml.apps.msi.slide_tiles import record_tile_mpp
from monai_kdml.apps.msi.slides import SlideError, SlideSource, list_slides, plan_slide, tissue_mask
from monai_kdml.networks import StudentEnsemble, build_network

MPP = 2 * KATHER_MICRONS_PER_PIXEL  # generated slides: level 0 at 2.29 um/px, 64 px tiles


@pytest.fixture(scope="module")
def aperio(shared_data: Path) -> Path:
    path = shared_data / "wsi" / "cmu-1-small-region.svs"
    if not path.is_file():
        pytest.skip(f"the shared Aperio slide is not at {path}")
    return path


@pytest.fixture(scope="module")
def halves(module_tmp: Callable[[str], Path]) -> Path:
    return write_demo_slide(module_tmp("wsi") / "halves.tif", demo_slide_layout(3, 4), 64, MPP, seed=3)


def _ensemble() -> StudentEnsemble:
    torch.manual_seed(0)
    return StudentEnsemble([build_network("resnet10_slim") for _ in range(2)]).eval()


@pytest.mark.parametrize("backend", ["openslide", "tifffile"])
def test_generated_slide_grid_mask_and_level(halves: Path, backend: str) -> None:
    plan = plan_slide(WSIReader(backend=backend), SlideSource(halves), image_size=32, tile_mpp=2 * MPP)
    assert plan.mpp == pytest.approx(MPP, rel=1e-6)  # read from the TIFF's resolution tags
    assert plan.grid == (5, 6)  # 3 x 4 tissue tiles and a border of one background tile
    assert sorted((t["row"], t["col"]) for t in plan.tiles) == [(r, c) for r in range(1, 4) for c in range(1, 5)]
    assert plan.skipped == 30 - 12
    assert plan.level == 1 and plan.read_size == 32  # the level at exactly 2x: 32 px read, no resize needed
    finer = plan_slide(WSIReader(backend=backend), SlideSource(halves), image_size=32, tile_mpp=1.5 * MPP)
    assert finer.level == 0 and finer.read_size == 48  # nearest level below 1.5x is level 0: read 48 px, resize


def test_aperio_slide_mask_tiles_and_stated_mpp(aperio: Path) -> None:
    plan = plan_slide(WSIReader(backend="openslide"), SlideSource(aperio), image_size=64, tile_mpp=1.0)
    assert plan.mpp == pytest.approx(0.499)
    assert plan.read_size == 128 and plan.level == 0  # one level: 128 px at 0.5 um/px make 64 px at 1 um/px
    fraction = tissue_mask(plan.thumbnail).mean()
    assert 0.25 < fraction < 0.6  # a strip of skin on glass
    assert 60 < len(plan.tiles) < 250 and plan.skipped > 150
    assert max(plan.thumbnail.shape[:2]) <= 1024


def test_blank_slide_and_missing_mpp_name_the_slide(tmp_path: Path) -> None:
    blank = write_pyramid_tiff(tmp_path / "blank.tif", np.full((256, 256, 3), 240, np.uint8), mpp=1.0, levels=2)
    with pytest.raises(SlideError, match="slide blank: no tissue found"):
        plan_slide(WSIReader(backend="openslide"), SlideSource(blank), 32, 1.0)
    bare = write_demo_slide(tmp_path / "bare.tif", demo_slide_layout(2, 2), 64, mpp=None)
    with pytest.raises(SlideError, match=r"slide bare: its resolution .* give --slide_mpp"):
        plan_slide(WSIReader(backend="openslide"), SlideSource(bare), 32, 2.0)
    assert plan_slide(WSIReader(backend="openslide"), SlideSource(bare), 32, 2.0, slide_mpp=1.0).tiles
    with pytest.raises(RuntimeError, match="no slide could be scored"):
        SlideInference(
            _ensemble(), [SlideSource(blank), SlideSource(bare)], tmp_path / "out", 32, 2.0, tile_classes()
        ).run()
    statuses = [r["status"] for r in csv.DictReader((tmp_path / "out" / "slides.csv").open())]
    assert statuses[0].startswith("failed: slide blank: no tissue") and "give --slide_mpp" in statuses[1]


def test_list_slides_from_folder_files_and_csv(tmp_path: Path, halves: Path) -> None:
    (tmp_path / "a.svs").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("not a slide")
    assert [s.name for s in list_slides(tmp_path)] == ["a"]
    (tmp_path / "list.csv").write_text("slide,patient\na.svs,P1\n" + f"{halves},P1\n")
    sources = list_slides(slides=tmp_path / "list.csv")
    assert [(s.name, s.patient, s.path.is_file()) for s in sources] == [("a", "P1", True), ("halves", "P1", True)]
    with pytest.raises(ValueError, match="repeated: a"):
        list_slides(slides=[tmp_path / "a.svs", tmp_path / "a.svs"])
    with pytest.raises(ValueError, match="give `slide_dir`"):
        list_slides()


def test_slide_scores() -> None:
    p = [0.1, 0.2, 0.9, 0.95, 0.3]
    assert slide_score(p) == pytest.approx(0.49)
    assert slide_score(p, "median") == pytest.approx(0.3)
    assert slide_score(p, "top_k", 0.4) == pytest.approx(0.925)  # the best 2 of 5
    assert slide_score(p, "positive_fraction") == pytest.approx(0.4)
    with pytest.raises(ValueError, match="`score` must be one of"):
        slide_score(p, "max")


def test_tile_mpp_of_training_and_of_the_record(tmp_path: Path) -> None:
    assert training_tile_mpp(None, 64) == pytest.approx(4.0)  # demo: 224 px at 256/224 um/px, resized to 64
    assert training_tile_mpp(tmp_path, 224) == 0.5
    (tmp_path / "slide_tiles.json").write_text('{"tile_mpp": 0.5, "tile_size": 224}')
    assert training_tile_mpp(tmp_path / "tiles.csv", 112) == pytest.approx(1.0)
    assert record_tile_mpp({"tile_mpp": 2.0}) == 2.0
    assert record_tile_mpp({}) == 0.5
    with pytest.raises(ValueError, match="`tile_mpp` must be a positive number"):
        record_tile_mpp({"tile_mpp": -1})


def test_inference_outputs_and_bad_slides_go_on(tmp_path: Path, halves: Path, caplog) -> None:
    truncated = tmp_path / "truncated.tif"
    truncated.write_bytes(halves.read_bytes()[:3000])
    unsupported = tmp_path / "notes.svs"
    unsupported.write_text("not a slide")
    sources = [SlideSource(halves, "P1"), SlideSource(truncated, "P1"), SlideSource(unsupported, "P2")]
    out = tmp_path / "out"
    with caplog.at_level(logging.ERROR):
        rows = SlideInference(
            _ensemble(), sources, out, 32, 2 * MPP, tile_classes(), teacher=build_network("resnet10_slim")
        ).run()
    assert rows[0]["status"] == "ok"
    assert all(r["status"].startswith("failed: slide ") for r in rows[1:])
    assert any("slide truncated: cannot read" in m for m in caplog.messages)
    assert any("slide notes: cannot read" in m for m in caplog.messages)
    with (out / "halves" / "tiles.csv").open() as f:
        tiles = list(csv.DictReader(f))
    assert len(tiles) == 12 and set(tiles[0]) == {
        "x",
        "y",
        "level",
        "probability",
        "disagreement",
        "teacher_probability",
    }
    assert {int(t["level"]) for t in tiles} == {1} and (int(tiles[0]["x"]), int(tiles[0]["y"])) == (64, 64)
    assert (out / "halves" / "heatmap.png").stat().st_size > 5000
    with (out / "slides.csv").open() as f:
        table = list(csv.DictReader(f))
    assert [r["slide"] for r in table] == ["halves", "truncated", "notes"]
    assert table[0]["tissue_tiles"] == "12" and table[0]["skipped_tiles"] == "18" and table[0]["teacher_score"]
    assert float(table[0]["score"]) == pytest.approx(np.mean([float(t["probability"]) for t in tiles]), abs=1e-5)
    with (out / "patients.csv").open() as f:
        assert [(r["patient"], r["slides"], r["tissue_tiles"]) for r in csv.DictReader(f)] == [
            ("P1", "2", "12"),
            ("P2", "1", "0"),
        ]
    summary = (out / "summary.md").read_text()
    assert "3 slides: 1 scored, 2 failed" in summary and "12 with tissue scored, 18 background skipped" in summary


def test_inference_on_the_aperio_slide(tmp_path: Path, aperio: Path) -> None:
    rows = SlideInference(_ensemble(), [SlideSource(aperio)], tmp_path, 64, 2.0, tile_classes(), num_workers=1).run()
    assert rows[0]["status"] == "ok" and 15 < rows[0]["tissue_tiles"] < 80 and rows[0]["mpp"] == pytest.approx(0.499)
    assert (tmp_path / "cmu-1-small-region" / "heatmap.png").is_file()


def test_slide_throughput_benchmark_reports_side_by_side_ratios(halves: Path, repo_root: Path, monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(repo_root / "benchmarks"))
    from slide_throughput import main

    result = main(["--slide", str(halves), "--image_size", "32", "--tile_mpp", str(2 * MPP), "--repeats", "2"])
    assert result["tiles"] == 12 and result["level"] == 1
    for kind in ("networks", "path"):
        assert result["speedup_ensemble_vs_teacher"][kind]["n"] == 2
        assert result["tiles_per_s"][f"ensemble {kind}"]["median"] > 0


def test_cut_tiles_seeded_capped_resumable_and_bad_slides_counted(tmp_path: Path, halves: Path, caplog) -> None:
    from monai_kdml.apps.msi.slide_tiles import cut_slide_tiles

    (tmp_path / "labels.csv").write_text(f"slide,label,patient\n{halves},MSI,P1\nmissing.svs,MSS,P2\n")
    first = tmp_path / "a"
    with caplog.at_level(logging.ERROR):
        cut_slide_tiles(tmp_path / "labels.csv", first, tile_mpp=2 * MPP, tile_size=32, max_tiles=5, seed=1)
    assert any("slide missing:" in m and "does not exist" in m for m in caplog.messages)
    rows = list(csv.DictReader((first / "tiles.csv").open()))
    assert len(rows) == 5 and {(r["label"], r["patient"]) for r in rows} == {("MSI", "P1")}
    counts = {r["slide"]: r for r in csv.DictReader((first / "counts.csv").open())}
    assert counts["halves"]["tiles"] == "5" and counts["missing"]["status"].startswith("failed: slide missing")
    again = tmp_path / "b"
    cut_slide_tiles(tmp_path / "labels.csv", again, tile_mpp=2 * MPP, tile_size=32, max_tiles=5, seed=1)
    assert sorted(p.name for p in (again / "MSI").iterdir()) == sorted(p.name for p in (first / "MSI").iterdir())
    (first / "MSI" / rows[0]["path"].split("/")[-1]).unlink()  # a resumed run does not cut a finished slide again
    cut_slide_tiles(tmp_path / "labels.csv", first, tile_mpp=2 * MPP, tile_size=32, max_tiles=5, seed=1)
    assert len(list((first / "MSI").iterdir())) == 4
    with pytest.raises(ValueError, match=r"cut with other settings .*tile_size: 32 there, 64 now"):
        cut_slide_tiles(tmp_path / "labels.csv", first, tile_mpp=2 * MPP, tile_size=64, max_tiles=5, seed=1)


def test_a_missing_reader_library_names_the_extra() -> None:
    with pytest.raises(ImportError, match=r"needs cucim: pip install \"monai-kdml\[wsi\]\""):
        SlideInference(_ensemble(), [], "unused", 32, 1.0, tile_classes(), backend="cucim")
