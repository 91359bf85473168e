"""Polyp detection on a video or a folder of frames: annotated video, per-frame CSV and measured frame rates.

``python -m monai.bundle run --config_file bundles/polyp/inference.json --video clip.mp4`` (or ``--frames_dir``)
runs :class:`VideoInference`: a reader thread decodes frames into a bounded queue, the main thread batches them
through a :class:`~monai_kdml.apps.polyp.frame_detector.FrameDetector`, cuts at the operating score, optionally
applies a :class:`~monai_kdml.apps.polyp.temporal.TemporalFilter`, and a writer thread draws and encodes the
annotated video and writes the CSV. Nothing holds more than a few batches, so a video of any length streams.

Two rates are reported: **end to end** (frames / wall time from opening the source to closing the outputs) and the
**model alone** (frames / time inside the detector: resizing, network, decoding and NMS; no decoding of the video,
drawing or encoding).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from monai_kdml.apps.polyp.frame_detector import FrameDetector
from monai_kdml.apps.polyp.temporal import TemporalFilter
from monai_kdml.apps.polyp.video_io import (
    BackgroundIterator,
    BackgroundWorker,
    DetectionCsvWriter,
    Frame,
    FrameFolder,
    VideoFile,
    VideoWriter,
)

__all__ = ["VideoInference", "VideoReport", "batched", "temporal_filter"]

logger = logging.getLogger(__name__)


def batched(frames: Iterable[Frame], batch_size: int) -> Iterator[list[Frame]]:
    """Consecutive frames in lists of ``batch_size`` (the last may be shorter)."""
    batch: list[Frame] = []
    for frame in frames:
        batch.append(frame)
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def temporal_filter(k: int, n: int, iou: float) -> TemporalFilter | None:
    """The bundle's temporal filter: ``None`` when ``k <= 1`` (off), else :class:`TemporalFilter` ``(k, n, iou)``."""
    return TemporalFilter(k, n, iou) if k > 1 else None


@dataclass(frozen=True)
class VideoReport:
    """What a video run did and how fast.

    Attributes:
        network: which network ran (e.g. ``"ensemble"``).
        frames: frames processed.
        boxes: boxes written (after the score cut and the temporal filter).
        seconds: wall time end to end (opening the source to closing the outputs).
        model_seconds: wall time inside the detector.
        cpu_seconds: CPU time of the process end to end (all threads; on a shared machine the steadier clock).
        model_cpu_seconds: CPU time of the calling thread inside the detector (all of the model's CPU time when
            torch runs one intra-op thread; a part of it with more).
        outputs: label -> file written.
    """

    network: str
    frames: int
    boxes: int
    seconds: float
    model_seconds: float
    cpu_seconds: float = 0.0
    model_cpu_seconds: float = 0.0
    outputs: dict[str, str] = field(default_factory=dict)

    @property
    def fps(self) -> float:
        """Frames per second end to end."""
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    @property
    def model_fps(self) -> float:
        """Frames per second of the detector alone."""
        return self.frames / self.model_seconds if self.model_seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, with both rates."""
        return {**asdict(self), "fps": round(self.fps, 2), "model_fps": round(self.model_fps, 2)}


class VideoInference:
    """Run a frame detector over a video's frames and write an annotated video and a CSV of boxes (module doc).

    Args:
        source: the frames (:class:`~monai_kdml.apps.polyp.video_io.VideoFile` or ``FrameFolder``).
        detector: any :class:`~monai_kdml.apps.polyp.frame_detector.FrameDetector`.
        output_dir: folder for ``detections.csv``, ``annotated.mp4`` and ``video_summary.json`` (created; only
            these files are written or overwritten).
        classes: class names by label (CSV ``label`` column).
        score_thresh: operating point; boxes scoring lower are dropped before the temporal filter.
        batch_size: frames per detector call.
        temporal: optional filter applied frame by frame (see :func:`temporal_filter`).
        write_video: also write the annotated video (``False``: the CSV only).
        codec: FFmpeg encoder of the annotated video.
        queue_size: batches decoded ahead, and frames waiting to be written, at most (bounds the memory).
        network: name of the network in the report and the log.
    """

    def __init__(
        self,
        source: VideoFile | FrameFolder,
        detector: FrameDetector,
        output_dir: str | Path,
        classes: Sequence[str] = ("polyp",),
        score_thresh: float = 0.5,
        batch_size: int = 4,
        temporal: TemporalFilter | None = None,
        write_video: bool = True,
        codec: str = "libx264",
        queue_size: int = 4,
        network: str = "ensemble",
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"`video_batch_size` must be an int >= 1, got {batch_size!r}.")
        if not 0.0 <= score_thresh <= 1.0:
            raise ValueError(f"`output_score_thresh` must be in [0, 1], got {score_thresh!r}.")
        if not isinstance(queue_size, int) or queue_size < 1:
            raise ValueError(f"`video_queue_size` must be an int >= 1, got {queue_size!r}.")
        self.source, self.detector, self.output_dir = source, detector, Path(output_dir)
        self.classes, self.score_thresh, self.batch_size = list(classes), float(score_thresh), batch_size
        self.temporal, self.write_video, self.codec = temporal, bool(write_video), codec
        self.queue_size, self.network = queue_size, network

    @property
    def outputs(self) -> dict[str, Path]:
        """label -> the files a run writes."""
        files = {"boxes and scores of every frame": self.output_dir / "detections.csv"}
        if self.write_video:
            files["annotated video"] = self.output_dir / "annotated.mp4"
        files["frame rates"] = self.output_dir / "video_summary.json"
        return files

    def _cut(self, detection: Mapping[str, Any]) -> dict[str, np.ndarray]:
        keep = np.asarray(detection["scores"]) >= self.score_thresh
        return {key: np.asarray(detection[key])[keep] for key in ("boxes", "scores", "labels")}

    def run(self) -> VideoReport:
        """Process every frame; log and return the :class:`VideoReport` (also written as ``video_summary.json``)."""
        start, cpu_start = time.perf_counter(), time.process_time()
        csv_writer = DetectionCsvWriter(self.output_dir / "detections.csv", self.classes)
        video_writer = VideoWriter(self.output_dir / "annotated.mp4", self.source.fps, self.codec)

        def write(item: tuple[Frame, dict[str, np.ndarray]]) -> None:
            frame, detection = item
            csv_writer.write(frame, detection)
            if self.write_video:
                video_writer.write(frame.rgb, detection)

        if self.temporal is not None:
            self.temporal.reset()
        sink = BackgroundWorker(write, maxsize=self.queue_size * self.batch_size)
        reader = BackgroundIterator(batched(self.source, self.batch_size), maxsize=self.queue_size)
        frames = boxes = 0
        model_seconds = model_cpu_seconds = 0.0
        try:
            for batch in reader:
                pixels = np.stack([frame.rgb for frame in batch])
                tic, cpu_tic = time.perf_counter(), time.thread_time()
                detections = self.detector(pixels)
                model_seconds += time.perf_counter() - tic
                model_cpu_seconds += time.thread_time() - cpu_tic
                for frame, detection in zip(batch, detections, strict=True):
                    kept = self._cut(detection)
                    if self.temporal is not None:
                        kept = self.temporal(kept)
                    boxes += len(kept["boxes"])
                    sink.put((frame, kept))
                frames += len(batch)
        finally:
            reader.close()
            try:
                sink.close()
            finally:
                csv_writer.close()
                video_writer.close()
        report = VideoReport(
            network=self.network,
            frames=frames,
            boxes=boxes,
            seconds=time.perf_counter() - start,
            model_seconds=model_seconds,
            cpu_seconds=time.process_time() - cpu_start,
            model_cpu_seconds=model_cpu_seconds,
            outputs={label: str(path) for label, path in self.outputs.items()},
        )
        self.outputs["frame rates"].write_text(json.dumps(report.as_dict(), indent=1))
        logger.info(
            "Video: %d frames of %s with the %s, %d boxes >= %.2f%s: %.1f frames/s end to end, %.1f frames/s for "
            "the model alone.\nOutputs:\n%s",
            frames,
            getattr(self.source, "path", getattr(self.source, "folder", "?")),
            self.network,
            boxes,
            self.score_thresh,
            "" if self.temporal is None else f" kept by the {self.temporal.k}-of-{self.temporal.n} filter",
            report.fps,
            report.model_fps,
            "\n".join(f"  {label:<34} {path}" for label, path in report.outputs.items()),
        )
        return report
