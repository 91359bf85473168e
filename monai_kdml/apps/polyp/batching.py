"""Batching for detection: a collate that keeps per-image boxes apart, and the ``prepare_batch`` MONAI engines call.

Frames from :mod:`monai_kdml.apps.polyp.transforms` all have the same ``(3, S, S)`` shape, so images stack;
boxes and labels differ in count per image, so they stay lists. Use both together::

    loader = DataLoader(CacheDataset(datalist, polyp_train_transforms(256)), batch_size=8,
                        collate_fn=detection_collate)
    trainer = SupervisedTrainer(..., train_data_loader=loader, prepare_batch=detection_prepare_batch)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from monai.data import MetaTensor, list_data_collate
from monai.utils import convert_to_tensor

__all__ = ["detection_collate", "detection_prepare_batch", "detection_targets"]

IMAGE, BOX, LABEL = "image", "box", "label"


def detection_collate(batch: Sequence[Mapping[str, Any] | list[Mapping[str, Any]]]) -> dict[str, Any]:
    """Stack ``"image"`` with MONAI's collate; keep every other key (``"box"``, ``"label"``, ids, ...) as a list.

    Samples that are lists (transforms returning several crops per frame) are flattened first, like
    ``monai.data.list_data_collate``.

    Args:
        batch: samples, each a dict with ``"image"`` ``(C, *spatial)`` of one common shape.

    Returns:
        ``{"image": (B, C, *spatial), key: [value per sample], ...}``; a ``MetaTensor`` image keeps its batched
        meta (``image.meta["filename_or_obj"]``: the B file names; ``image.affine``: ``(B, 4, 4)``).

    Raises:
        ValueError: an empty batch, a sample without ``"image"`` or missing a key the first sample has.
    """
    samples = [s for item in batch for s in (item if isinstance(item, list) else [item])]
    if not samples:
        raise ValueError("detection_collate: empty batch")
    keys = list(samples[0])
    for index, sample in enumerate(samples):
        missing = [key for key in keys if key not in sample]
        if IMAGE not in sample or missing:
            raise ValueError(f"detection_collate: sample {index} lacks {missing or [IMAGE]}")
    out: dict[str, Any] = {IMAGE: list_data_collate([{IMAGE: s[IMAGE]} for s in samples])[IMAGE]}
    out.update({key: [s[key] for s in samples] for key in keys if key != IMAGE})
    return out


def detection_prepare_batch(
    batchdata: Mapping[str, Any],
    device: str | torch.device | None = None,
    non_blocking: bool = False,
    **kwargs: Any,
) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
    """Images and per-image targets on ``device``, with the signature of ``monai.engines.utils.default_prepare_batch``.

    Images are returned as plain tensors: the meta stays in ``batchdata`` (``engine.state.batch``) for naming
    outputs, and the detector runs without ``MetaTensor`` bookkeeping.

    Args:
        batchdata: a :func:`detection_collate` batch: ``"image"`` ``(B, 3, S, S)``, ``"box"`` and ``"label"`` lists
            of B ``(M_b, 4)`` and ``(M_b,)`` tensors or arrays.
        device: target device.
        non_blocking: as in ``Tensor.to``.
        kwargs: further ``Tensor.to`` arguments for the images (e.g. ``memory_format``).

    Returns:
        ``(images, targets)``: float ``(B, 3, S, S)`` and B dicts ``{"box": float32 (M_b, 4), "label": int64 (M_b,)}``.

    Raises:
        ValueError: ``"image"``, ``"box"`` or ``"label"`` missing, counts not matching the batch, a box array not
            of shape ``(M, 4)``, or a label count differing from its box count.
    """
    missing = [key for key in (IMAGE, BOX, LABEL) if key not in batchdata]
    if missing:
        raise ValueError(f"detection_prepare_batch: batch lacks {missing} (use collate_fn=detection_collate)")
    images = batchdata[IMAGE]
    images = images.as_tensor() if isinstance(images, MetaTensor) else torch.as_tensor(images)
    images = images.to(device=device, non_blocking=non_blocking, **kwargs)
    boxes, labels = batchdata[BOX], batchdata[LABEL]
    if len(boxes) != len(images) or len(labels) != len(images):
        raise ValueError(
            f"detection_prepare_batch: {len(images)} images but {len(boxes)} box and {len(labels)} label sets"
        )
    targets = detection_targets(boxes, labels, device=device, non_blocking=non_blocking)
    return images, targets


def detection_targets(
    boxes: Sequence[Any],
    labels: Sequence[Any],
    *,
    spatial_dims: int = 2,
    num_classes: int | None = None,
    device: str | torch.device | None = None,
    non_blocking: bool = False,
    box_key: str = BOX,
    label_key: str = LABEL,
) -> list[dict[str, torch.Tensor]]:
    """Validate per-image boxes and labels once and return them as plain tensors on ``device``.

    The one place where detection targets are checked: :func:`detection_prepare_batch` and the detection losses
    call it. An image without objects may give an empty list for its boxes.

    Args:
        boxes: per image, ``(M, 2 * spatial_dims)`` xyxy boxes (tensor, array or nested list; ``M`` may be 0).
        labels: per image, ``(M,)`` integer class indices.
        spatial_dims: 2 for frames.
        num_classes: when given, labels must lie in ``[0, num_classes)``.
        device: target device.
        non_blocking: as in ``Tensor.to``.
        box_key, label_key: keys of the returned dicts.

    Returns:
        Per image ``{box_key: float32 (M, 2 * spatial_dims), label_key: int64 (M,)}``.

    Raises:
        ValueError: naming the image: counts that differ, a box array of another shape, a label count differing
            from the box count, non-integer labels or labels out of range.
    """
    if len(boxes) != len(labels):
        raise ValueError(f"detection targets: {len(boxes)} box sets but {len(labels)} label sets")
    width, out = 2 * spatial_dims, []
    for index, (box, label) in enumerate(zip(boxes, labels, strict=True)):
        # plain tensors: a MetaTensor would drag its meta through every matching op
        box_t = convert_to_tensor(box, wrap_sequence=True, track_meta=False)
        label_t = convert_to_tensor(label, wrap_sequence=True, track_meta=False).reshape(-1)
        box_t = box_t.reshape(0, width) if box_t.numel() == 0 else box_t  # an empty list has shape (0,)
        if box_t.ndim != 2 or box_t.shape[1] != width or len(label_t) != len(box_t):
            raise ValueError(
                f"targets[{index}]: expected `{box_key}` (M, {width}) and `{label_key}` (M,), got boxes of shape "
                f"{tuple(box_t.shape)} and {len(label_t)} labels"
            )
        out_of_range = (
            num_classes is not None and label_t.numel() > 0 and (label_t.min() < 0 or label_t.max() >= num_classes)
        )
        if label_t.is_floating_point() or out_of_range:
            allowed = f" in [0, {num_classes})" if num_classes is not None else ""
            raise ValueError(f"targets[{index}]: `{label_key}` must be integers{allowed}, got {label_t.tolist()}")
        label_t = label_t.to(torch.int64)
        out.append(
            {
                box_key: box_t.to(device=device, dtype=torch.float32, non_blocking=non_blocking),
                label_key: label_t.to(device=device, non_blocking=non_blocking),
            }
        )
    return out
