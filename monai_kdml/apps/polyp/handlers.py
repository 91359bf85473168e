"""Detection-specific engine pieces: per-image outputs, box fusion, boxes in TensorBoard, prediction files, summaries.

MONAI's decollation unbinds every tensor along its first axis, which turns a ``(N, 4)`` box tensor into ``N`` rows
(and fails on ``N = 0``). Detection engines therefore run with ``decollate=False`` and attach
:class:`DecollateDetections` first: it splits the batched output (and batch) into one dict per image and leaves each
image's box tensors whole, which is what :func:`monai_kdml.metrics.detection_metrics` and the writers below read.

Per-image output layout (evaluator): ``"image"`` ``(C, W, H)``, ``"label"`` ``{"box", "label"}`` (ground truth),
and under each ``pred_<network>`` / ``pred`` the detections ``{"box": (N, 4), "label": (N,), "label_scores": (N,)}``
in the transformed frame's pixels, xyxy with ``x`` along spatial axis 0 (MONAI ``PILReader`` order).
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ignite.distributed as idist
import numpy as np
import torch
from ignite.engine import Events
from monai.config import KeysCollection
from monai.data import MetaTensor, decollate_batch
from monai.engines.utils import IterationEvents
from monai.handlers import TensorBoardHandler
from monai.transforms import MapTransform
from PIL import Image

from monai_kdml.apps.polyp.drawing import GT_COLOUR, draw_boxes, frame_image, label_font
from monai_kdml.apps.polyp.ensemble import fuse_detections
from monai_kdml.apps.polyp.transforms import box_to_original
from monai_kdml.data.csv_cells import escape_rows
from monai_kdml.data.images import to_rgb
from monai_kdml.keys import ENSEMBLE, pred_key, split_cohort
from monai_kdml.metrics.history_analysis import ensemble_verdict_lines, ensemble_vs_best_student, read_history

if TYPE_CHECKING:
    from ignite.engine import Engine
    from torch.utils.tensorboard import SummaryWriter

__all__ = [
    "SUMMARY_METRICS",
    "DecollateDetections",
    "DetectionBoxImages",
    "DetectionPredictionWriter",
    "DetectionSummaryWriter",
    "FuseDetectionsd",
    "decollate_detections",
    "draw_boxes",
    "label_font",
]

logger = logging.getLogger(__name__)

SUMMARY_METRICS = ("map", "ap50", "ap75", "mar", "sens_0.5fp", "sens_1fp", "sens_2fp")
"""Metric suffixes of :func:`monai_kdml.metrics.detection_metrics`, in the order of the summary tables."""


def decollate_detections(data: Any) -> Any:
    """One dict per image from a batched dict, keeping each image's boxes whole.

    Tensors are split along their first axis (a ``MetaTensor`` by MONAI's ``decollate_batch``, so each image keeps
    its own meta and affine), lists and tuples item by item; scalars, ``None`` and 0-d tensors are replicated. The
    batch size is that of ``"image"`` (else of the first splittable value). A list (already per image) is returned
    unchanged.

    Raises:
        ValueError: values of different batch sizes.
    """
    if not isinstance(data, Mapping):
        return data
    sizes = {k: _batch_len(v) for k, v in data.items()}
    batch = sizes.get("image") or next((n for n in sizes.values() if n is not None), None)
    if batch is None:
        return [dict(data)]
    columns: dict[Hashable, list] = {}
    for key, value in data.items():
        if sizes[key] is None:
            columns[key] = [value] * batch
        elif sizes[key] != batch:
            raise ValueError(f"cannot split the batch: `{key}` holds {sizes[key]} items for {batch} images.")
        elif isinstance(value, MetaTensor):
            columns[key] = decollate_batch(value.detach(), detach=True)
        elif isinstance(value, torch.Tensor):
            columns[key] = list(value.detach().unbind(0))
        else:
            columns[key] = list(value)
    return [{key: column[i] for key, column in columns.items()} for i in range(batch)]


def _batch_len(value: Any) -> int | None:
    if isinstance(value, torch.Tensor):
        return int(value.shape[0]) if value.ndim > 0 else None
    if isinstance(value, (list, tuple)):
        return len(value)
    return None


class DecollateDetections:
    """At ``MODEL_COMPLETED``, replace ``engine.state.batch`` and ``engine.state.output`` by per-image lists.

    Use with ``decollate=False``, attached before any handler that reads per-image outputs (metrics update later,
    at ``ITERATION_COMPLETED``). See :func:`decollate_detections`.
    """

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(IterationEvents.MODEL_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        engine.state.batch = decollate_detections(engine.state.batch)
        engine.state.output = decollate_detections(engine.state.output)


class FuseDetectionsd(MapTransform):
    """Weighted box fusion of several networks' detections into ``output_key`` (a batched post-transform).

    ``data[key]`` is a list with one detection dict per image for each of ``keys`` (the evaluator's batched output,
    ``decollate=False``); ``data[output_key]`` receives the fused list (see
    :func:`monai_kdml.apps.polyp.fuse_detections`).

    Args:
        keys: prediction keys to fuse, e.g. ``["pred_student_0", "pred_student_1"]``.
        output_key: where the fused detections go, e.g. ``"pred_wbf"``.
        iou_threshold, skip_score: of :func:`monai_kdml.apps.polyp.weighted_box_fusion`.
        box_key, label_key, score_key: keys inside each detection dict.
    """

    def __init__(
        self,
        keys: KeysCollection,
        output_key: str = "pred_wbf",
        iou_threshold: float = 0.55,
        skip_score: float = 0.0,
        box_key: str = "box",
        label_key: str = "label",
        score_key: str = "label_scores",
    ) -> None:
        super().__init__(keys)
        self.output_key, self.iou_threshold, self.skip_score = output_key, iou_threshold, skip_score
        self.box_key, self.label_key, self.score_key = box_key, label_key, score_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        d[self.output_key] = fuse_detections(
            [d[key] for key in self.key_iterator(d)],
            self.iou_threshold,
            self.skip_score,
            self.box_key,
            self.label_key,
            self.score_key,
        )
        return d


def _per_image(values: Any, name: str) -> list[dict]:
    """``values`` (an engine's output or batch) if it is already a per-image list, else a clear error."""
    if not isinstance(values, list):
        raise ValueError(f"{name} needs per-image outputs: attach DecollateDetections first (decollate=False).")
    return values


def _kept(detections: Mapping[str, Any], score_thresh: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(boxes, scores, labels)`` of the detections scoring ``>= score_thresh``, on the CPU."""
    scores = torch.as_tensor(detections["label_scores"]).detach().cpu().reshape(-1)
    keep = scores >= score_thresh
    boxes = torch.as_tensor(detections["box"]).detach().cpu().reshape(-1, 4)[keep]
    return boxes, scores[keep], torch.as_tensor(detections["label"]).detach().cpu().reshape(-1)[keep]


class DetectionBoxImages(TensorBoardHandler):
    """TensorBoard images of the first ``num_images`` frames of each validation: ground truth and predicted boxes.

    Tags ``<tag_name>/<network>/<i>``; ground truth in green (on top), the ``max_boxes`` best detections scoring
    ``>= score_thresh`` in yellow with their score; the step is the evaluator's epoch (the trainer's epoch under
    MONAI's ``ValidationHandler``).

    Args:
        summary_writer, log_dir: as in :class:`monai.handlers.TensorBoardHandler`.
        num_images: frames shown per validation.
        networks: whose predictions to draw (``"ensemble"`` is the deployed model).
        score_thresh: lowest score drawn.
        max_boxes: most detections drawn per frame (the highest-scoring).
        tag_name: tag prefix.
    """

    def __init__(
        self,
        summary_writer: SummaryWriter | None = None,
        log_dir: str = "./runs",
        num_images: int = 4,
        networks: Sequence[str] = ("ensemble",),
        score_thresh: float = 0.5,
        max_boxes: int = 8,
        tag_name: str = "val_boxes",
    ) -> None:
        super().__init__(summary_writer=summary_writer, log_dir=log_dir)
        self.num_images, self.networks = num_images, list(networks)
        self.score_thresh, self.max_boxes, self.tag_name = score_thresh, max_boxes, tag_name
        self._shown = 0

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def _reset(self, engine: Engine) -> None:
        self._shown = 0

    def __call__(self, engine: Engine) -> None:
        for sample in _per_image(engine.state.output, type(self).__name__):
            if self._shown >= self.num_images:
                return
            for network in self.networks:
                boxes, scores, _ = _kept(sample[pred_key(network)], self.score_thresh)
                best = scores.argsort(descending=True)[: self.max_boxes]
                picture = draw_boxes(frame_image(sample["image"]), boxes[best], scores[best])
                draw_boxes(picture, sample["label"]["box"], colour=GT_COLOUR)
                tag = f"{self.tag_name}/{network}/{self._shown}"
                self._writer.add_image(tag, np.asarray(picture), engine.state.epoch, dataformats="HWC")
            self._shown += 1
        self._writer.flush()


class DetectionPredictionWriter:
    """Write each frame's detections in ORIGINAL pixels as JSON, and optionally an overlay PNG.

    Per frame ``<output_dir>/frames/<id>.json`` holds a Kvasir-style entry (the layout of ``kavsir_bboxes.json``,
    plus a score per box)::

        {"image": path, "height": H, "width": W,
         "bbox": [{"label": "polyp", "score": 0.93, "xmin": .., "ymin": .., "xmax": .., "ymax": ..}, ...]}

    and at the end of the run ``<output_dir>/predictions.json`` maps every id to its entry, so predictions read
    like annotations. Per-frame files live in ``frames/``, so no frame (``predictions.jpg``) can overwrite the
    aggregate; two frames with one id in a run are refused rather than overwritten (give each a unique id, as
    :func:`monai_kdml.apps.polyp.polyp_inference_datalist` does). Boxes are mapped back through each frame's affine
    (:func:`box_to_original`).

    Args:
        output_dir: destination folder (created).
        pred_key: output key of the detections (``"pred"``: the ensemble).
        classes: class names; label ``i`` is written as ``classes[i]``.
        score_thresh: detections scoring below this are not written.
        overlay: also write ``frames/<id>_overlay.png``: the original frame with the boxes and scores drawn.
        id_key: batch key naming each frame (falls back to the file stem).
    """

    def __init__(
        self,
        output_dir: str | Path,
        pred_key: str = "pred",
        classes: Sequence[str] = ("polyp",),
        score_thresh: float = 0.0,
        overlay: bool = False,
        id_key: str = "id",
    ) -> None:
        self.output_dir, self.pred_key, self.classes = Path(output_dir), pred_key, list(classes)
        self.score_thresh, self.overlay, self.id_key = score_thresh, overlay, id_key
        self.entries: dict[str, dict] = {}

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.write_all)

    def _reset(self, engine: Engine) -> None:
        self.entries = {}

    def _frame_file(self, name: str, path: str, suffix: str) -> Path:
        """``frames/<name><suffix>``; refuses an id already written this run or one leaving ``frames/``."""
        if name in self.entries:
            raise ValueError(
                f"two frames with id {name!r} ({self.entries[name]['image']} and {path}): give each frame a unique id"
            )
        frames = (self.output_dir / "frames").resolve()
        target = (frames / f"{name}{suffix}").resolve()
        if name in ("", ".") or frames not in target.parents:
            raise ValueError(f"frame id {name!r} of {path} does not name a file inside {frames}")
        return target

    def __call__(self, engine: Engine) -> None:
        batch, outputs = (_per_image(v, type(self).__name__) for v in (engine.state.batch, engine.state.output))
        for sample, out in zip(batch, outputs, strict=True):
            image = sample["image"]
            if not isinstance(image, MetaTensor):
                raise ValueError("DetectionPredictionWriter needs MetaTensor frames (affine, size, file name).")
            path = str(image.meta["filename_or_obj"])
            width, height = (int(v) for v in image.meta["spatial_shape"][:2])
            name = str(sample.get(self.id_key) or Path(path).stem)
            boxes, scores, labels = _kept(out[self.pred_key], self.score_thresh)
            boxes = box_to_original(boxes, image.affine, (width, height))
            records = _records(boxes, scores, labels, self.classes)
            entry = {"image": path, "height": height, "width": width, "bbox": records}
            target = self._frame_file(name, path, ".json")
            self.entries[name] = entry
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(json.dumps(entry, indent=1))
            if self.overlay:
                with Image.open(path) as img:
                    picture = draw_boxes(to_rgb(img), boxes, scores)
                picture.save(target.with_name(f"{target.name[: -len('.json')]}_overlay.png"))

    def write_all(self, engine: Engine | None = None) -> None:
        """Write ``predictions.json`` with every frame seen this run."""
        self.output_dir.mkdir(parents=True, exist_ok=True)
        (self.output_dir / "predictions.json").write_text(json.dumps(self.entries, indent=1))
        logger.info("Detections of %d frames written to %s.", len(self.entries), self.output_dir)


def _records(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, classes: list[str]) -> list[dict]:
    """Kvasir-style box records with a score, coordinates rounded to 0.1 px."""
    return [
        {
            "label": classes[int(label)] if 0 <= int(label) < len(classes) else str(int(label)),
            "score": round(float(score), 4),
            **{k: round(float(v), 1) for k, v in zip(("xmin", "ymin", "xmax", "ymax"), box.tolist(), strict=True)},
        }
        for box, score, label in zip(boxes, scores, labels, strict=True)
    ]


class DetectionSummaryWriter:
    """At ``EPOCH_COMPLETED``, write ``summary.csv`` and ``summary.md``: one row per network, one column per metric.

    Reads ``engine.state.metrics["<network>_<metric>"]`` (the names of :func:`monai_kdml.metrics.detection_metrics`)
    and, when ``compression`` is given, adds each network's parameters (millions) and GMACs per frame; a network
    absent from it (e.g. ``"wbf"``) gets the ensemble's, since it runs the same students. Only rank 0 writes.

    Args:
        output_dir: destination folder (created).
        networks: row order, e.g. ``["teacher", "student_0", "student_1", "ensemble", "wbf"]``.
        metrics: metric suffixes (columns); default :data:`SUMMARY_METRICS`.
        title: a heading line for the markdown file.
        compression: a :func:`monai_kdml.metrics.compression_summary` (``<network>_params``, ``<network>_macs``).
        history: the training's ``metrics_history.csv``: adds whether each ensemble beat its best single student on
            validation (mAP); ``None`` or a missing file leaves it out.
    """

    def __init__(
        self,
        output_dir: str | Path,
        networks: Sequence[str],
        metrics: Sequence[str] = SUMMARY_METRICS,
        title: str | None = None,
        compression: Mapping[str, float] | None = None,
        history: str | Path | None = None,
    ) -> None:
        if not networks or not metrics:
            raise ValueError("DetectionSummaryWriter needs at least one network and one metric.")
        self.output_dir, self.networks, self.metrics = Path(output_dir), list(networks), list(metrics)
        self.title, self.compression, self.history = title, compression, history

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def table(self, results: Mapping[str, Any]) -> list[list[str]]:
        """``[header, *rows]``: values with 4 decimals, ``-`` where a metric is missing or NaN."""
        sizes = ["params_M", "GMACs"] if self.compression is not None else []
        rows = [["network", *self.metrics, *sizes]]
        for network in self.networks:
            row = [network, *[_fmt(results.get(f"{network}_{metric}")) for metric in self.metrics]]
            if self.compression is not None:
                base = split_cohort(network)[1]  # a cohort's networks cost what a single run's do
                name = base if f"{base}_params" in self.compression else ENSEMBLE
                params, macs = self.compression[f"{name}_params"], self.compression[f"{name}_macs"]
                row += [f"{params / 1e6:.3f}", f"{macs / 1e9:.3f}"]
            rows.append(row)
        return rows

    def __call__(self, engine: Engine) -> None:
        if idist.get_rank() != 0:
            return
        rows = self.table(engine.state.metrics)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        with (self.output_dir / "summary.csv").open("w", newline="") as f:
            csv.writer(f).writerows(escape_rows(rows))
        lines = [f"# {self.title}", ""] if self.title else []
        lines += ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
        lines += ["| " + " | ".join(row) + " |" for row in rows[1:]]
        if self.history is not None:
            cohorts = [c for c in dict.fromkeys(split_cohort(n)[0] for n in self.networks) if c is not None] or None
            students = sum(split_cohort(n)[1].startswith("student_") for n in self.networks) // len(cohorts or [0])
            verdict = ensemble_vs_best_student(read_history(self.history), "map", cohorts)
            costs = "the params_M and GMACs columns" if self.compression is not None else None
            lines += ["", *ensemble_verdict_lines(verdict, "mAP", students, costs)]
        (self.output_dir / "summary.md").write_text("\n".join(lines) + "\n")
        logger.info("Detection summary (%s):\n%s", self.output_dir / "summary.md", "\n".join(lines))


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    value = float(value)
    return "-" if math.isnan(value) else f"{value:.4f}"
