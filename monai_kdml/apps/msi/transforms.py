"""The MSI tile transforms, written once for training, validation, evaluation, inference and the examples.

Every chain starts with the same deterministic head: load the tile as RGB (:class:`monai_kdml.data.LoadRGBImaged`:
``PILReader(converter=to_rgb)``, 16-bit and float tiles scaled, errors naming the file),
channel first, resize to ``image_size`` (area interpolation), scale 0-255 to [0, 1]. ``monai.data.CacheDataset``
caches up to the first random transform, so this head is decoded once per tile and run. The training chain adds
flips, 90-degree turns and mild intensity jitter: H&E tiles have no canonical orientation, and stain intensity varies
between slides. The bundles pass every probability and range from their JSON, where a user sees and changes it.
"""

from __future__ import annotations

import torch
from monai.transforms import (
    AsDiscreted,
    CastToTyped,
    Compose,
    EnsureChannelFirstd,
    EnsureTyped,
    RandFlipd,
    RandRotate90d,
    RandScaleIntensityd,
    RandShiftIntensityd,
    Resized,
)

from monai_kdml.data.datasets import AfterCache
from monai_kdml.data.images import MAX_IMAGE_PIXELS
from monai_kdml.data.loading import LoadRGBImaged

__all__ = ["MIN_TILE_SIZE", "check_tile_size", "tile_transforms"]

MIN_TILE_SIZE = 32
"""Smallest ``image_size`` the presets take: ResNets and DenseNets halve the tile five times."""

IMAGE, LABEL = "image", "label"


def check_tile_size(image_size: int) -> None:
    """Raise unless ``image_size`` is a size the networks can take (MONAI's resize keeps non-positive sizes).

    Raises:
        ValueError: naming ``image_size``.
    """
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < MIN_TILE_SIZE:
        raise ValueError(
            f"`image_size` must be an integer >= {MIN_TILE_SIZE} pixels (the networks halve a tile five times), "
            f"got {image_size!r}."
        )


def tile_transforms(
    image_size: int,
    train: bool = False,
    labels: bool = True,
    flip_prob: float = 0.5,
    rotate90_prob: float = 0.5,
    intensity_prob: float = 0.5,
    scale_factor: float = 0.1,
    shift_offset: float = 0.05,
    max_image_pixels: int | None = MAX_IMAGE_PIXELS,
) -> Compose:
    """Load, resize and scale a tile to ``(3, image_size, image_size)`` float32 in [0, 1]; augment when training.

    Args:
        image_size: side of the square network input, ``>= MIN_TILE_SIZE``.
        train: add the random flips (each axis), 90-degree rotations and intensity scale/shift.
        labels: cast ``"label"`` to int64 as well (``False`` for unlabelled inference data).
        flip_prob: probability of a flip along each axis.
        rotate90_prob: probability of a rotation by 90, 180 or 270 degrees.
        intensity_prob: probability of each of the intensity scale and shift.
        scale_factor: intensity scaled by ``1 + u``, ``u ~ U(-scale_factor, scale_factor)``.
        shift_offset: intensity shifted by ``u ~ U(-shift_offset, shift_offset)``.
        max_image_pixels: largest tile loaded (PIL's limit, set in every loading process); as in the pre-flight.

    Returns:
        A ``Compose``; the bundles' ``EpochSeedHandler`` reseeds its random transforms every epoch.

    Raises:
        ValueError: ``image_size`` that the networks cannot take, or a probability outside [0, 1].
    """
    check_tile_size(image_size)
    for name, prob in (("flip_prob", flip_prob), ("rotate90_prob", rotate90_prob), ("intensity_prob", intensity_prob)):
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"`{name}` must be a probability in [0, 1], got {prob}.")
    keys, dtypes = ([IMAGE, LABEL], [torch.float32, torch.long]) if labels else ([IMAGE], [torch.float32])
    steps: list = [
        LoadRGBImaged(IMAGE, max_image_pixels=max_image_pixels),
        EnsureChannelFirstd(IMAGE),
        Resized(IMAGE, spatial_size=(image_size, image_size), mode="area"),
        AsDiscreted(IMAGE, rounding="torchrounding"),
        CastToTyped(IMAGE, dtype=torch.uint8),
        AfterCache(IMAGE),  # the cached part ends here: a resized uint8 tile (a quarter of float32)
    ]
    if train:
        steps += [
            RandFlipd(IMAGE, prob=flip_prob, spatial_axis=0),
            RandFlipd(IMAGE, prob=flip_prob, spatial_axis=1),
            RandRotate90d(IMAGE, prob=rotate90_prob, max_k=3),
            RandScaleIntensityd(IMAGE, factors=scale_factor, prob=intensity_prob),
            RandShiftIntensityd(IMAGE, offsets=shift_offset, prob=intensity_prob),
        ]
    return Compose([*steps, EnsureTyped(keys, dtype=dtypes)])
