"""Accuracy of the whole slide path on generated slides with a known layout: students trained on tiles of a demo
slide (MSI-like left half, MSS-like right half) must, through slide inference on other slides, separate the halves
of a new slide and score slides made mostly of MSI-like tiles above those made mostly of MSS-like tiles."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("openslide", reason="the wsi extra (pip install 'monai-kdml[wsi]') is not installed")

from monai.data import DataLoader, PatchWSIDataset, WSIReader

from monai_kdml.apps.msi import tile_classes
from monai_kdml.apps.msi.demo_render import KATHER_MICRONS_PER_PIXEL
from monai_kdml.apps.msi.slide_demo import demo_slide_layout, write_demo_slide
from monai_kdml.apps.msi.slide_inference import SlideInference, slide_tile_transform
from monai_kdml.apps.msi.slides import SlideSource, plan_slide
from monai_kdml.networks import StudentEnsemble, build_network

MPP = 2 * KATHER_MICRONS_PER_PIXEL  # level 0 of the generated slides
TILE_MPP, SIZE = 2 * MPP, 32  # the network sees 32 px tiles at 4.6 um/px (the demo model's scale)


def _train(slide: Path, cols: int) -> StudentEnsemble:
    """Two students trained with cross-entropy on the tissue tiles of ``slide`` (label 1 on its left half), the tiles
    read by the same MONAI dataset and transform as slide inference."""
    plan = plan_slide(WSIReader(backend="openslide"), SlideSource(slide), SIZE, TILE_MPP)
    dataset = PatchWSIDataset(plan.tiles, transform=slide_tile_transform(SIZE), include_label=False,
                              center_location=False, reader=WSIReader, backend="openslide")  # fmt: skip
    images = torch.cat([torch.as_tensor(batch["image"]) for batch in DataLoader(dataset, batch_size=16)])
    labels = torch.tensor([int(t["col"] <= cols // 2) for t in plan.tiles])  # border column 0; tissue 1..cols
    torch.manual_seed(0)
    ensemble = StudentEnsemble([build_network("resnet10_slim") for _ in range(2)])
    optimizer = torch.optim.Adam(ensemble.parameters(), lr=3e-3)
    for step in range(60):
        pick = torch.randint(0, len(images), (32,))
        x = torch.rot90(images[pick], k=step % 4, dims=(2, 3))  # tiles have no orientation
        loss = sum(torch.nn.functional.cross_entropy(s, labels[pick]) for s in ensemble.member_logits(x))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return ensemble.eval()


@pytest.fixture(scope="module")
def scored(module_tmp: Callable[[str], Path]) -> tuple[Path, dict[str, float]]:
    root = module_tmp("accuracy")
    ensemble = _train(write_demo_slide(root / "train.tif", demo_slide_layout(6, 8), 64, MPP, seed=100), 8)
    slides = [write_demo_slide(root / "test" / "halves.tif", demo_slide_layout(4, 6), 64, MPP, seed=1)]
    for i, kind in enumerate(["mostly_msi", "mostly_mss"] * 2):
        layout = demo_slide_layout(3, 4, kind, seed=i)  # type: ignore[arg-type]
        slides.append(write_demo_slide(root / "test" / f"{kind}_{i}.tif", layout, 64, MPP, seed=10 + i))
    out = root / "out"
    rows = SlideInference(ensemble, [SlideSource(s) for s in slides], out, SIZE, TILE_MPP, tile_classes()).run()
    return out, {r["slide"]: r["score"] for r in rows}


def test_heatmap_separates_the_halves(scored: tuple[Path, dict[str, float]]) -> None:
    out, _ = scored
    with (out / "halves" / "tiles.csv").open() as f:
        tiles = list(csv.DictReader(f))
    left = [float(t["probability"]) for t in tiles if int(t["x"]) < 64 * (1 + 3)]  # border tile + 3 MSI-like columns
    right = [float(t["probability"]) for t in tiles if int(t["x"]) >= 64 * (1 + 3)]
    assert len(left) == len(right) == 12
    assert np.mean(left) > np.mean(right) + 0.3
    assert np.median(left) > 0.5 > np.median(right)


def test_mostly_msi_slides_score_above_mostly_mss(scored: tuple[Path, dict[str, float]]) -> None:
    _, scores = scored
    msi = [v for k, v in scores.items() if k.startswith("mostly_msi")]
    mss = [v for k, v in scores.items() if k.startswith("mostly_mss")]
    assert len(msi) == len(mss) == 2
    assert min(msi) > max(mss)
