"""Polyp video inference: frame geometry (boxes in the frame's own x/y pixels), equality with the bundle's image
pipeline, streaming I/O, the temporal filter and ``inference.json --video / --frames_dir`` on a generated clip."""

from __future__ import annotations

import csv
import json
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from monai_kdml.apps.polyp import (
    RetinaNetHeadEnsemble,
    RetinaNetInferer,
    box_to_original,
    get_preset,
    polyp_inference_transforms,
    preset_to_dict,
)
from monai_kdml.apps.polyp.demo_clip import main as demo_clip_main
from monai_kdml.apps.polyp.demo_clip import render_demo_clip, write_clip, write_frames
from monai_kdml.apps.polyp.frame_detector import (
    FrameDetector,
    TorchFrameDetector,
    build_frame_detector,
    frames_to_input,
)
from monai_kdml.apps.polyp.temporal import BoxCounts, TemporalFilter, box_counts
from monai_kdml.apps.polyp.video_io import BackgroundIterator, FrameFolder, VideoFile, VideoWriter, open_frames
from monai_kdml.bundle import write_record

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")
av = pytest.importorskip("av")
TINY = get_preset("tiny")


class SpotNet(nn.Module):
    """A RetinaNet-shaped test network that fires (logit +20) on every anchor whose cell is >= 90 % bright.

    Box deltas are 0, so each detection is an anchor centred on a bright cell: the boxes must land on the bright
    square of the frame, in the frame's own (x, y) pixels.
    """

    spatial_dims, num_classes, num_anchors, size_divisible = 2, 1, TINY.spec.num_anchors, TINY.spec.size_divisible
    cls_key, box_reg_key = "classification", "box_regression"

    def forward(self, images: Tensor) -> dict[str, list[Tensor]]:
        cls, box = [], []
        for stride in TINY.spec.strides:
            bright = F.avg_pool2d(images[:, :1], stride)
            cls.append((40 * (bright - 0.9)).repeat(1, self.num_anchors, 1, 1))
            box.append(torch.zeros(bright.shape[0], 4 * self.num_anchors, *bright.shape[2:]))
        return {self.cls_key: cls, self.box_reg_key: box}


def _tiny_ensemble(seed: int = 0) -> RetinaNetHeadEnsemble:
    torch.manual_seed(seed)
    return RetinaNetHeadEnsemble(TINY.build_students(2)).eval()


def test_frames_to_input_puts_pixel_x_y_on_monai_axes_and_pads_the_end() -> None:
    frame = np.zeros((1, 40, 80, 3), dtype=np.uint8)  # H=40, W=80
    frame[0, 10:15, 60:65] = 255  # x in [60, 65), y in [10, 15)
    x = frames_to_input(frame, 64)  # scale 0.8: W -> 64, H -> 32
    assert x.shape == (1, 3, 64, 64) and float(x.max()) == 1.0
    xs, ys = torch.nonzero(x[0, 0] > 0.5, as_tuple=True)
    assert (int(xs.min()), int(xs.max()), int(ys.min()), int(ys.max())) == (48, 51, 8, 11)
    assert float(x[0, :, :, 32:].abs().max()) == 0.0  # the padding is along y (the short side), at the end


def test_boxes_come_out_in_the_frames_own_x_y_pixels() -> None:
    frame = np.zeros((2, 40, 80, 3), dtype=np.uint8)  # not square: a swap of x and y cannot go unnoticed
    frame[0, 8:24, 40:60] = 255  # the polyp: x in [40, 60), y in [8, 24)
    frame[1, 16:32, 10:26] = 255
    detector = TorchFrameDetector(SpotNet(), RetinaNetInferer(TINY.spec.anchor_generator()), image_size=64)
    assert isinstance(detector, FrameDetector)
    results = detector(frame)
    for result, (x0, y0, x1, y1) in zip(results, [(40, 8, 60, 24), (10, 16, 26, 32)], strict=True):
        assert result["boxes"].dtype == np.float32 and result["labels"].dtype == np.int64
        confident = result["boxes"][result["scores"] > 0.5]
        assert len(confident) >= 1
        cx, cy = confident[:, [0, 2]].mean(1), confident[:, [1, 3]].mean(1)
        tol = 4 / 0.8  # one finest stride of the network input, in frame pixels
        assert np.all((x0 - tol <= cx) & (cx <= x1 + tol)) and np.all((y0 - tol <= cy) & (cy <= y1 + tol))
        assert np.all(confident >= 0) and np.all(confident[:, [0, 2]] <= 80) and np.all(confident[:, [1, 3]] <= 40)


def test_frame_detector_equals_the_bundles_image_pipeline(tmp_path: Path) -> None:
    frames, _ = render_demo_clip(2, 48, 80, seed=2)
    network, inferer = _tiny_ensemble(), RetinaNetInferer(TINY.spec.anchor_generator(), score_thresh=0.0)
    results = TorchFrameDetector(network, inferer, image_size=64)(frames)
    for rgb, result in zip(frames, results, strict=True):
        Image.fromarray(rgb).save(tmp_path / "frame.png")
        sample = polyp_inference_transforms(64)({"image": str(tmp_path / "frame.png")})["image"]
        expected = inferer(sample[None], network)[0]
        boxes = box_to_original(expected["box"], sample.affine, sample.meta["spatial_shape"])
        assert len(result["boxes"]) == len(boxes) > 0
        np.testing.assert_allclose(result["boxes"], boxes.numpy(), atol=1e-3)
        np.testing.assert_allclose(result["scores"], expected["label_scores"].numpy(), atol=1e-5)


def test_background_iterator_reads_a_bounded_number_ahead_and_raises_the_readers_error() -> None:
    produced = []

    def frames():
        for i in range(50):
            produced.append(i)
            yield i
        raise OSError("disk gone")

    reader = BackgroundIterator(frames(), maxsize=3)
    it = iter(reader)
    assert next(it) == 0
    time.sleep(0.3)
    assert len(produced) <= 1 + 3 + 1  # consumed, queued, one blocked in put
    with pytest.raises(OSError, match="disk gone"):
        list(it)
    assert not any(t.name == "frame-reader" and t.is_alive() for t in threading.enumerate())


def test_temporal_filter_keeps_persistent_boxes_and_drops_flicker() -> None:
    polyp = np.array([[10, 10, 30, 30]], dtype=np.float32)
    flicker = np.array([[50, 50, 60, 60]], dtype=np.float32)
    frames = [np.concatenate([polyp + t, flicker]) if t == 3 else polyp + t for t in range(6)]
    filt = TemporalFilter(k=3, n=5, iou=0.3)
    kept = [filt({"boxes": b, "scores": np.ones(len(b)), "labels": np.zeros(len(b), int)})["boxes"] for b in frames]
    assert [len(b) for b in kept] == [0, 0, 1, 1, 1, 1]  # the polyp from its 3rd frame on; the flicker never
    np.testing.assert_array_equal(kept[3], polyp + 3)
    truths = [polyp + t for t in range(6)]
    counts = box_counts([{"boxes": b, "scores": np.ones(len(b))} for b in kept], truths)
    assert counts == BoxCounts(tp=4, fp=0, fn=2) and counts.recall == pytest.approx(4 / 6)
    raw = box_counts([{"boxes": b, "scores": np.ones(len(b))} for b in frames], truths)
    assert raw == BoxCounts(tp=6, fp=1, fn=0) and raw.precision == pytest.approx(6 / 7)
    with pytest.raises(ValueError, match="temporal_k"):
        TemporalFilter(k=6, n=5)


def test_demo_clip_command_writes_the_clip_and_its_true_boxes(tmp_path: Path) -> None:
    demo_clip_main([str(tmp_path / "c.mp4"), "--frames", "6", "--height", "48", "--width", "64", "--seed", "2"])
    _, boxes = render_demo_clip(6, 48, 64, seed=2)
    rows = _read_csv(tmp_path / "c_boxes.csv")
    assert [[int(r["frame"]), *(float(r[k]) for k in ("x1", "y1", "x2", "y2"))] for r in rows] == [
        [i, *b] for i, frame_boxes in enumerate(boxes) for b in frame_boxes.tolist()
    ]
    assert len(list(VideoFile(tmp_path / "c.mp4"))) == 6


def test_demo_clip_boxes_follow_the_camera() -> None:
    frames, boxes = render_demo_clip(30, 64, 80, seed=0)
    again, _ = render_demo_clip(30, 64, 80, seed=0)
    np.testing.assert_array_equal(frames, again)
    assert frames.shape == (30, 64, 80, 3) and sum(len(b) for b in boxes) > 0
    for b in boxes:
        assert np.all(b[:, :2] >= 0) and np.all(b[:, 2] <= 80) and np.all(b[:, 3] <= 64)
        assert np.all(b[:, 2:] > b[:, :2])


def test_sources_read_video_files_and_frame_folders_in_natural_order(tmp_path: Path) -> None:
    frames, _ = render_demo_clip(12, 48, 64, seed=1)
    folder = write_frames(tmp_path / "frames", frames)  # frame_0 ... frame_11: name order would put 10 before 2
    read = list(FrameFolder(folder, fps=10))
    assert [f.index for f in read] == list(range(12)) and read[2].time == pytest.approx(0.2)
    np.testing.assert_array_equal(np.stack([f.rgb for f in read]), frames)
    video = VideoFile(write_clip(tmp_path / "clip.mp4", frames, fps=10))
    decoded = list(video)
    assert (video.fps, video.width, video.height, len(decoded)) == (10.0, 64, 48, 12)
    assert decoded[5].time == pytest.approx(0.5) and decoded[5].rgb.shape == (48, 64, 3)
    assert np.abs(decoded[5].rgb.astype(int) - frames[5]).mean() < 8  # lossy, but the same picture
    with pytest.raises(ValueError, match="not both"):
        open_frames(tmp_path / "clip.mp4", folder)
    (tmp_path / "junk.mp4").write_bytes(b"no video here")
    with pytest.raises(ValueError, match=r"junk\.mp4 cannot be read as a video"):
        VideoFile(tmp_path / "junk.mp4")


@pytest.fixture(scope="module")
def tiny_bundle(module_tmp) -> Path:
    """A bundle_root holding untrained tiny networks as if trained (model.pt, best_networks.pt, network.json) and a
    generated 12-frame clip as a video file and as a folder of frames."""
    root = module_tmp("video_bundle")
    ensemble = _tiny_ensemble()
    torch.manual_seed(1)
    teacher = TINY.build_teacher()
    (root / "models").mkdir()
    torch.save(ensemble.state_dict(), root / "models" / "model.pt")
    torch.save(
        {"teacher": teacher.state_dict(), "students": ensemble.networks.state_dict()}, root / "models/best_networks.pt"
    )
    record = {"bundle": "polyp", "preset": "tiny", "detector": preset_to_dict(TINY), "num_students": 2}
    write_record(root / "models", {**record, "image_size": 64, "classes": ["polyp"]})
    frames, _ = render_demo_clip(12, 48, 64, seed=3)
    np.save(root / "frames.npy", frames)
    write_clip(root / "clip.mp4", frames, fps=10)
    write_frames(root / "frames", frames)
    return root


def _root_cause(error: BaseException) -> BaseException:
    while error.__cause__ is not None:
        error = error.__cause__
    return error


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_video_command_writes_an_annotated_video_a_csv_and_frame_rates(polyp_bundle, tiny_bundle: Path) -> None:
    out = tiny_bundle / "out_video"
    polyp_bundle.workflow(
        "inference.json", "infer", bundle_root=str(tiny_bundle), video=str(tiny_bundle / "clip.mp4"),
        video_output_dir=str(out), output_score_thresh=0.0, score_thresh=0.0, detections_per_img=3,
    )  # fmt: skip
    rows = _read_csv(out / "detections.csv")
    assert sorted({int(r["frame"]) for r in rows}) == list(range(12)) and len(rows) == 36  # 3 boxes a frame
    assert {r["label"] for r in rows} == {"polyp"} and float(rows[-1]["time_s"]) == pytest.approx(1.1)
    boxes = np.array([[float(r[k]) for k in ("x1", "y1", "x2", "y2")] for r in rows])
    assert np.all(boxes >= 0) and np.all(boxes[:, [0, 2]] <= 64) and np.all(boxes[:, [1, 3]] <= 48)
    with av.open(str(out / "annotated.mp4")) as container:
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(decoded) == 12 and decoded[0].shape == (48, 64, 3)
    summary = json.loads((out / "video_summary.json").read_text())
    assert summary["frames"] == 12 and summary["boxes"] == 36 and summary["network"] == "ensemble"
    assert summary["fps"] > 0 and summary["model_fps"] >= summary["fps"]
    assert summary["model_cpu_seconds"] > 0 and summary["cpu_seconds"] > 0


def test_frames_dir_run_gives_the_detectors_boxes_and_the_teacher_runs_too(polyp_bundle, tiny_bundle: Path) -> None:
    out = tiny_bundle / "out_frames"
    common = {"bundle_root": str(tiny_bundle), "frames_dir": str(tiny_bundle / "frames"), "frames_fps": 5.0}
    polyp_bundle.workflow(
        "inference.json", "infer", **common, video_output_dir=str(out), output_score_thresh=0.0, score_thresh=0.0,
        detections_per_img=2, video_write=False,
    )  # fmt: skip
    expected = TorchFrameDetector(
        _tiny_ensemble(), RetinaNetInferer(TINY.spec.anchor_generator(), score_thresh=0.0, detections_per_img=2), 64
    )(np.load(tiny_bundle / "frames.npy"))
    rows = _read_csv(out / "detections.csv")
    assert not (out / "annotated.mp4").exists() and float(rows[2]["time_s"]) == pytest.approx(0.2)
    got = np.array([[float(r[k]) for k in ("x1", "y1", "x2", "y2")] for r in rows])
    np.testing.assert_allclose(got, np.concatenate([e["boxes"] for e in expected]), atol=0.01)
    teacher_out = tiny_bundle / "out_teacher"
    polyp_bundle.workflow(
        "inference.json", "infer", **common, video_output_dir=str(teacher_out), video_network="teacher"
    )
    assert json.loads((teacher_out / "video_summary.json").read_text())["network"] == "teacher"
    with pytest.raises(Exception) as excinfo:
        polyp_bundle.workflow("inference.json", "infer", **common, video_network="student")
    assert "`video_network`" in str(_root_cause(excinfo.value)) and "teacher" in str(_root_cause(excinfo.value))


def test_temporal_filter_option_removes_boxes_that_do_not_persist(polyp_bundle, tiny_bundle: Path) -> None:
    common = {"bundle_root": str(tiny_bundle), "frames_dir": str(tiny_bundle / "frames"), "video_write": False}
    counts = {}
    for k in (1, 12):
        out = tiny_bundle / f"out_k{k}"
        polyp_bundle.workflow(
            "inference.json", "infer", **common, video_output_dir=str(out), output_score_thresh=0.0,
            score_thresh=0.0, temporal_k=k, temporal_n=12,
        )  # fmt: skip
        counts[k] = json.loads((out / "video_summary.json").read_text())["boxes"]
    assert counts[1] > 0 and counts[12] < counts[1]  # a box needs all 12 frames: only the last frame can pass


def test_operating_score_drops_candidates_early_and_keeps_the_same_boxes(tiny_bundle: Path) -> None:
    frames = np.load(tiny_bundle / "frames.npy")[:3]
    inferer = RetinaNetInferer(TINY.spec.anchor_generator(), score_thresh=0.0)
    every = TorchFrameDetector(_tiny_ensemble(), inferer, 64)(frames)
    operating = float(np.quantile(np.concatenate([d["scores"] for d in every]), 0.9))
    fast = build_frame_detector(
        "torch", "ensemble", _tiny_ensemble(5), TINY, tiny_bundle / "models", inferer, 64, operating_score=operating
    )
    assert fast.inferer.score_thresh == operating and inferer.score_thresh == 0.0  # the bundle's inferer unchanged
    for full, cut in zip(every, fast(frames), strict=True):
        above = full["scores"] > operating
        assert 0 < above.sum() < len(above)
        np.testing.assert_allclose(cut["boxes"], full["boxes"][above], atol=1e-4)
        np.testing.assert_allclose(cut["scores"], full["scores"][above], atol=1e-6)
    with pytest.raises(ValueError, match="video_backend"):
        build_frame_detector("tensorrt", "ensemble", _tiny_ensemble(), TINY, tiny_bundle / "models", inferer, 64)


def test_odd_sized_frames_are_encoded_and_a_missing_pyav_is_named(tmp_path: Path, monkeypatch) -> None:
    frames, _ = render_demo_clip(3, 47, 63, seed=4)  # yuv420p needs even sizes: one black row and column added
    writer = VideoWriter(tmp_path / "odd.mp4", fps=5)
    empty = {"boxes": np.zeros((0, 4), np.float32), "scores": np.zeros(0, np.float32), "labels": np.zeros(0, int)}
    for rgb in frames:
        writer.write(rgb, empty)
    writer.close()
    decoded = list(VideoFile(tmp_path / "odd.mp4"))
    assert len(decoded) == 3 and decoded[0].rgb.shape == (48, 64, 3)
    monkeypatch.setitem(sys.modules, "av", None)
    with pytest.raises(ImportError, match=r"monai-kdml\[video\]"):
        VideoFile(tmp_path / "odd.mp4")


@pytest.mark.slow
def test_the_documented_video_command_runs(polyp_bundle, tiny_bundle: Path) -> None:
    out = tiny_bundle / "out_cli"
    args = ["--bundle_root", str(tiny_bundle), "--video", str(tiny_bundle / "clip.mp4"), "--video_output_dir", str(out)]
    result = polyp_bundle.cli(*args, config="inference.json")
    assert "frames/s end to end" in result.stdout + result.stderr
    assert len({r["frame"] for r in _read_csv(out / "detections.csv")}) == 12
