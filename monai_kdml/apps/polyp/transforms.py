"""Ready MONAI transform chains for 2D polyp detection: fixed-size square frames with boxes that stay on the object.

Input: datalist items of :func:`monai_kdml.apps.polyp.kvasir.kvasir_datalist` (``"image"`` path, ``"box"`` xyxy original
pixels, ``"label"``). Output per sample: ``"image"`` float32 ``(3, S, S)`` in [0, 1] (a ``MetaTensor`` carrying the
file name, the original size and the affine), ``"box"`` float32 ``(M, 4)``, ``"label"`` int64 ``(M,)``.

Axis convention: MONAI's ``PILReader`` returns spatial axes in (W, H) order (``reverse_indexing=True``), so
``image[c, x, y]``, and boxes are ``[x_min, y_min, x_max, y_max]`` with coordinate ``i`` along spatial axis ``i``:
the order MONAI's box utilities and ``RetinaNetDetector`` assume. Coordinates are continuous pixel edges (pixel
``(x, y)`` spans ``[x, x+1) x [y, y+1)``; ``monai.data.box_utils.TO_REMOVE == 0``). To view a sample as a usual
(H, W, 3) picture: ``image.permute(2, 1, 0)``; its boxes draw unchanged as (x, y) rectangles on it.

Geometry: the longest side is resized to ``S`` (area interpolation, aspect ratio kept), then the frame is padded with
zeros at the end (right and bottom) to ``S x S``, so boxes only scale. Choose ``S`` a multiple of the detector's
``size_divisible`` so batches need no further padding. :func:`box_to_original` maps predicted boxes back to original
pixels through the image's affine, which MONAI updates for every spatial transform.

Caching: every chain starts with the deterministic load -> resize -> pad steps and stores the frame as rounded uint8
(a quarter of float32's memory: 0.2 MB instead of 0.8 MB per 256 px frame) for ``monai.data.CacheDataset``, which
caches up to the first random transform; the training chain's random steps follow.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.apps.detection.transforms.array import ResizeBox
from monai.apps.detection.transforms.box_ops import apply_affine_to_boxes
from monai.apps.detection.transforms.dictionary import (
    ClipBoxToImaged,
    ConvertBoxToStandardModed,
    RandFlipBoxd,
    RandRotateBox90d,
    RandZoomBoxd,
    StandardizeEmptyBoxd,
)
from monai.config import KeysCollection
from monai.data.box_utils import clip_boxes_to_image
from monai.transforms import (
    AsDiscreted,
    CastToTyped,
    Compose,
    EnsureChannelFirstd,
    EnsureTyped,
    MapTransform,
    RandAdjustContrastd,
    RandGaussianNoised,
    RandGaussianSmoothd,
    RandScaleIntensityd,
    Resized,
    ScaleIntensityRanged,
    SpatialPadd,
)
from monai.transforms.utils import create_translate

from monai_kdml.data.datasets import AfterCache
from monai_kdml.data.images import MAX_IMAGE_PIXELS
from monai_kdml.data.loading import LoadRGBImaged

__all__ = [
    "ResizeBoxd",
    "box_to_original",
    "polyp_inference_transforms",
    "polyp_train_transforms",
    "polyp_val_transforms",
]

IMAGE, BOX, LABEL = "image", "box", "label"


class ResizeBoxd(MapTransform):
    """Dictionary wrapper of MONAI's :class:`~monai.apps.detection.transforms.array.ResizeBox`.

    Scales boxes as their reference image is about to be resized by ``Resized`` with the same ``spatial_size`` and
    ``size_mode``; place it right before that ``Resized`` (it reads the reference image's current size).

    Args:
        box_keys: keys of ``(M, 4)`` boxes in standard mode.
        box_ref_image_keys: the single image key the boxes belong to.
        spatial_size: as in ``monai.transforms.Resized``.
        size_mode: ``"all"`` or ``"longest"``, as in ``monai.transforms.Resized``.
        allow_missing_keys: don't raise when a box key is missing.
    """

    def __init__(
        self,
        box_keys: KeysCollection,
        box_ref_image_keys: str,
        spatial_size: Sequence[int] | int,
        size_mode: str = "all",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(box_keys, allow_missing_keys)
        self.box_ref_image_keys = box_ref_image_keys
        self.resizer = ResizeBox(spatial_size=spatial_size, size_mode=size_mode)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d: dict[Hashable, Any] = dict(data)
        src_spatial_size = d[self.box_ref_image_keys].shape[1:]
        for key in self.key_iterator(d):
            d[key] = self.resizer(d[key], src_spatial_size=src_spatial_size)
        return d


def _check_size(image_size: int) -> None:
    if not isinstance(image_size, int) or image_size < 16:
        raise ValueError(
            f"image_size must be an int >= 16 (a multiple of the detector's size_divisible), got {image_size!r}"
        )


def _load_resize_pad(image_size: int, boxes: bool, mask_key: str | None, max_image_pixels: int | None) -> list:
    """Deterministic head: load RGB (and mask), resize longest side, pad end to square, boxes alike, uint8."""
    keys = [IMAGE] + ([mask_key] if mask_key else [])
    modes = ["area"] + (["nearest"] if mask_key else [])
    steps: list = [
        LoadRGBImaged(keys, max_image_pixels=max_image_pixels),  # errors name the file
        EnsureChannelFirstd(keys),
    ]
    if boxes:
        steps += [
            EnsureTyped(BOX, dtype=torch.float32, track_meta=False),
            EnsureTyped(LABEL, dtype=torch.int64, track_meta=False),
            StandardizeEmptyBoxd(BOX, box_ref_image_keys=IMAGE),  # a frame without polyps: (0, 4)
            ConvertBoxToStandardModed(BOX, mode="xyxy"),
            ResizeBoxd(BOX, box_ref_image_keys=IMAGE, spatial_size=image_size, size_mode="longest"),
        ]
    steps += [
        Resized(keys, spatial_size=image_size, size_mode="longest", mode=modes),
        SpatialPadd(keys, spatial_size=(image_size, image_size), method="end", mode="constant"),
        AsDiscreted(keys, rounding="torchrounding"),
        CastToTyped(keys, dtype=torch.uint8),
    ]
    if boxes:  # the datalist's boxes are clean already; others' may reach outside the frame or be empty
        steps.append(ClipBoxToImaged(BOX, label_keys=LABEL, box_ref_image_keys=IMAGE, remove_empty=True))
    return steps


def _to_unit_range() -> list:
    return [ScaleIntensityRanged(IMAGE, a_min=0.0, a_max=255.0, b_min=0.0, b_max=1.0, clip=True)]


def _finalize(boxes: bool) -> list:
    steps: list = [EnsureTyped(IMAGE, dtype=torch.float32)]
    if boxes:
        steps += [
            EnsureTyped(BOX, dtype=torch.float32, track_meta=False),
            EnsureTyped(LABEL, dtype=torch.int64, track_meta=False),
        ]
    return steps


def polyp_train_transforms(
    image_size: int,
    *,
    flip_prob: float = 0.5,
    rotate90_prob: float = 0.5,
    zoom_prob: float = 0.3,
    zoom_range: tuple[float, float] = (0.8, 1.25),
    intensity_prob: float = 0.3,
    mask_key: str | None = None,
    max_image_pixels: int | None = MAX_IMAGE_PIXELS,
) -> Compose:
    """Training chain: the cached deterministic head, then random flips, 90-degree turns, zoom and intensity.

    Colonoscopy has no canonical orientation (the scope turns), so both flips and 90-degree rotations are fair;
    zoom crops or pads about the centre (boxes clipped, boxes fully outside dropped with their labels); intensity:
    per-channel scaling (colour cast), gamma, blur and noise, then clamping to [0, 1].

    Args:
        image_size: side ``S`` of the square output.
        flip_prob: probability of a flip along each axis (two independent draws).
        rotate90_prob: probability of a rotation by 90, 180 or 270 degrees.
        zoom_prob: probability of a random zoom.
        zoom_range: ``(min_zoom, max_zoom)``.
        intensity_prob: probability of each of the four intensity changes.
        mask_key: key of a mask path to load and move with the image (nearest interpolation, no intensity
            changes, uint8), e.g. to check that boxes stay on their objects; ``None``: no mask.
        max_image_pixels: largest frame loaded (PIL's limit, set in every loading process); as in the pre-flight.

    Returns:
        A ``Compose``; call ``set_random_state(seed)`` on it for reproducible draws.
    """
    _check_size(image_size)
    keys = [IMAGE] + ([mask_key] if mask_key else [])
    zoom_modes = ["bilinear"] + (["nearest"] if mask_key else [])
    spatial = [
        RandFlipBoxd(keys, BOX, box_ref_image_keys=IMAGE, prob=flip_prob, spatial_axis=0),
        RandFlipBoxd(keys, BOX, box_ref_image_keys=IMAGE, prob=flip_prob, spatial_axis=1),
        RandRotateBox90d(keys, BOX, box_ref_image_keys=IMAGE, prob=rotate90_prob, max_k=3, spatial_axes=(0, 1)),
        *_to_unit_range(),
        RandZoomBoxd(
            keys,
            BOX,
            box_ref_image_keys=IMAGE,
            prob=zoom_prob,
            min_zoom=zoom_range[0],
            max_zoom=zoom_range[1],
            mode=zoom_modes,
            padding_mode="constant",
            keep_size=True,
        ),
        ClipBoxToImaged(BOX, label_keys=LABEL, box_ref_image_keys=IMAGE, remove_empty=True),
    ]
    intensity = [
        RandScaleIntensityd(IMAGE, factors=0.15, prob=intensity_prob, channel_wise=True),
        RandAdjustContrastd(IMAGE, prob=intensity_prob, gamma=(0.7, 1.5)),
        RandGaussianSmoothd(IMAGE, prob=intensity_prob, sigma_x=(0.25, 1.0), sigma_y=(0.25, 1.0)),
        RandGaussianNoised(IMAGE, prob=intensity_prob, std=0.02),
        ScaleIntensityRanged(IMAGE, a_min=0.0, a_max=1.0, b_min=0.0, b_max=1.0, clip=True),  # clamp to [0, 1]
    ]
    head = _load_resize_pad(image_size, True, mask_key, max_image_pixels)
    return Compose(head + spatial + intensity + _finalize(True))


def polyp_val_transforms(
    image_size: int, *, mask_key: str | None = None, max_image_pixels: int | None = MAX_IMAGE_PIXELS
) -> Compose:
    """Validation chain: load, resize the longest side to ``image_size``, pad to square, boxes alike, [0, 1].

    Args:
        image_size: side ``S`` of the square output.
        mask_key: see :func:`polyp_train_transforms`.
        max_image_pixels: see :func:`polyp_train_transforms`.
    """
    _check_size(image_size)
    # AfterCache, not a transform: even this all-deterministic chain is cached as uint8 frames
    return Compose(
        [*_load_resize_pad(image_size, True, mask_key, max_image_pixels), AfterCache(IMAGE), *_finalize(True)]
    )


def polyp_inference_transforms(image_size: int, max_image_pixels: int | None = MAX_IMAGE_PIXELS) -> Compose:
    """Inference chain: as :func:`polyp_val_transforms` for ``"image"`` only (no boxes or labels needed)."""
    _check_size(image_size)
    return Compose([*_load_resize_pad(image_size, False, None, max_image_pixels), AfterCache(IMAGE), *_finalize(False)])


def box_to_original(
    box: torch.Tensor, affine: torch.Tensor | np.ndarray, original_size: Sequence[int] | None = None
) -> torch.Tensor:
    """Map ``(M, 4)`` boxes from a transformed frame's pixels back to the original frame's pixels.

    MONAI keeps in each image's affine the map from output pixel centres to input pixel centres through every
    spatial transform (resize, pad, flip, rotation, zoom); boxes use pixel edges, so
    ``box_original = T(+1/2) @ affine @ T(-1/2) (box)`` on both corners, then min/max. With the inference chain
    this is ``box * original_size / resized_size``.

    Args:
        box: ``(M, 4)`` xyxy boxes in the transformed frame's pixels (e.g. a detector's predictions).
        affine: the frame's affine, ``image.affine`` of the sample (``batch["image"].affine[i]`` in a batch):
            ``(3, 3)`` or MONAI's ``(4, 4)`` for 2D images.
        original_size: original ``(width, height)`` to clip to, e.g. ``image.meta["spatial_shape"]``; ``None``:
            no clipping.

    Returns:
        float32 ``(M, 4)`` boxes in original pixels, on ``box``'s device.

    Example:
        >>> sample = polyp_inference_transforms(256)({"image": "frame.jpg"})  # doctest: +SKIP
        >>> box_to_original(pred_boxes, sample["image"].affine, sample["image"].meta["spatial_shape"])  # doctest: +SKIP
    """
    matrix = torch.as_tensor(affine).detach().to("cpu", torch.float64)
    if matrix.shape == (4, 4):  # MONAI stores 2D affines as 3D ones with an identity third axis
        matrix = matrix[[0, 1, 3]][:, [0, 1, 3]]
    if matrix.shape != (3, 3):
        raise ValueError(f"affine must be (3, 3) or (4, 4) for 2D boxes, got {tuple(matrix.shape)}")
    edge_to_centre = torch.as_tensor(create_translate(2, (-0.5, -0.5)))
    matrix = torch.as_tensor(create_translate(2, (0.5, 0.5))) @ matrix @ edge_to_centre
    box = torch.as_tensor(box)
    out = torch.as_tensor(apply_affine_to_boxes(box.detach().to("cpu", torch.float64), matrix))
    if original_size is not None:
        out = torch.as_tensor(clip_boxes_to_image(out, [int(s) for s in original_size], remove_empty=False)[0])
    return out.to(device=box.device, dtype=torch.float32)
