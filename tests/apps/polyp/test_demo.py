"""Synthetic polyp frames: deterministic, idempotently cached, masks and boxes consistent, readable as Kvasir."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import measure

from monai_kdml.apps.polyp import demo as polyp_demo
from monai_kdml.apps.polyp.demo import DEMO_VERSION, ensure_polyp_demo, make_polyp_demo, render_polyp_frame
from monai_kdml.apps.polyp.kvasir import kvasir_preflight

SIZE = 96  # small frames keep the tests fast; the rendering is scale-free


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def demo(module_tmp: Callable[[str], Path]) -> Path:
    return make_polyp_demo(module_tmp("demo"), 6, image_size=SIZE, seed=3)


def test_layout_sizes_and_boxes_match_masks(demo: Path) -> None:
    boxes = json.loads((demo / "kavsir_bboxes.json").read_text())
    assert sorted(boxes) == [f"demo_{i:04d}" for i in range(6)]
    aspects = set()
    for name, entry in boxes.items():
        image = Image.open(demo / "images" / f"{name}.jpg")
        mask = np.asarray(Image.open(demo / "masks" / f"{name}.png")) > 127
        assert image.mode == "RGB" and image.size == (entry["width"], entry["height"]) == mask.shape[::-1]
        assert max(image.size) == SIZE
        aspects.add(round(entry["width"] / entry["height"], 2))
        assert 1 <= len(entry["bbox"]) <= 3
        # each 8-connected mask component is exactly one box (xmax/ymax exclusive)
        regions = measure.regionprops(measure.label(mask, connectivity=2))
        from_mask = sorted([r.bbox[1], r.bbox[0], r.bbox[3], r.bbox[2]] for r in regions)
        listed = sorted([b["xmin"], b["ymin"], b["xmax"], b["ymax"]] for b in entry["bbox"])
        assert from_mask == listed
        assert all(b["label"] == "polyp" for b in entry["bbox"])
    assert len(aspects) > 1  # aspect ratio varies like the real data


def test_frames_look_like_mucosa_with_a_distinct_polyp() -> None:
    image, masks = render_polyp_frame(np.random.default_rng([0, 5]), 120, 140)
    assert image.shape == (120, 140, 3) and image.dtype == np.uint8 and masks
    visible = image.sum(-1) > 30
    mean = image[visible].mean(0)
    assert mean[0] > mean[1] > mean[2] * 0.9  # red-dominated mucosa
    polyp = np.any(masks, axis=0)
    assert (image[polyp & visible].mean(0) != image[~polyp & visible].mean(0)).any()
    assert (image == 255).all(-1).any()  # specular highlights saturate


def test_deterministic_and_frame_i_depends_only_on_seed_and_i(tmp_path: Path) -> None:
    a = _files(make_polyp_demo(tmp_path / "a", 3, image_size=SIZE, seed=1))
    b = _files(make_polyp_demo(tmp_path / "b", 3, image_size=SIZE, seed=1))
    assert a == b
    c = _files(make_polyp_demo(tmp_path / "c", 2, image_size=SIZE, seed=1))
    assert all(c[k] == a[k] for k in c if k.startswith(("images/", "masks/")))
    d = _files(make_polyp_demo(tmp_path / "d", 3, image_size=SIZE, seed=2))
    assert d["images/demo_0000.jpg"] != a["images/demo_0000.jpg"]


def test_kvasir_loader_reads_the_demo_without_complaint(demo: Path) -> None:
    datalist, report = kvasir_preflight(demo)
    boxes = json.loads((demo / "kavsir_bboxes.json").read_text())
    assert len(datalist) == 6 and not report.has_problems
    for item in datalist:
        expected = [[b["xmin"], b["ymin"], b["xmax"], b["ymax"]] for b in boxes[item["id"]]["bbox"]]
        assert item["box"] == expected and item["label"] == [0] * len(expected)


def test_ensure_is_idempotent_and_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch) -> None:
    with caplog.at_level(logging.WARNING, logger="monai_kdml.apps.polyp.demo"):
        first = ensure_polyp_demo(tmp_path, num_images=2, image_size=SIZE, seed=0)
    assert "SYNTHETIC" in caplog.text
    marker = json.loads((first / "polyp_demo.json").read_text())
    assert marker == {"version": DEMO_VERSION, "num_images": 2, "image_size": SIZE, "seed": 0}
    before = _files(first)

    def fail(*args, **kwargs):
        raise AssertionError("a complete demo folder must not be regenerated")

    monkeypatch.setattr(polyp_demo, "make_polyp_demo", fail)
    assert ensure_polyp_demo(tmp_path, num_images=2, image_size=SIZE, seed=0) == first
    assert _files(first) == before
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no temporary folder left behind


def test_ensure_rebuilds_an_incomplete_folder_and_separates_params(tmp_path: Path) -> None:
    first = ensure_polyp_demo(tmp_path, num_images=2, image_size=SIZE, seed=0)
    (first / "polyp_demo.json").unlink()  # as if a crash had hit a non-atomic writer
    (first / "images" / "demo_0001.jpg").unlink()
    again = ensure_polyp_demo(tmp_path, num_images=2, image_size=SIZE, seed=0)
    assert again == first and (again / "images" / "demo_0001.jpg").is_file()
    other = ensure_polyp_demo(tmp_path, num_images=1, image_size=SIZE, seed=0)
    assert other != first and len(list((other / "images").iterdir())) == 1


@pytest.mark.parametrize(("num_images", "image_size"), [(0, SIZE), (2, 32)])
def test_bad_arguments_raise(tmp_path: Path, num_images: int, image_size: int) -> None:
    with pytest.raises(ValueError, match=r"num_images|image_size"):
        make_polyp_demo(tmp_path, num_images, image_size=image_size)
