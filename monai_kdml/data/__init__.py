"""Generic data utilities shared by the apps: image checks, the one RGB loader, atomically built cache folders and
the rule of what an evaluation scores, random per-student views of a batch."""

from monai_kdml.data.batches import check_single_sample_batches, drop_last_batch_of_one
from monai_kdml.data.cache import ensure_cache_folder
from monai_kdml.data.datasets import CACHE_MODES, AfterCache, cached_bytes, cached_dataset, choose_cache
from monai_kdml.data.evaluation import EvaluationSplit, external_split, held_out_split
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
from monai_kdml.data.views import BatchAugment
from monai_kdml.memory import GIB

__all__ = [
    "CACHE_MODES",
    "GIB",
    "IMAGE_SUFFIXES",
    "MAX_IMAGE_PIXELS",
    "AfterCache",
    "BatchAugment",
    "EvaluationSplit",
    "ImageFileError",
    "ImageInfo",
    "LoadRGBImaged",
    "bomb_error",
    "cached_bytes",
    "cached_dataset",
    "check_single_sample_batches",
    "choose_cache",
    "drop_last_batch_of_one",
    "ensure_cache_folder",
    "external_split",
    "held_out_split",
    "inspect_image",
    "is_image_file",
    "load_rgb",
    "scaling_of",
    "set_max_image_pixels",
    "to_rgb",
]
