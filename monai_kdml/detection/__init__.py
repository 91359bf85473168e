"""Polyp detection with KD + ML: aligned RetinaNet teachers/students, their losses, the student ensemble, inference.

Built on ``monai.apps.detection`` and usable without torchvision (ATSS matcher, hard-negative sampler, MONAI NMS).
"""

from __future__ import annotations

from monai_kdml.detection.ensemble import (
    RetinaNetHeadEnsemble,
    average_head_outputs,
    fuse_detections,
    weighted_box_fusion,
)
from monai_kdml.detection.handlers import (
    DecollateDetections,
    DetectionBoxImages,
    DetectionPredictionWriter,
    DetectionSummaryWriter,
    FuseDetectionsd,
    decollate_detections,
    draw_boxes,
)
from monai_kdml.detection.inference import RetinaNetInferer
from monai_kdml.detection.losses import (
    AnchorMatch,
    DetectionKDMLLoss,
    RetinaNetGTLoss,
    box_distillation,
    distillation_anchor_mask,
    sigmoid_distillation,
    sigmoid_kl_div,
)
from monai_kdml.detection.networks import (
    BACKBONES,
    PRESETS,
    DetectionPreset,
    DetectorSpec,
    NetworkConfig,
    ResNetFPNBackbone,
    build_retinanet,
    check_anchor_alignment,
    get_preset,
)

__all__ = [
    "BACKBONES",
    "PRESETS",
    "AnchorMatch",
    "DecollateDetections",
    "DetectionBoxImages",
    "DetectionKDMLLoss",
    "DetectionPredictionWriter",
    "DetectionPreset",
    "DetectionSummaryWriter",
    "DetectorSpec",
    "FuseDetectionsd",
    "NetworkConfig",
    "ResNetFPNBackbone",
    "RetinaNetGTLoss",
    "RetinaNetHeadEnsemble",
    "RetinaNetInferer",
    "average_head_outputs",
    "box_distillation",
    "build_retinanet",
    "check_anchor_alignment",
    "decollate_detections",
    "distillation_anchor_mask",
    "draw_boxes",
    "fuse_detections",
    "get_preset",
    "sigmoid_distillation",
    "sigmoid_kl_div",
    "weighted_box_fusion",
]
