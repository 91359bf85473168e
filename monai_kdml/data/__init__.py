"""Generic data utilities shared by the apps: image decoding checks and atomically built cache folders."""

from monai_kdml.data.images import IMAGE_SUFFIXES, ImageFileError, ImageInfo, inspect_image, to_rgb

__all__ = ["IMAGE_SUFFIXES", "ImageFileError", "ImageInfo", "inspect_image", "to_rgb"]
