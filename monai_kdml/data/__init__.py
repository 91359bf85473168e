"""Data: Kather MSI tiles and Kvasir-SEG frames (datalists, pre-flight checks, demo generators, box transforms)."""

from monai_kdml.data.detection_batch import detection_collate, detection_prepare_batch
from monai_kdml.data.detection_transforms import (
    box_to_original,
    polyp_inference_transforms,
    polyp_train_transforms,
    polyp_val_transforms,
)
from monai_kdml.data.images import ImageFileError, ImageInfo, inspect_image, to_rgb
from monai_kdml.data.kather import (
    check_tiles,
    kather_datalist,
    patient_id_from_path,
    sample_weights,
    split_by_patient,
    undersample,
)
from monai_kdml.data.kvasir import kvasir_datalist, split_by_id
from monai_kdml.data.msi import MSIDatalists, prepare_msi_datalists, tile_datalist
from monai_kdml.data.msi_demo import ensure_msi_demo, make_msi_demo
from monai_kdml.data.polyp import PolypDatalists, polyp_inference_datalist, prepare_polyp_datalists
from monai_kdml.data.polyp_demo import ensure_polyp_demo, make_polyp_demo

__all__ = [
    "ImageFileError",
    "ImageInfo",
    "MSIDatalists",
    "PolypDatalists",
    "box_to_original",
    "check_tiles",
    "detection_collate",
    "detection_prepare_batch",
    "ensure_msi_demo",
    "ensure_polyp_demo",
    "inspect_image",
    "kather_datalist",
    "kvasir_datalist",
    "make_msi_demo",
    "make_polyp_demo",
    "patient_id_from_path",
    "polyp_inference_datalist",
    "polyp_inference_transforms",
    "polyp_train_transforms",
    "polyp_val_transforms",
    "prepare_msi_datalists",
    "prepare_polyp_datalists",
    "sample_weights",
    "split_by_id",
    "split_by_patient",
    "tile_datalist",
    "to_rgb",
    "undersample",
]
