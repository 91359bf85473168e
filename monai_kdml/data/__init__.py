"""Generic data utilities shared by the apps: image decoding checks, atomically built cache folders and the rule
of what an evaluation scores."""

from monai_kdml.data.cache import ensure_cache_folder
from monai_kdml.data.evaluation import EvaluationSplit, external_split, held_out_split
from monai_kdml.data.images import IMAGE_SUFFIXES, ImageFileError, ImageInfo, inspect_image, to_rgb

__all__ = [
    "IMAGE_SUFFIXES",
    "EvaluationSplit",
    "ImageFileError",
    "ImageInfo",
    "ensure_cache_folder",
    "external_split",
    "held_out_split",
    "inspect_image",
    "to_rgb",
]
