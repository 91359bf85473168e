"""Box detection metrics for every network of one validation pass: COCO AP/AR and FROC sensitivities.

Per epoch and network, one :class:`DetectionMetrics` publishes seven scalars into ``engine.state.metrics``
(``<net>_map``, ``<net>_ap50``, ``<net>_ap75``, ``<net>_mar``, ``<net>_sens_0.5fp``, ``<net>_sens_1fp``,
``<net>_sens_2fp``): matching runs once per image in ``update``, the statistics once in ``compute``, which returns a
dict that ignite spreads into ``engine.state.metrics`` (``metrics_result_mode="flatten"``). The metric must be
attached under its ``<net>_map`` name so that MONAI's key-metric lookup finds a scalar under that name.

- COCO: MONAI :class:`~monai.apps.detection.metrics.coco.COCOMetric` on
  :func:`~monai.apps.detection.metrics.matching.matching_batch` (greedy in score order, IoU from
  :func:`monai.data.box_utils.box_iou`, at most ``max_detections`` per image): mAP over IoU 0.50:0.05:0.95,
  AP at IoU 0.50 and 0.75, mean recall over IoU 0.50:0.95.
- FROC: the same matching at ``froc_iou`` (default 0.5; each ground-truth box matched at most once, by the
  highest-scoring detection that overlaps it enough and is not matched yet; the rest are false positives), then
  MONAI's :func:`~monai.metrics.compute_froc_curve_data` and :func:`~monai.metrics.compute_froc_score`: the
  sensitivity at ``f`` false positives per image, linearly interpolated between operating points (CAMELYON16).
  Images without ground truth count in the per-image average.

When the epoch has no ground-truth box at all, AP, recall and sensitivity are undefined: NaN, with a warning.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Any, cast

import ignite.distributed as idist
import numpy as np
import torch
from ignite.engine import Engine
from ignite.exceptions import NotComputableError
from ignite.metrics import Metric
from ignite.metrics.metric import EpochWise, MetricUsage, reinit__is_reduced
from monai.apps.detection.metrics.coco import COCOMetric
from monai.apps.detection.metrics.matching import matching_batch
from monai.data.box_utils import box_iou
from monai.metrics import compute_froc_curve_data, compute_froc_score

from monai_kdml.keys import pred_key

__all__ = ["DetectionMetrics", "DetectionOutput", "detection_metrics"]

logger = logging.getLogger(__name__)

_MAP_RANGE = (0.5, 0.95, 0.05)


def _array(value: Any, dtype: type, name: str) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    try:
        return np.asarray(value, dtype=dtype)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} cannot be read as a {dtype.__name__} array: {err}") from None


class DetectionOutput:
    """Per-image predictions and ground truth of one network as numpy dicts, from the decollated engine output.

    Each sample holds ``{box_key: (N, 2*D), class_key: (N,), score_key: (N,)}`` under ``pred_key`` (the keys of
    ``RetinaNetDetector``'s output) and ``{box_key: (M, 2*D), class_key: (M,)}`` under ``label_key``. Boxes are in
    MONAI's standard mode (``xyxy`` in 2D, ``xyzxyz`` in 3D), as ``RetinaNetDetector`` returns them.

    Returns:
        ``(predictions, targets)``: lists of ``{"boxes", "labels", "scores"}`` and ``{"boxes", "labels"}``.
    """

    def __init__(
        self,
        pred_key: str,
        label_key: str = "label",
        box_key: str = "box",
        class_key: str = "label",
        score_key: str = "label_scores",
    ) -> None:
        self.pred_key, self.label_key = pred_key, label_key
        self.box_key, self.class_key, self.score_key = box_key, class_key, score_key

    def _boxes(self, sample: dict, key: str, with_scores: bool, index: int) -> dict[str, np.ndarray]:
        where = f"sample {index} '{key}'"
        if key not in sample or not isinstance(sample[key], dict):
            raise ValueError(f"{where}: expected a dict of boxes, got {type(sample.get(key)).__name__}.")
        entry = sample[key]
        fields = {"boxes": self.box_key, "labels": self.class_key} | ({"scores": self.score_key} if with_scores else {})
        missing = [field for field in fields.values() if field not in entry]
        if missing:
            raise ValueError(f"{where}: missing {missing}; keys: {sorted(entry)}.")
        boxes = _array(entry[self.box_key], np.float64, f"{where}['{self.box_key}']")
        boxes = boxes.reshape(0, 4) if boxes.size == 0 and boxes.ndim < 2 else boxes
        if boxes.ndim != 2 or boxes.shape[1] not in (4, 6):
            raise ValueError(f"{where}['{self.box_key}'] must be (N, 4) or (N, 6), got {boxes.shape}.")
        dims = boxes.shape[1] // 2
        if (boxes[:, dims:] < boxes[:, :dims]).any() or not np.isfinite(boxes).all():
            raise ValueError(f"{where}['{self.box_key}'] must be finite and in standard mode (min corner first).")
        result = {"boxes": boxes, "labels": _array(entry[self.class_key], np.int64, where).reshape(-1)}
        if with_scores:
            result["scores"] = _array(entry[self.score_key], np.float64, where).reshape(-1)
        if any(len(v) != len(boxes) for v in result.values()):
            raise ValueError(f"{where}: {len(boxes)} boxes but {[len(v) for v in result.values()]} labels/scores.")
        return result

    def __call__(self, output: Any) -> tuple[list[dict[str, np.ndarray]], list[dict[str, np.ndarray]]]:
        if not isinstance(output, (list, tuple)) or not all(isinstance(item, dict) for item in output):
            raise ValueError(f"detection metrics need a list of per-sample dicts, got {type(output).__name__}.")
        preds = [self._boxes(item, self.pred_key, True, i) for i, item in enumerate(output)]
        targets = [self._boxes(item, self.label_key, False, i) for i, item in enumerate(output)]
        return preds, targets


class DetectionMetrics(Metric):
    """COCO mAP@[.5:.95], AP50, AP75, mean recall and sensitivity at given false positives per image.

    ``update`` takes ``(predictions, targets)`` as produced by :class:`DetectionOutput`. Under DDP, ``compute``
    gathers the per-image matchings of all ranks. See the module docstring for the definitions.

    Args:
        prefix: name prefix of the published values, usually the network name.
        classes: class names; predicted and true labels are indices into it.
        max_detections: highest-scoring detections per image that are evaluated.
        froc_fps: false positives per image at which sensitivity is reported.
        froc_iou: IoU at which a detection hits a ground-truth box for the FROC sensitivities.
        output_transform: maps ``engine.state.output`` to ``(predictions, targets)``.
        device: accepted for the ignite ``Metric`` interface; everything is computed on CPU.
    """

    def __init__(
        self,
        prefix: str,
        classes: Sequence[str] = ("polyp",),
        max_detections: int = 100,
        froc_fps: Sequence[float] = (0.5, 1.0, 2.0),
        froc_iou: float = 0.5,
        output_transform: Callable = lambda x: x,
        device: str | torch.device = "cpu",
    ) -> None:
        if not classes:
            raise ValueError("`classes` must name at least one class.")
        if max_detections < 1 or not froc_fps or min(froc_fps) <= 0 or not 0 < froc_iou <= 1:
            raise ValueError(
                f"need max_detections >= 1, positive froc_fps and 0 < froc_iou <= 1; got {max_detections}, "
                f"{tuple(froc_fps)}, {froc_iou}."
            )
        self.prefix, self.classes, self.max_detections = prefix, list(classes), max_detections
        self.froc_fps, self.froc_iou = tuple(float(f) for f in froc_fps), float(froc_iou)
        self._coco = COCOMetric(
            classes=self.classes,
            iou_list=sorted({0.5, 0.75, self.froc_iou}),
            iou_range=_MAP_RANGE,
            max_detection=(max_detections,),
            per_class=False,
            verbose=False,
        )
        self._froc_index = int(np.argmin(np.abs(self._coco.iou_thresholds - self.froc_iou)))
        super().__init__(output_transform, device=device, skip_unrolling=True, metrics_result_mode="flatten")

    @property
    def names(self) -> list[str]:
        """Names of the published values; the first (``<prefix>_map``) is the name to attach under."""
        suffixes = ["map", "ap50", "ap75", "mar"] + [f"sens_{f:g}fp" for f in self.froc_fps]
        return [f"{self.prefix}_{suffix}" for suffix in suffixes]

    @reinit__is_reduced
    def reset(self) -> None:
        self._matches: list[dict[int, dict[str, np.ndarray]]] = []

    @reinit__is_reduced
    def update(self, output: Sequence[Any]) -> None:
        """Match one batch of predictions to its ground truth (all IoU thresholds at once)."""
        preds, targets = output
        for kind, items in (("predicted", preds), ("true", targets)):
            for i, item in enumerate(items):
                labels = item["labels"]
                if labels.size and (labels.min() < 0 or labels.max() >= len(self.classes)):
                    raise ValueError(
                        f"{kind} labels of image {i} must be class indices in [0, {len(self.classes)}) for "
                        f"classes {self.classes}, got {np.unique(labels).tolist()}."
                    )
        self._matches += matching_batch(
            iou_fn=cast(Callable[[np.ndarray, np.ndarray], np.ndarray], box_iou),
            iou_thresholds=self._coco.get_iou_thresholds(),
            pred_boxes=[p["boxes"] for p in preds],
            pred_classes=[p["labels"] for p in preds],
            pred_scores=[p["scores"] for p in preds],
            gt_boxes=[t["boxes"] for t in targets],
            gt_classes=[t["labels"] for t in targets],
            max_detections=self.max_detections,
        )

    def attach(self, engine: Engine, name: str, usage: str | MetricUsage = EpochWise()) -> None:
        """Attach under ``name``, which must be one of :attr:`names` so that ``engine.state.metrics[name]`` exists."""
        if name not in self.names:
            raise ValueError(f"attach DetectionMetrics(prefix='{self.prefix}') as '{self.names[0]}', got '{name}'.")
        super().attach(engine, name, usage)

    def compute(self) -> dict[str, float]:
        """All published values over the images recorded on all ranks since the last ``reset``."""
        gathered = cast(list[list[dict[int, dict[str, np.ndarray]]]], idist.all_gather(self._matches))
        matches = [m for rank_matches in gathered for m in rank_matches]  # one list per rank
        if not matches:
            raise NotComputableError("DetectionMetrics must have at least one image before it can be computed.")
        return self.values(matches)

    @property
    def matches(self) -> list[dict[int, dict[str, np.ndarray]]]:
        """The per-image matchings recorded on this rank since the last ``reset`` (one dict per image, by class)."""
        return self._matches

    def values(self, matches: Sequence[dict[int, dict[str, np.ndarray]]]) -> dict[str, float]:
        """The published values over any list of per-image matchings, e.g. a bootstrap resample of :attr:`matches`
        (an image drawn twice counts twice)."""
        matches = list(matches)
        num_targets = int(sum(np.count_nonzero(r["gtIgnore"] == 0) for m in matches for r in m.values()))
        if num_targets == 0:
            logger.warning(
                "%s: no ground-truth box in %d images, detection metrics are NaN.", self.prefix, len(matches)
            )
            return dict.fromkeys(self.names, math.nan)
        return dict(
            zip(self.names, self._coco_values(matches) + self._sensitivities(matches, num_targets), strict=True)
        )

    def _coco_values(self, matches: list[dict[int, dict[str, np.ndarray]]]) -> list[float]:
        values, _ = self._coco(matches)
        ranged = f"IoU_{_MAP_RANGE[0]:.2f}_{_MAP_RANGE[1]:.2f}_{_MAP_RANGE[2]:.2f}_MaxDet_{self.max_detections}"
        single = f"MaxDet_{self.max_detections}"
        keys = [f"mAP_{ranged}", f"AP_IoU_0.50_{single}", f"AP_IoU_0.75_{single}", f"mAR_{ranged}"]
        return [float(values[key]) for key in keys]

    def _sensitivities(self, matches: list[dict[int, dict[str, np.ndarray]]], num_targets: int) -> list[float]:
        tp_scores, fp_scores = [], []
        for image in matches:
            for result in image.values():
                hit = result["dtMatches"][self._froc_index].astype(bool)
                counted = ~result["dtIgnore"][self._froc_index].astype(bool)
                tp_scores.append(result["dtScores"][hit & counted])
                fp_scores.append(result["dtScores"][~hit & counted])
        tp = np.concatenate(tp_scores)
        # a missed target scores 0; MONAI (after CAMELYON16) drops the lowest score from the thresholds, meant to
        # be that 0, so one 0 is always added: the lowest real score stays an operating point
        tp_probs = np.concatenate([tp, np.zeros(num_targets - tp.size)])
        fp_probs = np.concatenate([*fp_scores, np.zeros(1)])
        fps_per_image, sensitivity = compute_froc_curve_data(fp_probs, tp_probs, num_targets, len(matches))
        return [float(compute_froc_score(fps_per_image, sensitivity, (f,))) for f in self.froc_fps]


def detection_metrics(
    network_names: Sequence[str],
    classes: Sequence[str] = ("polyp",),
    max_detections: int = 100,
    froc_fps: Sequence[float] = (0.5, 1.0, 2.0),
    froc_iou: float = 0.5,
    label_key: str = "label",
) -> dict[str, Metric]:
    """One :class:`DetectionMetrics` per network, keyed ``<net>_map`` (usable as ``key_val_metric``).

    Each publishes ``<net>_map``, ``<net>_ap50``, ``<net>_ap75``, ``<net>_mar`` and ``<net>_sens_<f>fp`` for every
    ``f`` in ``froc_fps`` (``0.5``, ``1``, ``2`` by default). Arguments are those of :class:`DetectionMetrics`.

    Raises:
        ValueError: empty or duplicated ``network_names``.
    """
    if not network_names or len(set(network_names)) != len(network_names):
        raise ValueError(f"`network_names` must be non-empty and unique, got {list(network_names)}.")
    metrics: dict[str, Metric] = {}
    for name in network_names:
        metric = DetectionMetrics(
            prefix=name,
            classes=classes,
            max_detections=max_detections,
            froc_fps=froc_fps,
            froc_iou=froc_iou,
            output_transform=DetectionOutput(pred_key(name), label_key=label_key),
        )
        metrics[metric.names[0]] = metric
    return metrics
