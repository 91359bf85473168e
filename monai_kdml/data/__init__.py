"""Generic data utilities shared by the apps: image checks, the one RGB loader, atomically built cache folders."""

from monai_kdml.data.images import (
    IMAGE_SUFFIXES,
    MAX_IMAGE_PIXELS,
    ImageFileError,
    ImageInfo,
    bomb_error,
    inspect_image,
    is_image_file,
    scaling_of,
    set_max_image_pixels,
    to_rgb,
)
from monai_kdml.data.loading import LoadRGBImaged, load_rgb

__all__ = [
    "IMAGE_SUFFIXES",
    "MAX_IMAGE_PIXELS",
    "ImageFileError",
    "ImageInfo",
    "LoadRGBImaged",
    "bomb_error",
    "inspect_image",
    "is_image_file",
    "load_rgb",
    "scaling_of",
    "set_max_image_pixels",
    "to_rgb",
]
