"""The polyp bundle's deployment files from a trained tiny run: ``run export`` (TorchScript, ONNX, torch.export of the
tensor-only detector, each checked against eager), the frame detector on the bundle's own frames, inference in ONNX
Runtime, and the model-zoo checks (``verify_metadata``, ``verify_net_in_out``; ``ckpt_export`` + ``torch.jit.load``
of ``network_def`` is ``test_bundle.py::test_exported_torchscript_gives_the_ensemble_head_outputs``)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import verify_metadata, verify_net_in_out
from PIL import Image

from monai_kdml.apps.polyp.demo_clip import render_demo_clip, write_frames
from monai_kdml.apps.polyp.runtime import OnnxFrameDetector

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning", "ignore::FutureWarning")
TINY = {"preset": "tiny", "image_size": 64, "demo_images": 16, "demo_image_size": 80, "batch_size": 4}
LOW = {"score_thresh": 0.001, "output_score_thresh": 0.0}  # a 1-epoch detector scores ~0.01: keep its boxes


@pytest.fixture(scope="module")
def trained(polyp_bundle, module_tmp: Callable[[str], Path]) -> Path:
    """One tiny 1-epoch run, then the bundle's export with the low score threshold (as a user runs both)."""
    root = module_tmp("polyp_export")
    polyp_bundle.workflow("train.json", "train", bundle_root=str(root), max_epochs=1, **TINY)
    out = polyp_bundle.cli(
        "--bundle_root", str(root), "--score_thresh", "0.001", config="inference.json", command="run export"
    )
    (root / "export.log").write_text(out.stdout + out.stderr)
    return root


def frames_dir(trained: Path) -> Path:
    return next((trained / ".cache").glob("polyp_demo_*")) / "images"


def test_export_writes_three_files_checked_against_eager(trained: Path) -> None:
    log = (trained / "export.log").read_text()
    diffs = re.findall(r"Exported (\S+): max \|diff\| from the eager network = (\S+) \(batch 3\)", log)
    assert sorted(Path(p).name for p, _ in diffs) == ["detector.onnx", "detector.pt2", "detector.ts"]
    assert all(float(d) <= 1e-3 for _, d in diffs)
    meta = json.loads((trained / "models" / "metadata.json").read_text())
    assert meta["network_data_format"]["inputs"]["image"]["spatial_shape"] == [64, 64]
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        program = torch.export.load(str(trained / "models" / "detector.pt2")).module()
        scripted = torch.jit.load(str(trained / "models" / "detector.ts"))
        assert torch.allclose(program(x), scripted(x), atol=1e-4)
        assert program(x).shape[:2] == (2, 5)


def test_frame_detector_gives_the_bundle_predictions(polyp_bundle, trained: Path, tmp_path: Path) -> None:
    frames = sorted(frames_dir(trained).iterdir())[:4]
    out = tmp_path / "pred"
    polyp_bundle.workflow(
        "inference.json", "infer", bundle_root=str(trained), dataset_dir=str(frames[0].parent), output_dir=str(out),
        **LOW,
    )  # fmt: skip
    written = json.loads((out / "predictions.json").read_text())
    detector = OnnxFrameDetector(trained / "models" / "detector.onnx")
    for path in frames:
        with Image.open(path) as img:
            picture = np.asarray(img.convert("RGB"))
        got = detector(picture[None])[0]
        entry = next(e for e in written.values() if Path(e["image"]).name == path.name)
        assert (entry["height"], entry["width"]) == picture.shape[:2]
        want = np.asarray([[b[k] for k in ("xmin", "ymin", "xmax", "ymax")] for b in entry["bbox"]])
        assert_same_detections(got["boxes"], got["scores"], want, np.asarray([b["score"] for b in entry["bbox"]]))


def assert_same_detections(boxes: np.ndarray, scores: np.ndarray, want: np.ndarray, want_scores: np.ndarray) -> None:
    """Every box of one list has one in the other within the JSON's rounding (0.1 px, 1e-4 score); order among
    equal rounded scores is free."""
    assert len(boxes) == len(want) > 0
    for box, score in zip(want, want_scores, strict=True):
        close = (np.abs(boxes - box).max(axis=1) <= 0.051 + 1e-3) & (np.abs(scores - score) <= 5e-5 + 1e-4)
        assert close.any(), (box, score)


def test_inference_in_onnx_runtime_gives_the_pytorch_boxes(polyp_bundle, trained: Path) -> None:
    results = {}
    for runtime in ("torch", "onnx"):
        out = trained / f"inference_{runtime}"
        polyp_bundle.workflow(
            "inference.json", "infer", bundle_root=str(trained), dataset_dir=str(frames_dir(trained)),
            output_dir=str(out), runtime=runtime, **LOW,
        )  # fmt: skip
        results[runtime] = json.loads((out / "predictions.json").read_text())
    assert results["torch"].keys() == results["onnx"].keys()
    for name, entry in results["torch"].items():
        other = results["onnx"][name]["bbox"]
        boxes = np.asarray([[b[k] for k in ("xmin", "ymin", "xmax", "ymax")] for b in other])
        want = np.asarray([[b[k] for k in ("xmin", "ymin", "xmax", "ymax")] for b in entry["bbox"]])
        scores = np.asarray([b["score"] for b in other])
        assert_same_detections(boxes, scores, want, np.asarray([b["score"] for b in entry["bbox"]]))


def test_model_zoo_checks_pass_on_the_trained_bundle(polyp_bundle, trained: Path) -> None:
    schema = str(polyp_bundle.dir.parent / "schema" / "meta_schema_20240725.json")
    for meta in (polyp_bundle.dir / "metadata.json", trained / "models" / "metadata.json"):
        verify_metadata(meta_file=str(meta), filepath=schema)
    verify_net_in_out(
        net_id="detector_def",  # the tensor-only network every export writes
        meta_file=str(trained / "models" / "metadata.json"),
        config_file=str(polyp_bundle.dir / "inference.json"),
        bundle_root=str(trained),
        device="cpu",
    )


def test_video_in_onnx_runtime_gives_the_torch_videos_boxes(polyp_bundle, trained: Path, tmp_path: Path) -> None:
    """``--video_backend onnxruntime`` runs the exported detector.onnx; its boxes are the eager backend's."""
    clip = tmp_path / "clip"
    write_frames(clip, render_demo_clip(6, 60, 80, seed=2)[0])
    rows = {}
    for backend in ("torch", "onnxruntime"):
        out = tmp_path / backend
        polyp_bundle.workflow(
            "inference.json", "infer", bundle_root=str(trained), frames_dir=str(clip),
            video_output_dir=str(out), video_backend=backend, video_write=False, **LOW,
        )  # fmt: skip
        with (out / "detections.csv").open() as f:
            rows[backend] = [line.split(",") for line in f.read().splitlines()[1:]]
    assert len(rows["torch"]) == len(rows["onnxruntime"]) > 0
    for want, got in zip(rows["torch"], rows["onnxruntime"], strict=True):
        assert want[0] == got[0]  # the frame
        if want[2]:  # a box (a frame without one has blank fields)
            np.testing.assert_allclose([float(v) for v in got[2:7]], [float(v) for v in want[2:7]], atol=2e-3)
    with pytest.raises(Exception) as excinfo:
        polyp_bundle.workflow(
            "inference.json", "infer", bundle_root=str(trained), frames_dir=str(clip),
            video_backend="onnxruntime", video_network="teacher",
        )  # fmt: skip
    error: BaseException = excinfo.value
    while error.__cause__ is not None:
        error = error.__cause__
    assert "video_network" in str(error)
