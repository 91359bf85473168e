"""Slides -> tiles -> train -> slide inference, as a user runs it: the tile-cutting command, ``train.json`` on its
CSV datalist, and ``slide_inference.json`` with no option repeated from training (tiny: 32 px, one epoch)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("openslide", reason="the wsi extra (pip install 'monai-kdml[wsi]') is not installed")

from monai_kdml.apps.msi.demo_render import KATHER_MICRONS_PER_PIXEL
from monai_kdml.apps.msi.slide_demo import demo_slide_layout, write_demo_slide

MPP = 2 * KATHER_MICRONS_PER_PIXEL
REPO = Path(__file__).resolve().parents[3]


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_slides_to_tiles_to_training_to_slide_inference(msi_bundle, tmp_path: Path, shared_data: Path) -> None:
    slides = tmp_path / "slides"
    lines = ["slide,label,patient"]
    for i, kind in enumerate(["mostly_msi", "mostly_mss"] * 3):
        write_demo_slide(slides / f"s{i}.tif", demo_slide_layout(3, 3, kind, seed=i), 64, MPP, seed=i)  # type: ignore[arg-type]
        lines.append(f"s{i}.tif,{'MSI' if kind == 'mostly_msi' else 'MSS'},P{i // 2}")
    (tmp_path / "labels.csv").write_text("\n".join(lines) + "\n")
    tiles = tmp_path / "tiles"
    cut = [
        sys.executable, "-m", "monai_kdml.apps.msi.slide_tiles", "--labels", str(tmp_path / "labels.csv"),
        "--slide_dir", str(slides), "--output_dir", str(tiles), "--tile_mpp", str(2 * MPP), "--tile_size", "32",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE", "CUDA_VISIBLE_DEVICES": ""}
    out = subprocess.run(cut, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    counts = _rows(tiles / "counts.csv")
    assert [(r["slide"], r["class"], r["tiles"]) for r in counts][:2] == [("s0", "MSI", "9"), ("s1", "MSS", "9")]
    again = subprocess.run(cut, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)  # resumes: no re-cut
    assert again.returncode == 0 and again.stderr.count("already cut") == 6

    run = tmp_path / "run"
    msi_bundle.cli("--bundle_root", str(run), "--dataset_dir", str(tiles / "tiles.csv"), "--preset", "demo",
                   "--image_size", "32", "--batch_size", "8", "--max_epochs", "1")  # fmt: skip
    record = json.loads((run / "models" / "network.json").read_text())
    assert record["tile_mpp"] == pytest.approx(2 * MPP)  # 32 px cut at 2 * MPP, trained at 32 px

    listing = tmp_path / "list.csv"
    bad = tmp_path / "broken.tif"
    bad.write_bytes((slides / "s0.tif").read_bytes()[:2000])
    extra = [shared_data / "wsi" / "cmu-1-small-region.svs"]
    listed = [*(f"{slides / f's{i}.tif'},P{i // 2}" for i in range(6)), f"{bad},P9"]
    listed += [f"{p},P10" for p in extra if p.is_file()]
    listing.write_text("slide,patient\n" + "\n".join(listed) + "\n")
    result = msi_bundle.cli("--bundle_root", str(run), "--slides", str(listing), "--labels",
                            str(tmp_path / "labels.csv"), config="slide_inference.json")  # fmt: skip
    out_dir = run / "eval" / "slides"
    table = {r["slide"]: r for r in _rows(out_dir / "slides.csv")}
    assert all(table[f"s{i}"]["status"] == "ok" and table[f"s{i}"]["tissue_tiles"] == "9" for i in range(6))
    assert table["broken"]["status"].startswith("failed: slide broken: cannot read")
    assert "slide broken: cannot read" in result.stderr + result.stdout
    assert {r["level"] for r in _rows(out_dir / "s0" / "tiles.csv")} == {"1"}  # read at 2 * MPP from level 1
    assert (out_dir / "s0" / "heatmap.png").is_file() and (out_dir / "roc_slides.png").is_file()
    patients = {r["patient"]: r for r in _rows(out_dir / "patients.csv")}
    assert patients["P0"]["slides"] == "2" and patients["P0"]["tissue_tiles"] == "18"
    summary = (out_dir / "summary.md").read_text()
    assert "- slides: AUC" in summary and "bootstrap interval" in summary
    if extra[0].is_file():  # the real Aperio slide through the same command (its own mpp, level 0, resized)
        assert table["cmu-1-small-region"]["status"] == "ok" and int(table["cmu-1-small-region"]["tissue_tiles"]) > 5
