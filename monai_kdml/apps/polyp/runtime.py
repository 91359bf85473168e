"""Polyp detection on any RGB frame with ONNX Runtime and numpy: no torch and no MONAI at call time.

Per frame, as the inference bundle does: resize the longest side to ``S`` (area averaging, rounded to uint8), pad
right and bottom with zeros to ``S x S``, scale to [0, 1]; run :class:`~monai_kdml.apps.polyp.export.RetinaNetBoxes`
exported to ONNX (``pred (B, 4 + C, N)``: decoded boxes and sigmoid scores of every anchor); then, as MONAI's
``BoxSelector``: per pyramid level keep scores above ``score_thresh`` and the ``topk_candidates_per_level`` best,
clip the boxes to the ``S x S`` input and drop empty ones; class-wise NMS over all levels (IoU above ``nms_thresh``
suppressed, at most ``detections_per_img`` kept); finally scale the boxes back to the frame's own pixels and clip
them to it. Boxes are ``[x_min, y_min, x_max, y_max]`` with x along the frame's width: draw them directly on the
``(H, W, 3)`` array you passed in.

Example::

    detector = OnnxFrameDetector("models/detector.onnx")  # settings from the file's own metadata
    results = detector(frames)  # frames: (N, H, W, 3) uint8 RGB
    results[0]["boxes"], results[0]["scores"], results[0]["labels"]
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "DecoderSettings",
    "FrameDecoder",
    "OnnxFrameDetector",
    "batched_nms",
    "export_detector_onnx",
    "resize_pad_frame",
]

_EPS = np.finfo(np.float32).eps  # MONAI's box_iou adds it to the union


@dataclass(frozen=True)
class DecoderSettings:
    """How to read an exported detector's ``pred``: its input side, anchors per level, classes and selection.

    Args:
        image_size: side ``S`` of the square network input.
        level_sizes: anchors per pyramid level, finest first.
        classes: class names (label ``i`` is ``classes[i]``).
        score_thresh, nms_thresh, detections_per_img, topk_candidates_per_level: as MONAI's ``BoxSelector``.
    """

    image_size: int
    level_sizes: tuple[int, ...]
    classes: tuple[str, ...] = ("polyp",)
    score_thresh: float = 0.05
    nms_thresh: float = 0.5
    detections_per_img: int = 100
    topk_candidates_per_level: int = 1000

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> DecoderSettings:
        """From a JSON object (the ``kdml_decoder`` ONNX metadata); unknown keys are refused by name."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown decoder setting(s) {unknown}: expected some of {sorted(known)}.")
        data = dict(values)
        data["level_sizes"] = tuple(int(v) for v in data["level_sizes"])
        if "classes" in data:
            data["classes"] = tuple(str(c) for c in data["classes"])
        return cls(**data)


def _window_sums(planes: np.ndarray, size: int) -> np.ndarray:
    """Sums over torch's adaptive-average-pooling windows along the last (contiguous, so fast) axis, exact."""
    length = planes.shape[-1]
    index = np.arange(size)
    start = (index * length) // size
    end = -((-(index + 1) * length) // size)  # ceil((i + 1) * length / size)
    cumulative = np.cumsum(planes, axis=-1, dtype=np.int32)  # 255 * length fits easily
    return cumulative[..., end - 1] - cumulative[..., np.maximum(start - 1, 0)] * (start > 0)


def _window_lengths(length: int, size: int) -> np.ndarray:
    index = np.arange(size)
    return -((-(index + 1) * length) // size) - (index * length) // size


def resize_pad_frame(frame: np.ndarray, image_size: int) -> tuple[np.ndarray, tuple[float, float]]:
    """``(H, W, 3)`` uint8 -> ``(3, S, S)`` float32 in [0, 1] as the bundle's inference transforms make it.

    The longest side becomes ``S`` (``round(side * S / longest)``), each output pixel the mean of torch's
    ``interpolate(mode="area")`` window rounded half to even, and the frame is padded right and bottom with zeros.

    Returns:
        The network input and ``(sx, sy)``: frame pixels per input pixel along x (width) and y (height).
    """
    if frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB frame, got shape {frame.shape}")
    height, width = frame.shape[:2]
    scale = image_size / max(height, width)
    new_h, new_w = round(height * scale), round(width * scale)  # Python rounds half to even, as MONAI
    planes = np.ascontiguousarray(frame.transpose(2, 0, 1))  # (3, H, W): sum along W, then along H
    sums = _window_sums(np.ascontiguousarray(_window_sums(planes, new_w).transpose(0, 2, 1)), new_h)  # (3, w, h)
    counts = np.outer(_window_lengths(width, new_w), _window_lengths(height, new_h)).astype(np.float32)
    mean = (sums.astype(np.float32) / counts).round()
    out = np.zeros((3, image_size, image_size), np.float32)
    out[:, :new_h, :new_w] = mean.transpose(0, 2, 1) / np.float32(255.0)
    return out, (width / new_w, height / new_h)


def _iou(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    """IoU of one box with others, float32, as MONAI's ``box_iou``."""
    lt = np.maximum(box[:2], others[:, :2])
    rb = np.minimum(box[2:], others[:, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=1)
    area = np.prod(box[2:] - box[:2])
    areas = np.prod(others[:, 2:] - others[:, :2], axis=1)
    return inter / (area + areas - inter + _EPS)


def batched_nms(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, thresh: float, max_kept: int) -> np.ndarray:
    """Class-wise greedy NMS (MONAI's ``batched_nms``): indices kept, best score first.

    Boxes of different labels are moved apart by ``label * (max coordinate + 1)`` so they never overlap; a box is
    suppressed when its IoU with a kept one exceeds ``thresh``; ties keep the original order (a stable sort).
    """
    if len(boxes) == 0:
        return np.zeros((0,), np.int64)
    shifted = (boxes + (labels.astype(np.float32) * (boxes.max() + 1))[:, None]).astype(np.float32)
    order = np.argsort(-scores, kind="stable")
    kept: list[int] = []
    remaining = order
    while remaining.size:
        best = int(remaining[0])
        kept.append(best)
        if len(kept) >= max_kept >= 1:
            break
        overlap = _iou(shifted[best], shifted[remaining])
        keep = overlap <= thresh
        keep[0] = False
        remaining = remaining[keep]
    return np.asarray(kept, np.int64)


class FrameDecoder:
    """``pred (4 + C, N)`` of one input -> the boxes, scores and labels MONAI's ``RetinaNetDetector`` selects.

    Args:
        settings: the exported network's :class:`DecoderSettings`.
    """

    def __init__(self, settings: DecoderSettings) -> None:
        self.settings = settings
        self.bounds = np.cumsum([0, *settings.level_sizes])

    def __call__(self, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Boxes ``(n, 4)`` xyxy in the ``S x S`` input's pixels, scores ``(n,)``, labels ``(n,)`` int64."""
        s = self.settings
        if pred.shape[1] != self.bounds[-1]:
            raise ValueError(f"expected {self.bounds[-1]} anchors (levels {list(s.level_sizes)}), got {pred.shape[1]}")
        all_boxes, all_scores, all_labels = [], [], []
        for start, end in zip(self.bounds[:-1], self.bounds[1:], strict=True):
            scores = pred[4:, start:end].T.reshape(-1)  # anchor-major, as MONAI flattens (anchors, classes)
            candidates = np.nonzero(scores > s.score_thresh)[0]
            top = np.argsort(-scores[candidates], kind="stable")[: s.topk_candidates_per_level]
            flat = candidates[top]
            anchor, label = flat // (pred.shape[0] - 4), flat % (pred.shape[0] - 4)
            boxes = np.clip(pred[:4, start + anchor].T, 0, s.image_size)
            keep = (boxes[:, 2] >= boxes[:, 0] + 1) & (boxes[:, 3] >= boxes[:, 1] + 1)
            all_boxes.append(boxes[keep])
            all_scores.append(scores[flat][keep])
            all_labels.append(label[keep])
        boxes, scores, labels = (np.concatenate(v) for v in (all_boxes, all_scores, all_labels))
        kept = batched_nms(boxes, scores, labels, s.nms_thresh, s.detections_per_img)
        return boxes[kept].astype(np.float32), scores[kept].astype(np.float32), labels[kept].astype(np.int64)


def _session(path: str | Path, threads: int | None, providers: Sequence[str] | None) -> Any:
    """An ONNX Runtime session (this module imports only numpy and onnxruntime: copy it beside a model)."""
    try:
        import onnxruntime as ort
    except ImportError as error:
        raise ImportError('running an ONNX file needs onnxruntime: pip install "monai-kdml[deploy]"') from error
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads, options.inter_op_num_threads = int(threads), 1
    return ort.InferenceSession(str(path), options, providers=list(providers or ["CPUExecutionProvider"]))


class OnnxFrameDetector:
    """Detections on ``(N, H, W, 3)`` uint8 RGB frames of any size with an exported detector and ONNX Runtime.

    Args:
        onnx_path: a file written by :func:`export_detector_onnx` (or the bundle's ``export`` run).
        settings: overrides of the decoder settings stored in the file (a :class:`DecoderSettings`, or a mapping of
            some of its fields, e.g. ``{"score_thresh": 0.5}``); ``None``: the file's own.
        threads: ONNX Runtime intra-op threads (``None``: one per core).
        providers: ONNX Runtime execution providers (default: CPU).
        batch_size: frames per ONNX Runtime call.
    """

    def __init__(
        self,
        onnx_path: str | Path,
        settings: DecoderSettings | Mapping[str, Any] | None = None,
        threads: int | None = None,
        providers: Sequence[str] | None = None,
        batch_size: int = 8,
    ) -> None:
        self.session = _session(onnx_path, threads, providers)
        if isinstance(settings, DecoderSettings):
            base = settings
        else:
            stored = self.session.get_modelmeta().custom_metadata_map.get("kdml_decoder")
            if stored is None:
                raise ValueError(f"{onnx_path} has no kdml_decoder metadata: export it with export_detector_onnx")
            base = DecoderSettings.from_mapping({**json.loads(stored), **(settings or {})})
        self.settings = base
        self.decoder = FrameDecoder(base)
        self.batch_size = max(1, int(batch_size))
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, frames: np.ndarray) -> list[dict[str, np.ndarray]]:
        """Per frame ``{"boxes": float32 (n, 4) xyxy frame pixels, "scores": float32 (n,), "labels": int64 (n,)}``."""
        frames = np.asarray(frames)
        if frames.ndim == 3:
            frames = frames[None]
        if frames.ndim != 4 or frames.shape[3] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"expected (N, H, W, 3) uint8 RGB frames, got {frames.shape} {frames.dtype}")
        results: list[dict[str, np.ndarray]] = []
        for first in range(0, len(frames), self.batch_size):
            chunk = frames[first : first + self.batch_size]
            inputs, scales = zip(*(resize_pad_frame(f, self.settings.image_size) for f in chunk), strict=True)
            preds = self.session.run(None, {self.input_name: np.stack(inputs)})[0]
            for pred, scale, frame in zip(preds, scales, chunk, strict=True):
                boxes, scores, labels = self.decoder(pred)
                boxes = boxes * np.asarray([*scale, *scale], np.float32)
                height, width = frame.shape[:2]
                boxes = np.clip(boxes, 0, np.asarray([width, height, width, height], np.float32))
                results.append({"boxes": boxes.astype(np.float32), "scores": scores, "labels": labels})
        return results


def export_detector_onnx(network: Any, anchor_generator: Any, image_size: int, path: str | Path, **kwargs: Any) -> Path:
    """Write ``network`` as ``path`` (``.onnx``) for :class:`OnnxFrameDetector`, checked against eager; see
    :func:`monai_kdml.apps.polyp.export.export_detector` for ``kwargs`` (``classes``, thresholds, ``meta``)."""
    from monai_kdml.apps.polyp.export import RetinaNetBoxes, export_detector  # torch and MONAI only when exporting

    path = Path(path)
    boxes = RetinaNetBoxes(network, anchor_generator, image_size)
    return export_detector(boxes, path.with_suffix(""), formats=("onnx",), **kwargs)["onnx"].path
