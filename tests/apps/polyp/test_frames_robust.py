"""Polyp frames as clinical systems hand them over: no box anywhere, 16-bit frames, huge frames and masks, malformed
box files, and inference outputs that must never collide."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from monai_kdml.apps.polyp.batching import detection_collate
from monai_kdml.apps.polyp.datalists import polyp_inference_datalist, prepare_polyp_datalists, split_by_id
from monai_kdml.apps.polyp.demo import make_polyp_demo
from monai_kdml.apps.polyp.handlers import DetectionPredictionWriter, decollate_detections
from monai_kdml.apps.polyp.kvasir import kvasir_datalist, kvasir_preflight
from monai_kdml.apps.polyp.transforms import polyp_inference_transforms, polyp_val_transforms


@pytest.fixture(scope="module")
def pristine(module_tmp: Callable[[str], Path]) -> Path:
    return make_polyp_demo(module_tmp("pristine"), 6, image_size=64, seed=3)


@pytest.fixture
def data(pristine: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(pristine, tmp_path / "data"))


def _boxes(root: Path) -> dict:
    return json.loads((root / "kavsir_bboxes.json").read_text())


def _write(root: Path, boxes: dict) -> None:
    (root / "kavsir_bboxes.json").write_text(json.dumps(boxes))


# ------------------------------------------------------------------------------------------------ training data


def test_a_data_set_without_any_box_is_refused_before_training(data: Path, tmp_path: Path) -> None:
    _write(data, {name: dict(entry, bbox=[]) for name, entry in _boxes(data).items()})
    shutil.rmtree(data / "masks")
    with pytest.raises(ValueError, match=r"none of the 6 usable frames has a box \(6 frames without boxes") as err:
        kvasir_datalist(data)
    assert str(data) in str(err.value)
    with pytest.raises(ValueError, match="none of the 6 usable frames has a box"):
        prepare_polyp_datalists(data, tmp_path)


def test_a_training_split_without_boxes_is_refused(data: Path, tmp_path: Path) -> None:
    datalist, _ = kvasir_preflight(data)
    _, val, _ = split_by_id(datalist, val_fraction=0.2, test_fraction=0.2, seed=0)
    keep = {val[0]["id"]}  # the one frame with a box lands in validation
    box = [{"label": "polyp", "xmin": 5, "ymin": 5, "xmax": 30, "ymax": 30}]
    _write(data, {name: dict(entry, bbox=box if name in keep else []) for name, entry in _boxes(data).items()})
    shutil.rmtree(data / "masks")
    with pytest.raises(ValueError, match="the 4 training frames have no box"):
        prepare_polyp_datalists(data, tmp_path, val_fraction=0.2, test_fraction=0.2)
    _write(data, {name: dict(entry, bbox=box) for name, entry in _boxes(data).items()} | {min(keep): {"bbox": []}})
    # a negative beside positives stays fine
    assert len(prepare_polyp_datalists(data, tmp_path, val_fraction=0.2, test_fraction=0.2).train) == 4


def test_16_bit_frame_is_scaled_and_reported(data: Path) -> None:
    frame = data / "images" / "demo_0001.jpg"
    with Image.open(frame) as img:
        gray = np.asarray(img.convert("L"), dtype=np.uint16) * 257
    frame.unlink()
    Image.fromarray(gray).save(data / "images" / "demo_0001.png")
    datalist, report = kvasir_preflight(data)
    assert report.scaled_from_16bit == ["demo_0001"] and not report.has_problems and len(datalist) == 6
    item = next(item for item in datalist if item["id"] == "demo_0001")
    image = np.asarray(polyp_val_transforms(64)(item)["image"])
    assert 0.05 < image.mean() < 0.95 and image.max() > 0.3  # the frame, not a white (clipped) square


def test_huge_frame_and_huge_mask_are_counted_not_crashing(data: Path, huge_png: Path) -> None:
    shutil.copy(huge_png, data / "images" / "huge.png")
    (data / "masks" / "demo_0002.png").write_bytes(huge_png.read_bytes())
    datalist, report = kvasir_preflight(data)
    assert report.too_large_images == ["huge"] and report.corrupt_masks == ["demo_0002"]
    assert sorted(item["id"] for item in datalist) == [f"demo_{i:04d}" for i in range(6)]
    assert "too large images               1   e.g. huge" in report.summary()


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"width": float("inf")}, "width/height inf is not a positive whole number"),
        ({"height": True}, "width/height True is not a positive whole number"),
        ({"bbox": [{"xmin": True, "ymin": 0, "xmax": 30, "ymax": 30}]}, "needs numeric xmin"),
    ],
)
def test_malformed_box_json_names_the_file_and_entry(data: Path, change: dict, words: str) -> None:
    boxes = _boxes(data)
    boxes["demo_0000"].update(change)
    _write(data, boxes)
    with pytest.raises(ValueError, match=words) as err:
        kvasir_preflight(data)
    assert str(err.value).startswith(f"{data / 'kavsir_bboxes.json'}: entry 'demo_0000'")


def test_two_entries_for_one_frame_are_refused(data: Path) -> None:
    boxes = _boxes(data)
    boxes["demo_0000.jpg"] = dict(boxes["demo_0000"], bbox=[])  # which one is right? not ours to guess
    _write(data, boxes)
    with pytest.raises(ValueError, match="a second entry for image id 'demo_0000'"):
        kvasir_preflight(data)


# ------------------------------------------------------------------------------------------------ inference outputs


def _frames(folder: Path, names: list[str]) -> Path:
    folder.mkdir()
    for i, name in enumerate(names):
        Image.fromarray(np.full((30, 40, 3), 40 * i, np.uint8)).save(folder / name)
    return folder


def test_frames_sharing_a_stem_get_their_own_ids(tmp_path: Path, huge_png: Path) -> None:
    folder = _frames(tmp_path / "in", ["dup.jpg", "dup.png", "predictions.jpg", "x.png", "x.png.jpg"])
    shutil.copy(huge_png, folder / "huge.png")
    items = polyp_inference_datalist(folder)
    assert [item["id"] for item in items] == ["dup.jpg", "dup.png", "predictions", "x", "x.png.jpg"]


def _run_writer(writer: DetectionPredictionWriter, items: list[dict]) -> None:
    samples = [polyp_inference_transforms(32)(dict(item)) for item in items]
    batch = decollate_detections(detection_collate(samples))
    pred = {"box": torch.tensor([[2.0, 2.0, 20.0, 20.0]]), "label": torch.zeros(1, dtype=torch.long)}
    output = [{"pred": dict(pred, label_scores=torch.tensor([0.9]))} for _ in items]
    writer(SimpleNamespace(state=SimpleNamespace(batch=batch, output=output)))


def test_no_two_outputs_collide(tmp_path: Path) -> None:
    items = polyp_inference_datalist(_frames(tmp_path / "in", ["dup.jpg", "dup.png", "predictions.jpg"]))
    out = tmp_path / "out"
    writer = DetectionPredictionWriter(out, overlay=True)
    _run_writer(writer, items)
    writer.write_all()
    combined = json.loads((out / "predictions.json").read_text())
    assert sorted(combined) == ["dup.jpg", "dup.png", "predictions"]
    for name, entry in combined.items():
        assert json.loads((out / "frames" / f"{name}.json").read_text()) == entry
        assert (out / "frames" / f"{name}_overlay.png").is_file()
    assert {entry["image"] for entry in combined.values()} == {item["image"] for item in items}


def test_the_writer_refuses_a_second_frame_with_one_id(tmp_path: Path) -> None:
    folder = _frames(tmp_path / "in", ["a.jpg", "b.jpg"])
    items = [{"image": str(folder / "a.jpg"), "id": "same"}, {"image": str(folder / "b.jpg"), "id": "same"}]
    with pytest.raises(ValueError, match=r"two frames with id 'same' \(.*a\.jpg and .*b\.jpg\)"):
        _run_writer(DetectionPredictionWriter(tmp_path / "out"), items)
    with pytest.raises(ValueError, match="does not name a file inside"):
        _run_writer(DetectionPredictionWriter(tmp_path / "out"), [{"image": str(folder / "a.jpg"), "id": "../up"}])
