"""Tile classification, MSI vs MSS by default: the classes named in the config, Kather et al. layouts, class
folders or a CSV of labels, demo tiles, pre-flight checks, patient-level metrics, the evaluation report and the
inference writer; whole-slide images (:mod:`.slides`, :mod:`.slide_tiles`, :mod:`.slide_inference`).

Reference: Kather et al., "Deep learning can predict microsatellite instability directly from histology in
gastrointestinal cancer", Nature Medicine 2019.
"""

from monai_kdml.apps.msi.classes import KATHER_CLASS_NAMES, TileClasses, check_num_classes, tile_classes
from monai_kdml.apps.msi.datalists import (
    MSIDatalists,
    evaluation_split,
    prepare_msi_datalists,
    tile_datalist,
)
from monai_kdml.apps.msi.demo import ensure_msi_demo, make_msi_demo
from monai_kdml.apps.msi.kather import (
    CLASS_FOLDERS,
    DatasetLayoutError,
    kather_datalist,
    patient_id_from_path,
    sample_weights,
    split_by_patient,
    undersample,
)
from monai_kdml.apps.msi.label_csv import read_label_csv
from monai_kdml.apps.msi.patients import (
    PATIENT_KEY,
    PatientAUC,
    PatientScoreOutput,
    patient_auc_metrics,
    patient_level_scores,
)
from monai_kdml.apps.msi.predictions import TilePredictionWriter
from monai_kdml.apps.msi.report import ClassificationReport
from monai_kdml.apps.msi.slide_tiles import training_tile_mpp
from monai_kdml.apps.msi.tiles import TileCheckError, TileCheckReport, check_tiles
from monai_kdml.apps.msi.transforms import MIN_TILE_SIZE, check_tile_size, tile_transforms

__all__ = [
    "CLASS_FOLDERS",
    "KATHER_CLASS_NAMES",
    "MIN_TILE_SIZE",
    "PATIENT_KEY",
    "ClassificationReport",
    "DatasetLayoutError",
    "MSIDatalists",
    "PatientAUC",
    "PatientScoreOutput",
    "TileCheckError",
    "TileCheckReport",
    "TileClasses",
    "TilePredictionWriter",
    "check_num_classes",
    "check_tile_size",
    "check_tiles",
    "ensure_msi_demo",
    "evaluation_split",
    "kather_datalist",
    "make_msi_demo",
    "patient_auc_metrics",
    "patient_id_from_path",
    "patient_level_scores",
    "prepare_msi_datalists",
    "read_label_csv",
    "sample_weights",
    "split_by_patient",
    "tile_classes",
    "tile_datalist",
    "tile_transforms",
    "training_tile_mpp",
    "undersample",
]
