"""Temporal filtering of per-frame detections in a video, and box precision/recall over frame sequences to measure it.

A polyp stays in view for many frames; a false positive on a specular highlight or a fold often flickers for one or
two. :class:`TemporalFilter` keeps a box only when boxes overlapping it (IoU >= ``iou``) were detected in at least
``k`` of the last ``n`` frames, the current one included. It is causal (it looks only at past frames), so it adds no
latency on live video; the price is that a polyp shows up ``k - 1`` frames after it appears.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from monai.data.box_utils import box_iou

__all__ = ["BoxCounts", "TemporalFilter", "box_counts"]


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(len(a), len(b))`` IoU of xyxy boxes (MONAI's ``box_iou``)."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)), dtype=np.float32)
    return np.asarray(box_iou(torch.as_tensor(a, dtype=torch.float32), torch.as_tensor(b, dtype=torch.float32)))


class TemporalFilter:
    """Keep a detection only if it persists: overlapping boxes in ``k`` of the last ``n`` frames (causal).

    Call it once per frame, in order, with that frame's detections (already cut at the operating score); it returns
    the kept ones. Box ``b`` of frame ``t`` is kept when the number of frames ``t' in (t - n, t]`` holding a box with
    ``IoU(b, .) >= iou`` is at least ``k`` (frame ``t`` counts itself). ``k = 1`` keeps everything.

    Args:
        k: frames a box must be seen in, ``1 <= k <= n``.
        n: length of the window, in frames.
        iou: overlap that counts as the same polyp in another frame (low, since polyps move between frames).

    Raises:
        ValueError: bad ``k``, ``n`` or ``iou``, naming the bundle keys.
    """

    def __init__(self, k: int = 3, n: int = 5, iou: float = 0.3) -> None:
        if isinstance(k, bool) or isinstance(n, bool) or not 1 <= int(k) <= int(n):
            raise ValueError(f"`temporal_k` and `temporal_n` need 1 <= k <= n, got k={k!r}, n={n!r}.")
        if not 0.0 < iou <= 1.0:
            raise ValueError(f"`temporal_iou` must be in (0, 1], got {iou!r}.")
        self.k, self.n, self.iou = int(k), int(n), float(iou)
        self._history: deque[np.ndarray] = deque(maxlen=self.n - 1)

    def reset(self) -> None:
        """Forget the past frames (a new video)."""
        self._history.clear()

    def __call__(self, detection: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The kept boxes of the next frame (same keys as ``detection``)."""
        boxes = np.asarray(detection["boxes"], dtype=np.float32).reshape(-1, 4)
        hits = np.ones(len(boxes), dtype=np.int64)
        for past in self._history:
            hits += (_iou(boxes, past) >= self.iou).any(axis=1) if len(past) else 0
        self._history.append(boxes)
        keep = hits >= self.k
        return {key: np.asarray(value)[keep] for key, value in detection.items()}


@dataclass(frozen=True)
class BoxCounts:
    """True positives, false positives and false negatives of boxes over a set of frames."""

    tp: int
    fp: int
    fn: int

    @property
    def precision(self) -> float:
        """``tp / (tp + fp)``; 1 when nothing was predicted."""
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 1.0

    @property
    def recall(self) -> float:
        """``tp / (tp + fn)``; 1 when there was nothing to find."""
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 1.0

    def __add__(self, other: BoxCounts) -> BoxCounts:
        return BoxCounts(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn)


def box_counts(predictions: Sequence[Mapping[str, Any]], truths: Sequence[np.ndarray], iou: float = 0.5) -> BoxCounts:
    """Greedy one-to-one matching of predicted to true boxes, frame by frame, by decreasing score.

    A prediction is a true positive when it overlaps a still unmatched true box with ``IoU >= iou``.

    Args:
        predictions: per frame ``{"boxes": (n, 4), "scores": (n,)}`` (e.g. a :class:`TemporalFilter`'s output).
        truths: per frame the true xyxy boxes ``(m, 4)``.
        iou: the overlap of a hit.

    Raises:
        ValueError: a different number of frames.
    """
    if len(predictions) != len(truths):
        raise ValueError(f"need one prediction per true frame, got {len(predictions)} and {len(truths)}.")
    tp = fp = fn = 0
    for pred, truth in zip(predictions, truths, strict=True):
        boxes = np.asarray(pred["boxes"], dtype=np.float32).reshape(-1, 4)
        order = np.argsort(-np.asarray(pred["scores"]), kind="stable")
        truth = np.asarray(truth, dtype=np.float32).reshape(-1, 4)
        overlap = _iou(boxes[order], truth)
        matched = np.zeros(len(truth), dtype=bool)
        for row in overlap:
            candidates = np.where(~matched & (row >= iou), row, -1.0)
            if len(candidates) and candidates.max() >= 0:
                matched[int(candidates.argmax())] = True
                tp += 1
            else:
                fp += 1
        fn += int((~matched).sum())
    return BoxCounts(tp, fp, fn)
