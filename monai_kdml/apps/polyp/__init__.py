"""Polyp detection with KD + ML: Kvasir-SEG and generic frames, demo frames, box transforms and batching, aligned
RetinaNet teachers/students, their losses, the student ensemble, inference, COCO/FROC metrics and handlers.

Built on ``monai.apps.detection`` and usable without torchvision (ATSS matcher, hard-negative sampler, MONAI NMS).
"""

from __future__ import annotations

from monai_kdml.apps.polyp.batching import detection_collate, detection_prepare_batch, detection_targets
from monai_kdml.apps.polyp.datalists import (
    PolypDatalists,
    evaluation_split,
    polyp_inference_datalist,
    prepare_polyp_datalists,
    split_by_id,
)
from monai_kdml.apps.polyp.demo import ensure_polyp_demo, make_polyp_demo
from monai_kdml.apps.polyp.ensemble import (
    RetinaNetHeadEnsemble,
    average_head_outputs,
    fuse_detections,
    weighted_box_fusion,
)
from monai_kdml.apps.polyp.evaluation import (
    FRAME_DETECTIONS,
    FrameDetectionsWriter,
    cohort_fusion,
    frame_matches,
    read_frame_detections,
)
from monai_kdml.apps.polyp.gt_loss import AnchorMatch, RetinaNetGTLoss
from monai_kdml.apps.polyp.handlers import (
    DecollateDetections,
    DetectionBoxImages,
    DetectionPredictionWriter,
    DetectionSummaryWriter,
    FuseDetectionsd,
    decollate_detections,
    draw_boxes,
)
from monai_kdml.apps.polyp.inference import RetinaNetInferer
from monai_kdml.apps.polyp.kvasir import FrameLayout, PreflightReport, kvasir_datalist, kvasir_preflight
from monai_kdml.apps.polyp.losses import (
    DetectionKDMLLoss,
    box_distillation,
    distillation_anchor_mask,
    sigmoid_distillation,
    sigmoid_kl_div,
)
from monai_kdml.apps.polyp.metrics import DetectionMetrics, DetectionOutput, detection_metrics
from monai_kdml.apps.polyp.networks import (
    BACKBONES,
    PRESETS,
    DetectionPreset,
    DetectorSpec,
    NetworkConfig,
    ResNetFPNBackbone,
    build_retinanet,
    check_anchor_alignment,
    check_frame_size,
    get_preset,
    preset_from_dict,
    preset_to_dict,
)
from monai_kdml.apps.polyp.transforms import (
    box_to_original,
    polyp_inference_transforms,
    polyp_train_transforms,
    polyp_val_transforms,
)

__all__ = [
    "BACKBONES",
    "FRAME_DETECTIONS",
    "PRESETS",
    "AnchorMatch",
    "DecollateDetections",
    "DetectionBoxImages",
    "DetectionKDMLLoss",
    "DetectionMetrics",
    "DetectionOutput",
    "DetectionPredictionWriter",
    "DetectionPreset",
    "DetectionSummaryWriter",
    "DetectorSpec",
    "FrameDetectionsWriter",
    "FrameLayout",
    "FuseDetectionsd",
    "NetworkConfig",
    "PolypDatalists",
    "PreflightReport",
    "ResNetFPNBackbone",
    "RetinaNetGTLoss",
    "RetinaNetHeadEnsemble",
    "RetinaNetInferer",
    "average_head_outputs",
    "box_distillation",
    "box_to_original",
    "build_retinanet",
    "check_anchor_alignment",
    "check_frame_size",
    "cohort_fusion",
    "decollate_detections",
    "detection_collate",
    "detection_metrics",
    "detection_prepare_batch",
    "detection_targets",
    "distillation_anchor_mask",
    "draw_boxes",
    "ensure_polyp_demo",
    "evaluation_split",
    "frame_matches",
    "fuse_detections",
    "get_preset",
    "kvasir_datalist",
    "kvasir_preflight",
    "make_polyp_demo",
    "polyp_inference_datalist",
    "polyp_inference_transforms",
    "polyp_train_transforms",
    "polyp_val_transforms",
    "prepare_polyp_datalists",
    "preset_from_dict",
    "preset_to_dict",
    "read_frame_detections",
    "sigmoid_distillation",
    "sigmoid_kl_div",
    "split_by_id",
    "weighted_box_fusion",
]
