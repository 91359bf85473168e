"""The exported polyp detector: the tensor-only network, the numpy decode + NMS and the ONNX Runtime frame detector
give the bundle's own boxes (``RetinaNetInferer`` + ``box_to_original``) on frames of any size, in frame pixels."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.apps.detection.networks.retinanet_detector import RetinaNetDetector
from PIL import Image

from monai_kdml.apps.polyp import (
    RetinaNetHeadEnsemble,
    RetinaNetInferer,
    box_to_original,
    get_preset,
    polyp_inference_transforms,
)
from monai_kdml.apps.polyp.export import RetinaNetBoxes
from monai_kdml.apps.polyp.runtime import (
    DecoderSettings,
    FrameDecoder,
    OnnxFrameDetector,
    export_detector_onnx,
    resize_pad_frame,
)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")
SIZE = 64  # the tiny preset's frame side
SHAPES = [(50, 83), (83, 50), (64, 64), (31, 200)]  # landscape, portrait, square, very wide: (H, W)


def ensemble() -> RetinaNetHeadEnsemble:
    """Two tiny students with spread-out scores (random heads score every anchor ~0.01: ties would decide NMS)."""
    torch.manual_seed(0)
    students = get_preset("tiny").build_students(2)
    for student in students:
        student.classification_head.cls_logits.weight.data *= 50
    return RetinaNetHeadEnsemble(students).eval()


def frame(shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    """A smooth random RGB frame ``(H, W, 3)`` uint8 (blobs, so the detector has structure to respond to)."""
    rng = np.random.default_rng(seed)
    small = rng.random((max(2, shape[0] // 8), max(2, shape[1] // 8), 3)) * 255
    return np.asarray(Image.fromarray(small.astype(np.uint8)).resize(shape[::-1], Image.BILINEAR))


def bundle_boxes(net: torch.nn.Module, picture: np.ndarray, path: Path, **selection) -> dict[str, np.ndarray]:
    """What the inference bundle predicts for ``picture``: its transforms, RetinaNetInferer, box_to_original."""
    Image.fromarray(picture).save(path)
    image = polyp_inference_transforms(SIZE)({"image": str(path)})["image"]
    detections = RetinaNetInferer(get_preset("tiny").anchor_generator(), **selection)(image[None].as_tensor(), net)[0]
    boxes = box_to_original(detections["box"], image.affine, image.meta["spatial_shape"])
    return {"boxes": boxes.numpy(), "scores": detections["label_scores"].numpy(), "labels": detections["label"].numpy()}


@pytest.mark.parametrize("shape", SHAPES)
def test_frames_are_prepared_exactly_as_the_bundle_prepares_them(shape: tuple[int, int], tmp_path: Path) -> None:
    picture = frame(shape)
    Image.fromarray(picture).save(tmp_path / "f.png")
    image = polyp_inference_transforms(SIZE)({"image": str(tmp_path / "f.png")})["image"]  # MONAI's (C, W, H)
    mine, (sx, _) = resize_pad_frame(picture, SIZE)
    assert np.array_equal(mine, image.numpy().transpose(0, 2, 1))  # bit for bit, padding included
    width, height = image.meta["spatial_shape"][:2]
    assert (width, height) == (shape[1], shape[0])
    assert sx * round(width * SIZE / max(shape)) == pytest.approx(width)


def test_in_graph_decoding_is_monai_box_coder() -> None:
    net = ensemble()
    wrapper = RetinaNetBoxes(net, get_preset("tiny").anchor_generator(), SIZE).eval()
    x = torch.rand(2, 3, SIZE, SIZE)
    detector = RetinaNetDetector(network=net, anchor_generator=get_preset("tiny").anchor_generator())
    with torch.no_grad():
        pred = wrapper(x)
        head = net(x.transpose(2, 3))
    anchors = detector.anchor_generator(x, head["classification"])[0]
    deltas = detector._reshape_maps(head["box_regression"])[1]  # MONAI's own flattening, for the check only
    want = detector.box_coder.decode_single(deltas, anchors)
    assert pred.shape == (2, 4 + 1, sum(wrapper.level_sizes)) == (2, 5, anchors.shape[0])
    assert torch.allclose(pred[1, :4].T, want, atol=1e-4)
    logits = detector._reshape_maps(head["classification"])[1]
    assert torch.allclose(pred[1, 4:].T, torch.sigmoid(logits), atol=1e-6)


@pytest.mark.parametrize("shape", SHAPES[:2])
def test_numpy_decode_gives_the_bundle_boxes_in_frame_pixels(shape: tuple[int, int], tmp_path: Path) -> None:
    net, picture = ensemble(), frame(shape, seed=1)
    want = bundle_boxes(net, picture, tmp_path / "f.png", score_thresh=0.05)
    wrapper = RetinaNetBoxes(net, get_preset("tiny").anchor_generator(), SIZE).eval()
    x, scale = resize_pad_frame(picture, SIZE)
    with torch.no_grad():
        pred = wrapper(torch.from_numpy(x)[None])[0].numpy()
    boxes, scores, labels = FrameDecoder(DecoderSettings(SIZE, tuple(wrapper.level_sizes)))(pred)
    boxes = np.clip(boxes * np.asarray([*scale, *scale]), 0, [shape[1], shape[0], shape[1], shape[0]])
    assert 10 <= len(boxes) == len(want["boxes"])  # enough boxes for NMS and top-k to matter
    np.testing.assert_allclose(boxes, want["boxes"], atol=1e-3)
    np.testing.assert_allclose(scores, want["scores"], atol=1e-6)
    assert np.array_equal(labels, want["labels"])
    # x runs along the frame's width: a box may reach x = W > H but never y > H
    assert boxes[:, [0, 2]].max() <= shape[1] and boxes[:, [1, 3]].max() <= shape[0]


def test_onnx_frame_detector_gives_the_bundle_boxes(tmp_path: Path) -> None:
    net = ensemble()
    path = export_detector_onnx(net, get_preset("tiny").anchor_generator(), SIZE, tmp_path / "detector.onnx")
    detector = OnnxFrameDetector(path, threads=1, batch_size=2)
    assert detector.settings.level_sizes == tuple(
        RetinaNetBoxes(net, get_preset("tiny").anchor_generator(), SIZE).level_sizes
    )
    pictures = [frame((50, 83), seed=s) for s in range(3)]
    results = detector(np.stack(pictures))  # 3 frames in batches of 2: a full and a partial batch
    assert len(results) == 3
    for i, (picture, got) in enumerate(zip(pictures, results, strict=True)):
        want = bundle_boxes(net, picture, tmp_path / f"{i}.png")
        assert got["boxes"].dtype == np.float32 and got["labels"].dtype == np.int64 and got["boxes"].shape[1] == 4
        assert len(got["boxes"]) == len(want["boxes"]) > 0
        np.testing.assert_allclose(got["boxes"], want["boxes"], atol=1e-3)
        np.testing.assert_allclose(got["scores"], want["scores"], atol=1e-4)
    strict = OnnxFrameDetector(path, settings={"score_thresh": 0.5})  # the file's settings, one overridden
    assert all((r["scores"] > 0.5).all() for r in strict(np.stack(pictures)))
    with pytest.raises(ValueError, match="uint8"):
        detector(np.zeros((1, 8, 8, 3), np.float32))


def test_runtime_module_runs_without_torch_or_monai(tmp_path: Path) -> None:
    path = export_detector_onnx(ensemble(), get_preset("tiny").anchor_generator(), SIZE, tmp_path / "d.onnx")
    module = Path(__file__).resolve().parents[3] / "monai_kdml" / "apps" / "polyp" / "runtime.py"
    script = f"""
import importlib.util, sys
import numpy as np
sys.modules["torch"] = None; sys.modules["monai"] = None  # importing either now fails
spec = importlib.util.spec_from_file_location("runtime", {str(module)!r})
runtime = sys.modules["runtime"] = importlib.util.module_from_spec(spec); spec.loader.exec_module(runtime)
out = runtime.OnnxFrameDetector({str(path)!r})(np.full((1, 40, 70, 3), 128, np.uint8))
print(len(out), out[0]["boxes"].shape[1])
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["1", "4"]
