"""Frames in and out of polyp video inference: a video file (PyAV) or a folder of frames in, an annotated video and a
per-frame CSV of boxes out, and a bounded background queue so the network never waits on decoding or encoding.

Everything streams: a source yields one :class:`Frame` at a time, the sinks write one at a time, and the queues
between them hold at most a few batches, so memory stays flat however long the video is.
"""

from __future__ import annotations

import contextlib
import csv
import queue
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np
from PIL import Image

from monai_kdml.apps.polyp.drawing import draw_boxes
from monai_kdml.data.images import is_image_file

__all__ = [
    "CSV_COLUMNS",
    "BackgroundIterator",
    "BackgroundWorker",
    "DetectionCsvWriter",
    "Frame",
    "FrameFolder",
    "VideoFile",
    "VideoWriter",
    "import_pyav",
    "open_frames",
]

T = TypeVar("T")
CSV_COLUMNS = ("frame", "time_s", "x1", "y1", "x2", "y2", "score", "label")
"""Header of the per-frame detections CSV; a frame without boxes has one row with blank box fields."""


@dataclass(frozen=True)
class Frame:
    """One decoded frame: its 0-based ``index``, its ``time`` in seconds from the start and ``rgb`` ``(H, W, 3)``."""

    index: int
    time: float
    rgb: np.ndarray


def import_pyav() -> Any:
    """The ``av`` module (PyAV), or an ``ImportError`` saying how to install it."""
    try:
        import av
    except ImportError as err:
        raise ImportError(f"video input and output need PyAV: pip install 'monai-kdml[video]' ({err})") from None
    return av


def _natural_key(path: Path) -> list[Any]:
    """Sort key ordering ``frame_2`` before ``frame_10``."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.name)]


class VideoFile:
    """Frames of a video file decoded with PyAV (FFmpeg in a wheel), as RGB, one at a time.

    Args:
        path: a video file FFmpeg reads (mp4, avi, mkv, ...).

    Attributes:
        fps: the stream's average frame rate (25 when the file does not say).
        width, height: the frame size.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not a video FFmpeg can open, naming it.
    """

    def __init__(self, path: str | Path) -> None:
        av = import_pyav()
        self.path = Path(path).expanduser()
        if not self.path.is_file():
            raise FileNotFoundError(f"`video`: {self.path} does not exist or is not a file.")
        try:
            with av.open(str(self.path)) as container:
                if not container.streams.video:
                    raise ValueError("it has no video stream")
                stream = container.streams.video[0]
                rate = stream.average_rate or stream.guessed_rate
                self.fps = float(rate) if rate else 25.0
                self.width, self.height = int(stream.codec_context.width), int(stream.codec_context.height)
        except (av.FFmpegError, ValueError) as err:
            raise ValueError(f"`video`: {self.path} cannot be read as a video ({err}).") from None

    def __iter__(self) -> Iterator[Frame]:
        av = import_pyav()
        with av.open(str(self.path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"  # FFmpeg's own frame/slice threads
            for index, frame in enumerate(container.decode(stream)):
                time = frame.time if frame.time is not None else index / self.fps
                yield Frame(index, float(time), frame.to_ndarray(format="rgb24"))


class FrameFolder:
    """The image files of a folder as the frames of one video, in natural name order (``2.png`` before ``10.png``).

    Args:
        folder: a folder of frames of one size (any format Pillow reads).
        fps: the frame rate the frames were taken at; sets each frame's ``time`` (``index / fps``) and the output
            video's rate.

    Raises:
        FileNotFoundError: the folder is missing or holds no image file.
        ValueError: ``fps`` is not positive; while iterating, a frame of another size than the first (named).
    """

    def __init__(self, folder: str | Path, fps: float = 25.0) -> None:
        self.folder = Path(folder).expanduser()
        if not self.folder.is_dir():
            raise FileNotFoundError(f"`frames_dir`: {self.folder} does not exist or is not a folder.")
        self.paths = sorted((p for p in self.folder.iterdir() if p.is_file() and is_image_file(p)), key=_natural_key)
        if not self.paths:
            raise FileNotFoundError(f"`frames_dir`: {self.folder} holds no image file.")
        if not fps > 0:
            raise ValueError(f"`frames_fps` must be > 0, got {fps!r}.")
        self.fps = float(fps)
        with Image.open(self.paths[0]) as first:
            self.width, self.height = first.size

    def __iter__(self) -> Iterator[Frame]:
        for index, path in enumerate(self.paths):
            with Image.open(path) as img:
                rgb = np.asarray(img.convert("RGB"))
            if rgb.shape[:2] != (self.height, self.width):
                raise ValueError(
                    f"`frames_dir`: {path} is {rgb.shape[1]}x{rgb.shape[0]} px, the first frame "
                    f"{self.width}x{self.height} px; the frames of one video must share a size."
                )
            yield Frame(index, index / self.fps, rgb)


def open_frames(
    video: str | Path | None, frames_dir: str | Path | None, fps: float = 25.0
) -> VideoFile | FrameFolder | None:
    """The frame source the bundle's ``--video`` or ``--frames_dir`` names; ``None`` when neither is given.

    Raises:
        ValueError: both are given.
    """
    if video and frames_dir:
        raise ValueError(f"give `video` or `frames_dir`, not both (got {video!r} and {frames_dir!r}).")
    if video:
        return VideoFile(video)
    return FrameFolder(frames_dir, fps) if frames_dir else None


_DONE = object()


class BackgroundIterator(Generic[T]):
    """Runs ``iterable`` in a daemon thread, ``maxsize`` items ahead of the consumer (a bounded queue).

    Decoding (PyAV and Pillow release the GIL) overlaps with the network this way, and memory is bounded by
    ``maxsize`` items. An exception in the thread is raised again in the consumer.

    Args:
        iterable: what to read ahead.
        maxsize: items held at most (>= 1).
    """

    def __init__(self, iterable: Iterable[T], maxsize: int = 4) -> None:
        if maxsize < 1:
            raise ValueError(f"`maxsize` must be >= 1, got {maxsize}.")
        self._queue: queue.Queue[Any] = queue.Queue(maxsize)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._fill, args=(iterable,), daemon=True, name="frame-reader")
        self._thread.start()

    def _fill(self, iterable: Iterable[T]) -> None:
        try:
            for item in iterable:
                while not self._stop.is_set():
                    try:
                        self._queue.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if self._stop.is_set():
                    return
        except BaseException as err:  # handed to the consumer
            self._queue.put(err)
            return
        self._queue.put(_DONE)

    def __iter__(self) -> Iterator[T]:
        try:
            while True:
                item = self._queue.get()
                if item is _DONE:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self.close()

    def close(self) -> None:
        """Stop the reader (it finishes its current item) and wait for it."""
        self._stop.set()
        while self._thread.is_alive():
            with contextlib.suppress(queue.Empty):  # unblock a reader waiting on a full queue
                self._queue.get(timeout=0.05)
        self._thread.join()


class BackgroundWorker:
    """Calls ``consume(item)`` for each :meth:`put` item in a daemon thread; at most ``maxsize`` items wait.

    :meth:`close` waits for the queue to drain and raises the first error the worker met (later items are dropped).
    """

    def __init__(self, consume: Callable[[Any], None], maxsize: int = 4) -> None:
        self._consume = consume
        self._queue: queue.Queue[Any] = queue.Queue(maxsize)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._drain, daemon=True, name="frame-writer")
        self._thread.start()

    def _drain(self) -> None:
        while (item := self._queue.get()) is not _DONE:
            if self._error is None:
                try:
                    self._consume(item)
                except BaseException as err:  # raised by close()
                    self._error = err

    def put(self, item: Any) -> None:
        """Queue ``item`` (blocks while ``maxsize`` items wait); raises at once if the worker has failed."""
        if self._error is not None:
            raise self._error
        self._queue.put(item)

    def close(self) -> None:
        """Wait until every queued item is consumed; raise the worker's error, if any."""
        self._queue.put(_DONE)
        self._thread.join()
        if self._error is not None:
            raise self._error


class VideoWriter:
    """Frames with their boxes and scores drawn (:func:`~monai_kdml.apps.polyp.drawing.draw_boxes`), encoded with
    PyAV, one frame at a time.

    Args:
        path: output file; its suffix picks the container (``.mp4``).
        fps: frame rate of the output.
        codec: FFmpeg encoder (``libx264`` ships in PyAV's wheels; ``mpeg4`` is another choice).
        crf: constant rate factor of ``libx264`` (lower: better quality, larger file).

    Frames of odd width or height get one black column or row (yuv420p needs even sizes).
    """

    def __init__(self, path: str | Path, fps: float, codec: str = "libx264", crf: int = 23) -> None:
        self.path, self.fps, self.codec, self.crf = Path(path), float(fps), codec, crf
        self._container: Any = None
        self._stream: Any = None

    def _open(self, width: int, height: int) -> None:
        av = import_pyav()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._container = av.open(str(self.path), mode="w")
        options = {"crf": str(self.crf), "preset": "veryfast"} if self.codec == "libx264" else {}
        rate = Fraction(self.fps).limit_denominator(1001)
        self._stream = self._container.add_stream(self.codec, rate=rate, options=options)
        self._stream.width, self._stream.height = width + width % 2, height + height % 2
        self._stream.pix_fmt = "yuv420p"

    def write(self, rgb: np.ndarray, detection: Mapping[str, np.ndarray]) -> None:
        """Draw ``detection``'s boxes and scores on a copy of ``rgb`` ``(H, W, 3)`` and encode it."""
        av = import_pyav()
        if self._container is None:
            self._open(rgb.shape[1], rgb.shape[0])
        image = Image.fromarray(rgb)
        draw_boxes(image, detection["boxes"], detection["scores"])
        out = np.asarray(image)
        if out.shape[0] % 2 or out.shape[1] % 2:
            out = np.pad(out, ((0, out.shape[0] % 2), (0, out.shape[1] % 2), (0, 0)))
        for packet in self._stream.encode(av.VideoFrame.from_ndarray(out, format="rgb24")):
            self._container.mux(packet)

    def close(self) -> None:
        """Flush the encoder and close the file (no file when no frame was written)."""
        if self._container is not None:
            for packet in self._stream.encode():
                self._container.mux(packet)
            self._container.close()
            self._container = None


class DetectionCsvWriter:
    """Per-frame boxes and scores as CSV rows (:data:`CSV_COLUMNS`), in the frame's pixels, streamed to ``path``.

    Args:
        path: output CSV file.
        classes: class names by label index (the ``label`` column); an index without a name is written as a number.
    """

    def __init__(self, path: str | Path, classes: list[str] | tuple[str, ...] = ("polyp",)) -> None:
        self.path, self.classes = Path(path), list(classes)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("w", newline="")
        self._writer = csv.writer(self._file)
        self._writer.writerow(CSV_COLUMNS)

    def write(self, frame: Frame, detection: Mapping[str, np.ndarray]) -> None:
        """Rows of one frame: one per box, or one with blank box fields when it has none."""
        time = f"{frame.time:.4f}"
        if len(detection["boxes"]) == 0:
            self._writer.writerow([frame.index, time, "", "", "", "", "", ""])
        for box, score, label in zip(detection["boxes"], detection["scores"], detection["labels"], strict=True):
            name = self.classes[int(label)] if 0 <= int(label) < len(self.classes) else int(label)
            self._writer.writerow([frame.index, time, *(f"{v:.2f}" for v in box), f"{score:.4f}", name])

    def close(self) -> None:
        """Close the file."""
        self._file.close()
