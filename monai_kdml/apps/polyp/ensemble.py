"""Ensembles of student RetinaNets: averaged head outputs (the deployable network) or fused boxes.

Two ways to combine ``K`` detectors that share one anchor layout:

- :class:`RetinaNetHeadEnsemble` averages the raw head outputs anchor by anchor, ``z = 1/K sum_k z_k`` for the
  classification logits and ``d = 1/K sum_k d_k`` for the box deltas, and then behaves like a single RetinaNet: it has
  the attributes :class:`~monai.apps.detection.networks.retinanet_detector.RetinaNetDetector` reads, so one decoding
  and one NMS give the ensemble's boxes. Averaging logits is a geometric mean of the odds: an anchor scores high only
  when the students agree. It is scriptable (``torch.jit.script``) and is the bundle's ``network_def``.
- :func:`weighted_box_fusion` fuses each student's final boxes instead (Solovyev et al., "Weighted boxes fusion",
  Image and Vision Computing 2021): useful when the students do not share anchors or only their detections are kept.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from monai.data.box_utils import box_iou
from torch import Tensor, nn

from monai_kdml.apps.polyp.networks import check_anchor_alignment

__all__ = ["RetinaNetHeadEnsemble", "average_head_outputs", "fuse_detections", "weighted_box_fusion"]


def average_head_outputs(outputs: list[dict[str, list[Tensor]]]) -> dict[str, list[Tensor]]:
    """Level-by-level mean of RetinaNet head outputs: ``out[key][l] = 1/K sum_k outputs[k][key][l]``.

    Args:
        outputs: ``K >= 1`` head outputs with the same keys and, per key, the same number and shapes of levels.

    Returns:
        A head output of the same structure.
    """
    if len(outputs) == 0:
        raise ValueError("average_head_outputs needs at least one head output.")
    averaged: dict[str, list[Tensor]] = {}
    for key in outputs[0]:
        levels: list[Tensor] = []
        for level in range(len(outputs[0][key])):
            levels.append(torch.stack([out[key][level] for out in outputs]).mean(dim=0))
        averaged[key] = levels
    return averaged


class RetinaNetHeadEnsemble(nn.Module):
    """``K`` aligned RetinaNets whose head outputs are averaged; a drop-in ``network`` for RetinaNetDetector.

    Example::

        ensemble = RetinaNetHeadEnsemble(students)
        detector = RetinaNetDetector(network=ensemble, anchor_generator=spec.anchor_generator())
        scripted = torch.jit.script(ensemble)

    Args:
        networks: student RetinaNets (``K >= 1``) that pass :func:`check_anchor_alignment`.

    Attributes:
        spatial_dims, num_classes, cls_key, box_reg_key, num_anchors, size_divisible: those of the students.

    Raises:
        ValueError: no networks, or networks predicting on different anchors.
    """

    def __init__(self, networks: Sequence[nn.Module]) -> None:
        super().__init__()
        if len(networks) == 0:
            raise ValueError("RetinaNetHeadEnsemble needs at least one network.")
        check_anchor_alignment(None, networks)
        self.networks = nn.ModuleList(networks)
        first = networks[0]
        self.spatial_dims: int = int(first.spatial_dims)  # type: ignore[arg-type]
        self.num_classes: int = int(first.num_classes)  # type: ignore[arg-type]
        self.num_anchors: int = int(first.num_anchors)  # type: ignore[arg-type]
        self.size_divisible: tuple[int, ...] = tuple(first.size_divisible)  # type: ignore[arg-type]
        self.cls_key: str = str(first.cls_key)
        self.box_reg_key: str = str(first.box_reg_key)

    def forward(self, images: Tensor) -> dict[str, list[Tensor]]:
        """``(B, C, *spatial)`` images -> the averaged head output ``{cls_key: [...], box_reg_key: [...]}``."""
        outputs: list[dict[str, list[Tensor]]] = []
        for network in self.networks:
            out = network(images)
            if not torch.jit.isinstance(out, dict[str, list[Tensor]]):
                raise ValueError("every ensemble member must return a dict of per-level tensor lists.")
            outputs.append(out)
        return average_head_outputs(outputs)


def weighted_box_fusion(
    boxes: Sequence[Tensor],
    scores: Sequence[Tensor],
    labels: Sequence[Tensor],
    iou_threshold: float = 0.55,
    skip_score: float = 0.0,
) -> tuple[Tensor, Tensor, Tensor]:
    """Weighted boxes fusion of one image's detections from ``K`` models.

    Per label, boxes are visited by decreasing score; each joins the first fused box it overlaps with
    ``IoU > iou_threshold`` (else it starts one). A fused box of cluster ``S`` is ``sum_{i in S} s_i b_i / sum s_i``
    with score ``mean_{i in S} s_i * min(|S|, K) / K``, so boxes found by few models are down-weighted.

    Args:
        boxes: per model, ``(N_k, 2 * spatial_dims)`` xyxy boxes.
        scores: per model, ``(N_k,)``.
        labels: per model, ``(N_k,)`` int.
        iou_threshold: overlap needed to join a cluster.
        skip_score: boxes scoring below this are dropped first.

    Returns:
        Fused ``boxes (N, 2D)``, ``scores (N,)``, ``labels (N,)``, sorted by decreasing score.
    """
    num_models = len(boxes)
    if num_models == 0 or not len(scores) == len(labels) == num_models:
        raise ValueError(
            f"need boxes, scores and labels from >= 1 model each, got {len(boxes)}, {len(scores)}, {len(labels)}."
        )
    all_boxes, all_scores = torch.cat(list(boxes)).float(), torch.cat(list(scores)).float()
    all_labels = torch.cat(list(labels))
    keep = all_scores >= skip_score
    all_boxes, all_scores, all_labels = all_boxes[keep], all_scores[keep], all_labels[keep]
    fused_boxes, fused_scores, fused_labels = [], [], []
    for label in all_labels.unique():
        idx = torch.nonzero(all_labels == label).flatten()
        idx = idx[all_scores[idx].argsort(descending=True)]
        clusters: list[list[int]] = []
        fused: list[Tensor] = []
        for i in idx.tolist():
            best = -1
            if fused:
                ious = box_iou(all_boxes[i : i + 1], torch.stack(fused))[0]
                if float(ious.max()) > iou_threshold:
                    best = int(ious.argmax())
            if best < 0:
                clusters.append([i])
                fused.append(all_boxes[i])
                continue
            clusters[best].append(i)
            weights = all_scores[clusters[best]]
            fused[best] = (weights[:, None] * all_boxes[clusters[best]]).sum(0) / weights.sum()
        for members, box in zip(clusters, fused, strict=True):
            fused_boxes.append(box)
            fused_scores.append(all_scores[members].mean() * min(len(members), num_models) / num_models)
            fused_labels.append(label)
    if not fused_boxes:
        width = all_boxes.shape[1] if all_boxes.ndim == 2 else 4
        return all_boxes.new_zeros((0, width)), all_scores.new_zeros((0,)), all_labels.new_zeros((0,))
    out_scores = torch.stack(fused_scores)
    order = out_scores.argsort(descending=True)
    return torch.stack(fused_boxes)[order], out_scores[order], torch.stack(fused_labels)[order]


def fuse_detections(
    detections: Sequence[Sequence[Mapping[str, Tensor]]],
    iou_threshold: float = 0.55,
    skip_score: float = 0.0,
    box_key: str = "box",
    label_key: str = "label",
    score_key: str = "label_scores",
) -> list[dict[str, Tensor]]:
    """:func:`weighted_box_fusion` image by image.

    Args:
        detections: ``detections[k][i]``: model ``k``'s result for image ``i`` (e.g. :class:`RetinaNetInferer`
            output), a dict with ``box_key``, ``label_key`` and ``score_key``.
        iou_threshold, skip_score: see :func:`weighted_box_fusion`.

    Returns:
        Per image ``{box_key, label_key, score_key}``.
    """
    num_images = {len(d) for d in detections}
    if len(num_images) != 1:
        raise ValueError(f"every model must give one result per image, got counts {sorted(num_images)}.")
    fused = []
    for i in range(num_images.pop()):
        per_model = [d[i] for d in detections]
        boxes, scores, labels = weighted_box_fusion(
            [d[box_key] for d in per_model],
            [d[score_key] for d in per_model],
            [d[label_key] for d in per_model],
            iou_threshold,
            skip_score,
        )
        fused.append({box_key: boxes, label_key: labels, score_key: scores})
    return fused
