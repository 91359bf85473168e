"""Kvasir datalist: the pre-flight check of every bad-input case, the generic layouts, real frames, the split."""

from __future__ import annotations

import json
import logging
import random
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from monai_kdml.apps.polyp.datalists import split_by_id
from monai_kdml.apps.polyp.demo import make_polyp_demo
from monai_kdml.apps.polyp.kvasir import FrameLayout, kvasir_datalist, kvasir_preflight

NAMES = [f"demo_{i:04d}" for i in range(4)]


@pytest.fixture(scope="module")
def pristine(module_tmp: Callable[[str], Path]) -> Path:
    return make_polyp_demo(module_tmp("pristine"), 4, image_size=96, seed=7)


@pytest.fixture
def data(pristine: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(pristine, tmp_path / "data"))


def _json(root: Path) -> dict:
    return json.loads((root / "kavsir_bboxes.json").read_text())


def _write_json(root: Path, boxes: dict) -> None:
    (root / "kavsir_bboxes.json").write_text(json.dumps(boxes))


def _as_list(entry: dict) -> list[list[float]]:
    return [[b["xmin"], b["ymin"], b["xmax"], b["ymax"]] for b in entry["bbox"]]


def test_clean_demo_gives_every_frame_with_its_json_boxes(data: Path) -> None:
    datalist, report = kvasir_preflight(data)
    boxes = _json(data)
    assert [d["id"] for d in datalist] == NAMES and report.kept == report.images_found == 4
    assert not report.has_problems
    for item in datalist:
        assert item["box"] == _as_list(boxes[item["id"]]) and item["image"].endswith(f"{item['id']}.jpg")


def test_corrupt_image_is_skipped_and_counted(data: Path) -> None:
    path = data / "images" / "demo_0001.jpg"
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])  # truncated JPEG
    (data / "images" / "demo_0002.jpg").write_bytes(b"not an image")
    datalist, report = kvasir_preflight(data)
    assert report.corrupt_images == ["demo_0001", "demo_0002"]
    assert [d["id"] for d in datalist] == ["demo_0000", "demo_0003"]


def test_wrong_size_mask_is_ignored_json_boxes_used_else_frame_skipped(data: Path) -> None:
    for name in ("demo_0000", "demo_0001"):
        Image.new("L", (20, 30)).save(data / "masks" / f"{name}.png")
    boxes = _json(data)
    expected = _as_list(boxes["demo_0000"])
    del boxes["demo_0001"]  # no JSON entry and an unusable mask: nothing left to take boxes from
    _write_json(data, boxes)
    datalist, report = kvasir_preflight(data)
    assert report.mask_size_mismatch == ["demo_0000", "demo_0001"]
    assert report.no_box_source == ["demo_0001"] and report.images_without_entry == ["demo_0001"]
    by_id = {d["id"]: d for d in datalist}
    assert "demo_0001" not in by_id and by_id["demo_0000"]["box"] == expected


def test_corrupt_mask_is_counted(data: Path) -> None:
    (data / "masks" / "demo_0003.png").write_bytes(b"\x89PNG broken")
    datalist, report = kvasir_preflight(data)
    assert report.corrupt_masks == ["demo_0003"] and len(datalist) == 4


def test_json_entry_without_image_and_image_without_entry(data: Path) -> None:
    boxes = _json(data)
    expected = _as_list(boxes["demo_0002"])
    del boxes["demo_0002"]
    boxes["ghost"] = {"height": 10, "width": 10, "bbox": []}
    _write_json(data, boxes)
    datalist, report = kvasir_preflight(data)
    assert report.entries_without_image == ["ghost"]
    assert report.images_without_entry == ["demo_0002"] and report.boxes_from_mask == ["demo_0002"]
    assert {d["id"]: d["box"] for d in datalist}["demo_0002"] == expected  # the demo's masks and boxes agree


def test_empty_box_list_kept_as_negative_or_skipped(data: Path) -> None:
    boxes = _json(data)
    boxes["demo_0003"]["bbox"] = []
    _write_json(data, boxes)
    (data / "masks" / "demo_0003.png").unlink()  # else the check flags the mask's polyp against the empty list
    datalist, report = kvasir_preflight(data)
    assert report.empty_frames == ["demo_0003"] and not report.has_problems
    negative = {d["id"]: d for d in datalist}["demo_0003"]
    assert negative["box"] == [] and negative["label"] == []
    datalist, _ = kvasir_preflight(data, FrameLayout(keep_empty=False))
    assert [d["id"] for d in datalist] == NAMES[:3]


def test_degenerate_boxes_clipped_or_dropped(data: Path) -> None:
    boxes = _json(data)
    entry = boxes["demo_0000"]
    width = entry["width"]
    good = entry["bbox"][0]
    entry["bbox"] = [
        good,
        {"label": "polyp", "xmin": -5, "ymin": 10, "xmax": width + 7, "ymax": 40},  # outside: clipped
        {"label": "polyp", "xmin": 10, "ymin": 10, "xmax": 13, "ymax": 50},  # 3 px sliver: dropped
        {"label": "polyp", "xmin": 50, "ymin": 50, "xmax": 20, "ymax": 70},  # inverted: dropped
        {"label": "polyp", "xmin": width + 1, "ymin": 0, "xmax": width + 30, "ymax": 30},  # fully outside: dropped
    ]
    _write_json(data, boxes)
    (data / "masks" / "demo_0000.png").unlink()
    datalist, report = kvasir_preflight(data)
    got = {d["id"]: d["box"] for d in datalist}["demo_0000"]
    assert got == [_as_list({"bbox": [good]})[0], [0.0, 10.0, float(width), 40.0]]
    assert len(report.clipped_boxes) == 1 and len(report.dropped_boxes) == 3
    datalist, report = kvasir_preflight(data, FrameLayout(min_box_size=2))
    assert len({d["id"]: d["box"] for d in datalist}["demo_0000"]) == 3 and len(report.dropped_boxes) == 2


def test_annotation_disagreeing_with_mask_or_image_size(data: Path) -> None:
    boxes = _json(data)
    boxes["demo_0001"]["bbox"] = [{"label": "polyp", "xmin": 0, "ymin": 0, "xmax": 12, "ymax": 12}]
    boxes["demo_0002"]["width"] += 5  # JSON of another resolution: its boxes cannot be trusted
    _write_json(data, boxes)
    datalist, report = kvasir_preflight(data)
    assert report.box_mask_disagreement == ["demo_0001"]
    assert report.annotation_size_mismatch == ["demo_0002"] and report.boxes_from_mask == ["demo_0002"]
    assert len(datalist) == 4


def test_masks_only_and_csv_layout(data: Path) -> None:
    expected = {name: sorted(_as_list(entry)) for name, entry in _json(data).items()}
    (data / "kavsir_bboxes.json").unlink()
    datalist, report = kvasir_preflight(data)
    assert {d["id"]: sorted(d["box"]) for d in datalist} == expected and report.boxes_from_mask == NAMES
    rows = ["image,xmin,ymin,xmax,ymax,label"]
    rows += [f"{n}.jpg,{','.join(str(v) for v in b)},polyp" for n in NAMES[:3] for b in expected[n]]
    rows.append(f"{NAMES[3]}.jpg,,,,,")  # declared negative
    (data / "boxes.csv").write_text("\n".join(rows) + "\n")
    shutil.rmtree(data / "masks")
    datalist, report = kvasir_preflight(data, FrameLayout(boxes_file="boxes.csv"))
    got = {d["id"]: sorted(d["box"]) for d in datalist}
    assert got == {**{n: expected[n] for n in NAMES[:3]}, NAMES[3]: []} and report.empty_frames == [NAMES[3]]


def test_clear_errors(data: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere"):
        kvasir_datalist(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"empty.*no images"):
        kvasir_datalist(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="neither the annotation file"):
        kvasir_datalist(data, FrameLayout(boxes_file="missing.json", masks_dir="nomasks"))
    (data / "kavsir_bboxes.json").write_text("{broken")
    with pytest.raises(ValueError, match=r"kavsir_bboxes\.json"):
        kvasir_datalist(data)
    _write_json(data, {"demo_0000": {"bbox": [{"label": "adenoma", "xmin": 0, "ymin": 0, "xmax": 5, "ymax": 5}]}})
    with pytest.raises(ValueError, match="adenoma"):
        kvasir_datalist(data)
    (data / "b.csv").write_text("image,xmin,ymin\nx.jpg,1,2\n")
    with pytest.raises(ValueError, match=r"b\.csv.*xmax"):
        kvasir_datalist(data, FrameLayout(boxes_file="b.csv"))


def test_summary_logged_as_one_block(data: Path, caplog: pytest.LogCaptureFixture) -> None:
    (data / "images" / "demo_0001.jpg").write_bytes(b"junk")
    with caplog.at_level(logging.INFO, logger="monai_kdml.apps.polyp.kvasir"):
        datalist = kvasir_datalist(data)
    records = [r for r in caplog.records if r.name == "monai_kdml.apps.polyp.kvasir"]
    assert len(records) == 1 and records[0].levelno == logging.WARNING and len(datalist) == 3
    assert "4 images found, 3 frames kept" in records[0].message
    assert "corrupt images                 1   e.g. demo_0001" in records[0].message


def test_real_kvasir_frames(kvasir: Path, tmp_path: Path) -> None:
    boxes = json.loads((kvasir / "kavsir_bboxes.json").read_text())
    # a few frames, one with a 3 px sliver along the right edge next to two real polyps
    names = ["cju0qkwl35piu0993l0dewei2", "cju0qoxqj9q6s0835b43399p4", "cju0roawvklrq0799vmjorwfv"]
    for sub in ("images", "masks"):
        (tmp_path / sub).mkdir()
        for n in names:  # links, not copies: the data stay outside the repository
            (tmp_path / sub / f"{n}.jpg").symlink_to(kvasir / sub / f"{n}.jpg")
    _write_json(tmp_path, {n: boxes[n] for n in names})
    datalist, report = kvasir_preflight(tmp_path)
    assert [d["id"] for d in datalist] == sorted(names)
    assert report.dropped_boxes == ["cju0roawvklrq0799vmjorwfv [619.0, 151.0, 622.0, 285.0]"]
    assert not report.box_mask_disagreement and not report.corrupt_images
    for item in datalist:
        assert item["box"] == [b for b in _as_list(boxes[item["id"]]) if min(b[2] - b[0], b[3] - b[1]) >= 10]


def _items(n: int) -> list[dict]:
    return [{"id": f"case_{i:03d}", "image": f"case_{i:03d}.jpg", "box": [], "label": []} for i in range(n)]


def test_split_is_seeded_by_id_and_order_free() -> None:
    items = _items(50)
    train, val, test = split_by_id(items, val_fraction=0.2, test_fraction=0.1, seed=4)
    assert (len(train), len(val), len(test)) == (50 - round(0.2 * 50) - round(0.1 * 50), round(0.2 * 50), 5)
    ids = [{d["id"] for d in part} for part in (train, val, test)]
    assert set.union(*ids) == {d["id"] for d in items} and sum(map(len, ids)) == 50
    shuffled = items[:]
    random.Random(0).shuffle(shuffled)
    assert split_by_id(shuffled, 0.2, 0.1, seed=4) == (train, val, test)
    assert split_by_id(items, 0.2, 0.1, seed=5)[1] != val
    twice = [*items, {"id": "case_007", "image": "other.jpg", "box": [], "label": []}]
    parts = split_by_id(twice, 0.2, 0.1, seed=4)
    assert sum("case_007" in {d["id"] for d in part} for part in parts) == 1  # an id never straddles splits


@pytest.mark.parametrize(("val", "test"), [(-0.1, 0.1), (0.1, 1.0), (0.5, 0.5)])
def test_split_rejects_bad_fractions(val: float, test: float) -> None:
    with pytest.raises(ValueError, match="fraction"):
        split_by_id(_items(10), val_fraction=val, test_fraction=test)
