"""What a detection evaluation keeps besides its summary: every frame's detections and ground truth per network (so
AP can be bootstrapped over frames, :func:`frame_matches`), and the box fusion of each cohort of a cohort run."""

from __future__ import annotations

import gzip
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import ignite.distributed as idist
import numpy as np
import torch
from ignite.engine import Events
from monai.transforms import Compose

from monai_kdml.apps.polyp.handlers import FuseDetectionsd, _per_image
from monai_kdml.apps.polyp.metrics import DetectionMetrics, DetectionOutput
from monai_kdml.keys import cohort_key, pred_key, student_name

if TYPE_CHECKING:
    from ignite.engine import Engine

__all__ = ["FRAME_DETECTIONS", "FrameDetectionsWriter", "cohort_fusion", "frame_matches", "read_frame_detections"]

logger = logging.getLogger(__name__)

FRAME_DETECTIONS = "frame_detections.json.gz"
"""File name of :class:`FrameDetectionsWriter`'s output in an evaluation folder."""


def _boxes(value: Any) -> list[list[float]]:
    return np.round(np.asarray(torch.as_tensor(value).detach().cpu(), dtype=np.float64).reshape(-1, 4), 2).tolist()


def _flat(value: Any, decimals: int | None = None) -> list:
    array = np.asarray(torch.as_tensor(value).detach().cpu()).reshape(-1)
    return (np.round(array.astype(np.float64), decimals) if decimals is not None else array).tolist()


class FrameDetectionsWriter:
    """Write every frame's ground truth and each network's detections of one evaluation as gzipped JSON.

    ``<output_dir>/frame_detections.json.gz`` holds ``{"networks": [...], "frames": [{"id", "gt": {"box",
    "label"}, "pred": {network: {"box", "label", "label_scores"}}}]}`` in the evaluated (resized) frame's pixels,
    boxes xyxy rounded to 0.01 px and scores to 1e-4: what :func:`frame_matches` needs to recompute AP, recall and
    FROC on any resample of the frames (a bootstrap confidence interval over test frames). Needs per-image outputs
    (attach after :class:`~monai_kdml.apps.polyp.DecollateDetections`). Only rank 0 writes (frames of all ranks).

    Args:
        output_dir: the evaluation folder.
        networks: whose detections to keep, e.g. ``network_names(K)``.
        id_key: batch key naming each frame (falls back to the image file stem, then the frame's index).
    """

    def __init__(self, output_dir: str | Path, networks: Sequence[str], id_key: str = "id") -> None:
        self.path = Path(output_dir) / FRAME_DETECTIONS
        self.networks, self.id_key = list(networks), id_key
        self._frames: list[dict] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def _reset(self, _engine: Engine) -> None:
        self._frames = []

    def _collect(self, engine: Engine) -> None:
        outputs = _per_image(engine.state.output, type(self).__name__)
        batch: list[dict] = engine.state.batch if isinstance(engine.state.batch, list) else [{}] * len(outputs)
        for sample, out in zip(batch, outputs, strict=True):
            meta = getattr(sample.get("image"), "meta", {}) or {}
            name = sample.get(self.id_key) or Path(str(meta.get("filename_or_obj", ""))).stem
            gt = {"box": _boxes(out["label"]["box"]), "label": _flat(out["label"]["label"])}
            frame: dict[str, Any] = {"id": str(name or len(self._frames)), "gt": gt, "pred": {}}
            for network in self.networks:
                det = out[pred_key(network)]
                frame["pred"][network] = {
                    "box": _boxes(det["box"]),
                    "label": _flat(det["label"]),
                    "label_scores": _flat(det["label_scores"], 4),
                }
            self._frames.append(frame)

    def __call__(self, engine: Engine) -> None:
        frames = self._frames
        if idist.get_world_size() > 1:
            frames = [f for part in cast(list[list[dict]], idist.all_gather(frames)) for f in part]
        if idist.get_rank() != 0:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with gzip.open(self.path, "wt") as f:
            json.dump({"networks": self.networks, "frames": frames}, f)
        logger.info("Per-frame detections of %d frames written to %s.", len(frames), self.path)


def read_frame_detections(path: str | Path) -> dict[str, Any]:
    """The content of a :class:`FrameDetectionsWriter` file (or of the folder holding one)."""
    path = Path(path)
    path = path / FRAME_DETECTIONS if path.is_dir() else path
    with gzip.open(path, "rt") as f:
        return json.load(f)


def frame_matches(
    content: dict[str, Any], network: str, classes: Sequence[str] = ("polyp",), max_detections: int = 100
) -> tuple[DetectionMetrics, list]:
    """Match one network's detections of every frame once; resample the returned matches and call
    ``metric.values(resample)`` for mAP, AP50, AP75, mAR and FROC sensitivities over any set of frames.

    Args:
        content: :func:`read_frame_detections` output.
        network: one of ``content["networks"]``.
        classes, max_detections: as in :class:`~monai_kdml.apps.polyp.DetectionMetrics`.

    Returns:
        ``(metric, matches)``: the metric (``metric.values(matches)`` gives the evaluation's values) and one matching
        per frame, in the file's order.
    """
    if network not in content["networks"]:
        raise ValueError(f"no detections of '{network}' in the file; it holds {content['networks']}.")
    metric = DetectionMetrics(network, classes=classes, max_detections=max_detections)
    samples = [{"label": f["gt"], "pred": f["pred"][network]} for f in content["frames"]]
    for sample in samples:
        sample["label"] = {"box": np.asarray(sample["label"]["box"]).reshape(-1, 4), "label": sample["label"]["label"]}
        sample["pred"] = {**sample["pred"], "box": np.asarray(sample["pred"]["box"]).reshape(-1, 4)}
    metric.reset()
    metric.update(DetectionOutput("pred")(samples))
    return metric, list(metric.matches)


def cohort_fusion(
    num_students: int, cohorts: Sequence[str] | None = None, iou_threshold: float = 0.55, skip_score: float = 0.0
) -> FuseDetectionsd | Compose:
    """Weighted box fusion of the students' detections into ``pred_wbf``, or of each cohort's into ``<mode>/pred_wbf``
    (a cohort run): the evaluation post-transform scoring the ``wbf`` network(s)."""
    groups = [None] if cohorts is None else [str(c) for c in cohorts]
    fusions = [
        FuseDetectionsd(
            keys=[pred_key(cohort_key(c, student_name(k))) for k in range(num_students)],
            output_key=pred_key(cohort_key(c, "wbf")),
            iou_threshold=iou_threshold,
            skip_score=skip_score,
        )
        for c in groups
    ]
    return fusions[0] if cohorts is None else Compose(fusions)
