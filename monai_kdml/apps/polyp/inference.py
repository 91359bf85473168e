"""Box predictions from any RetinaNet-like network as a MONAI :class:`~monai.inferers.Inferer`.

Evaluators call ``inferer(inputs, network)`` for the teacher, each student and the ensemble in turn;
:class:`RetinaNetInferer` wraps each network in a
:class:`~monai.apps.detection.networks.retinanet_detector.RetinaNetDetector` once (cached) sharing one anchor
generator, and returns its decoded, NMS-filtered boxes. Inference touches neither the torchvision matcher nor the
sampler, so it runs without torchvision.
"""

from __future__ import annotations

from typing import Any

import torch
from monai.apps.detection.networks.retinanet_detector import RetinaNetDetector
from monai.apps.detection.utils.anchor_utils import AnchorGenerator
from monai.inferers import Inferer
from torch import Tensor, nn

__all__ = ["RetinaNetInferer"]


class RetinaNetInferer(Inferer):
    """Run a RetinaNet-like ``network`` through a cached RetinaNetDetector and return its detections.

    Per image the result is ``{box_key: (N, 4) xyxy pixels, label_key: (N,) int64, label_key + "_scores": (N,)}``,
    at most ``detections_per_img`` boxes scoring ``>= score_thresh`` after per-class NMS at ``nms_thresh``; boxes are
    clipped to the image. The network runs in eval mode for the call and gets its previous mode back afterwards.
    One detector is kept per network (it holds a reference to it); call :meth:`clear` to drop them.

    Args:
        anchor_generator: the generator shared by every network (e.g. ``DetectorSpec.anchor_generator()``).
        score_thresh: minimum sigmoid score of a kept box.
        nms_thresh: IoU above which the lower-scoring box of a class is suppressed.
        detections_per_img: maximum boxes per image.
        topk_candidates_per_level: boxes considered per level before NMS.
        box_key, label_key: output keys; scores are under ``label_key + "_scores"``.
    """

    def __init__(
        self,
        anchor_generator: AnchorGenerator,
        score_thresh: float = 0.05,
        nms_thresh: float = 0.5,
        detections_per_img: int = 100,
        topk_candidates_per_level: int = 1000,
        box_key: str = "box",
        label_key: str = "label",
    ) -> None:
        super().__init__()
        if not 0.0 <= score_thresh < 1.0 or not 0.0 < nms_thresh <= 1.0 or detections_per_img < 1:
            raise ValueError(
                "need 0 <= score_thresh < 1, 0 < nms_thresh <= 1 and detections_per_img >= 1, got "
                f"{score_thresh}, {nms_thresh}, {detections_per_img}."
            )
        self.anchor_generator = anchor_generator
        self.score_thresh, self.nms_thresh = score_thresh, nms_thresh
        self.detections_per_img, self.topk_candidates_per_level = detections_per_img, topk_candidates_per_level
        self.box_key, self.label_key = box_key, label_key
        self._detectors: dict[int, RetinaNetDetector] = {}

    def detector(self, network: nn.Module) -> RetinaNetDetector:
        """The cached inference detector around ``network`` (built on first use)."""
        detector = self._detectors.get(id(network))
        if detector is None or detector.network is not network:
            detector = RetinaNetDetector(network=network, anchor_generator=self.anchor_generator)
            detector.set_target_keys(box_key=self.box_key, label_key=self.label_key)
            detector.set_box_selector_parameters(
                score_thresh=self.score_thresh,
                topk_candidates_per_level=self.topk_candidates_per_level,
                nms_thresh=self.nms_thresh,
                detections_per_img=self.detections_per_img,
            )
            self._detectors[id(network)] = detector
        return detector

    def clear(self) -> None:
        """Forget every cached detector."""
        self._detectors.clear()

    def __call__(  # type: ignore[override]
        self, inputs: Tensor, network: nn.Module, *args: Any, **kwargs: Any
    ) -> list[dict[str, Tensor]]:
        """Detections of ``network`` on ``inputs`` ``(B, C, *spatial)`` (padded to ``size_divisible`` if needed)."""
        detector = self.detector(network)
        was_training = network.training
        detector.eval()
        try:
            with torch.no_grad():
                return detector(inputs)  # type: ignore[return-value]
        finally:
            network.train(was_training)
