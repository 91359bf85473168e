"""Polyp detection on raw video frames: ``(N, H, W, 3)`` uint8 RGB in, boxes in the frame's own pixels out.

:class:`FrameDetector` is the contract every backend meets (this module's PyTorch-eager :class:`TorchFrameDetector`,
an ONNX Runtime one beside it): a callable taking a batch of frames of one size, as a video decoder gives them, and
returning per frame ``{"boxes": float32 (n, 4) [x1, y1, x2, y2], "scores": float32 (n,), "labels": int64 (n,)}`` in
that frame's pixel coordinates (``x`` along its width; continuous pixel edges, as everywhere in this package).

The networks see what the bundle's image pipeline (:func:`~monai_kdml.apps.polyp.polyp_inference_transforms`) gives
them: the longest side resized to ``image_size`` (area interpolation, rounded to 8 bits), zero-padded at the end to a
square, intensities in [0, 1], and MONAI's ``(C, W, H)`` axis order (``PILReader`` order: ``x`` first), which
:class:`~monai.apps.detection.networks.retinanet_detector.RetinaNetDetector` and its boxes assume. A frame given in
the usual ``(H, W)`` order without that transpose gives boxes with ``x`` and ``y`` swapped; :func:`frames_to_input`
does the transpose and :func:`boxes_to_frame` maps the boxes back, so callers never see MONAI's layout.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from monai.utils import look_up_option
from torch import Tensor, nn

from monai_kdml.apps.polyp.inference import RetinaNetInferer
from monai_kdml.apps.polyp.networks import DetectionPreset

__all__ = [
    "VIDEO_BACKENDS",
    "VIDEO_NETWORKS",
    "FrameDetector",
    "TorchFrameDetector",
    "boxes_to_frame",
    "build_frame_detector",
    "check_video_backend",
    "frames_to_input",
    "load_video_network",
    "resized_size",
]

VIDEO_NETWORKS = ("ensemble", "teacher")
"""Networks a video can be run with: the deployed student ensemble (``models/model.pt``) or the teacher
(``models/best_networks.pt``), e.g. to compare their frame rates."""

VIDEO_BACKENDS = ("torch", "onnxruntime")
"""Frame detector backends wired into ``bundles/polyp/inference.json`` (``--video_backend``)."""


@runtime_checkable
class FrameDetector(Protocol):
    """Boxes for a batch of video frames, whatever runs the network (PyTorch eager, ONNX Runtime, ...).

    ``frames``: ``(N, H, W, 3)`` uint8 RGB frames of one size (the video's own). Returns one mapping per frame:
    ``"boxes"`` float32 ``(n, 4)`` xyxy in the frame's pixels, ``"scores"`` float32 ``(n,)``, ``"labels"`` int64
    ``(n,)``; ``n`` may be 0.
    """

    def __call__(self, frames: np.ndarray) -> Sequence[Mapping[str, Any]]: ...


def check_video_backend(backend: str) -> str:
    """``backend`` if it is one of :data:`VIDEO_BACKENDS`, else a ``ValueError`` naming ``video_backend``."""
    try:
        return str(look_up_option(backend, VIDEO_BACKENDS))
    except ValueError as err:
        raise ValueError(f"`video_backend`: {err}") from None


def resized_size(width: int, height: int, image_size: int) -> tuple[int, int]:
    """``(width, height)`` after resizing the longest side to ``image_size`` (MONAI ``Resize(size_mode="longest")``)."""
    scale = image_size / max(width, height)
    return round(width * scale), round(height * scale)


def frames_to_input(frames: np.ndarray | Tensor, image_size: int, device: torch.device | str = "cpu") -> Tensor:
    """``(N, H, W, 3)`` uint8 frames -> the networks' ``(N, 3, S, S)`` input in MONAI's ``(C, W, H)`` order.

    The longest side is resized to ``S = image_size`` (area interpolation, rounded to 8 bits as the bundle's image
    pipeline does), the rest zero-padded at the end, intensities scaled to [0, 1]; pixel ``(x, y)`` of a frame lands
    at ``[:, x * s, y * s]`` with ``s = S / max(H, W)``.

    Raises:
        ValueError: not a ``(N, H, W, 3)`` array.
    """
    frames_t = torch.as_tensor(frames)
    if frames_t.ndim != 4 or frames_t.shape[-1] != 3:
        raise ValueError(f"frames must be (N, H, W, 3) RGB, got shape {tuple(frames_t.shape)}.")
    height, width = int(frames_t.shape[1]), int(frames_t.shape[2])
    x = frames_t.to(device).permute(0, 3, 2, 1).float()  # (N, 3, W, H): x first, as MONAI's PILReader
    new_w, new_h = resized_size(width, height, image_size)
    if (new_w, new_h) != (width, height):
        x = F.interpolate(x, size=(new_w, new_h), mode="area").round().clamp(0, 255)
    x = F.pad(x / 255.0, (0, image_size - new_h, 0, image_size - new_w))
    return x


def boxes_to_frame(boxes: Tensor, width: int, height: int, image_size: int) -> Tensor:
    """Boxes on the network's ``S x S`` input -> xyxy boxes in the frame's pixels, clipped to the frame.

    The inverse of :func:`frames_to_input`'s geometry: a pure scale by ``W / w'`` along x and ``H / h'`` along y
    (``w'``, ``h'``: the resized size), as :func:`~monai_kdml.apps.polyp.box_to_original` computes from MONAI's
    affine for the bundle's image pipeline.
    """
    new_w, new_h = resized_size(width, height, image_size)
    scale = boxes.new_tensor([width / new_w, height / new_h, width / new_w, height / new_h])
    out = boxes.float() * scale
    limits = boxes.new_tensor([width, height, width, height], dtype=torch.float32)
    return torch.minimum(out.clamp(min=0), limits)


class TorchFrameDetector:
    """A :class:`FrameDetector` running a RetinaNet-like network in PyTorch eager mode.

    Example::

        detector = TorchFrameDetector(network, RetinaNetInferer(spec.anchor_generator()), image_size=160)
        result = detector(frames)  # frames: (N, H, W, 3) uint8
        result[0]["boxes"]        # (n, 4) xyxy in pixels of frame 0

    Args:
        network: the detector network (the bundle's ``RetinaNetHeadEnsemble`` or a teacher RetinaNet), with its
            weights loaded; it is run in eval mode.
        inferer: decodes the network's head outputs into boxes (score threshold, NMS, boxes per frame).
        image_size: the square side the network was trained at (the bundle record's ``image_size``).
        device: where the network runs; frames are moved there.
    """

    def __init__(
        self, network: nn.Module, inferer: RetinaNetInferer, image_size: int, device: torch.device | str = "cpu"
    ) -> None:
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 16:
            raise ValueError(f"`image_size` must be an int >= 16, got {image_size!r}.")
        self.network, self.inferer, self.image_size = network, inferer, image_size
        self.device = torch.device(device)

    def __call__(self, frames: np.ndarray) -> list[dict[str, np.ndarray]]:
        """Detections of each frame of ``frames`` ``(N, H, W, 3)`` uint8, in its own pixels (see the class doc)."""
        height, width = int(frames.shape[1]), int(frames.shape[2])
        inputs = frames_to_input(frames, self.image_size, self.device)
        detections = self.inferer(inputs, self.network)
        box_key, label_key = self.inferer.box_key, self.inferer.label_key
        results: list[dict[str, np.ndarray]] = []
        for det in detections:
            boxes = boxes_to_frame(det[box_key], width, height, self.image_size)
            results.append(
                {
                    "boxes": boxes.cpu().numpy().astype(np.float32).reshape(-1, 4),
                    "scores": det[label_key + "_scores"].detach().cpu().numpy().astype(np.float32),
                    "labels": det[label_key].detach().cpu().numpy().astype(np.int64),
                }
            )
        return results


def load_video_network(
    which: str,
    ensemble: nn.Module,
    preset: DetectionPreset,
    ckpt_dir: str | Path,
    device: torch.device | str = "cpu",
) -> nn.Module:
    """The trained network a video runs with, weights loaded, in eval mode on ``device``.

    Args:
        which: ``"ensemble"``: ``ensemble`` (the bundle's ``network_def``) with ``<ckpt_dir>/model.pt``;
            ``"teacher"``: ``preset.build_teacher()`` with the ``"teacher"`` entry of ``<ckpt_dir>/best_networks.pt``.
        ensemble: the bundle's (untrained) ``network_def``.
        preset: the trained run's detector preset (the record's ``detector``).
        ckpt_dir: the bundle's ``models/`` folder.
        device: where to put the network.

    Raises:
        ValueError: ``which`` is not one of :data:`VIDEO_NETWORKS` (names ``video_network``).
        FileNotFoundError: the checkpoint is missing, naming it.
    """
    try:
        which = look_up_option(which, VIDEO_NETWORKS)
    except ValueError as err:
        raise ValueError(f"`video_network`: {err}") from None
    path = Path(ckpt_dir) / ("model.pt" if which == "ensemble" else "best_networks.pt")
    if not path.is_file():
        raise FileNotFoundError(
            f"`video_network` {which!r} needs {path}, which does not exist; train the bundle first."
        )
    state = torch.load(path, map_location=device, weights_only=True)
    network = ensemble if which == "ensemble" else preset.build_teacher()
    network.load_state_dict(state if which == "ensemble" else state["teacher"])
    return network.to(device).eval()


def _onnx_frame_detector(network: str, onnx_file: str | Path | None, operating_score: float) -> FrameDetector:
    """The exported ensemble in ONNX Runtime, its candidates cut at ``operating_score`` as the torch path's."""
    if network != "ensemble":
        raise ValueError(f"`video_backend` onnxruntime runs the exported ensemble; `video_network` is {network!r}.")
    if onnx_file is None or not Path(onnx_file).is_file():
        raise FileNotFoundError(
            f"`video_backend` onnxruntime needs the exported detector {onnx_file}: run `python -m monai.bundle run "
            "export --config_file bundles/polyp/inference.json` with the same --bundle_root first."
        )
    from monai_kdml.apps.polyp.runtime import OnnxFrameDetector

    detector = OnnxFrameDetector(onnx_file)
    if operating_score > detector.settings.score_thresh:  # as the torch path: candidates below it never reach NMS
        detector = OnnxFrameDetector(onnx_file, {"score_thresh": min(float(operating_score), 0.999)})
    return detector


def build_frame_detector(
    backend: str,
    network: str,
    ensemble: nn.Module,
    preset: DetectionPreset,
    ckpt_dir: str | Path,
    inferer: RetinaNetInferer,
    image_size: int,
    device: torch.device | str = "cpu",
    operating_score: float = 0.0,
    onnx_file: str | Path | None = None,
) -> FrameDetector:
    """The bundle's video detector: ``backend`` (one of :data:`VIDEO_BACKENDS`) running the trained ``network``.

    Args:
        backend: ``"torch"``: :class:`TorchFrameDetector` (PyTorch eager); ``"onnxruntime"``: the exported ensemble
            ``onnx_file`` (``inference.json`` ``run export``) in ONNX Runtime,
            :class:`~monai_kdml.apps.polyp.runtime.OnnxFrameDetector` (the ensemble only).
        network: ``"ensemble"`` or ``"teacher"`` (see :func:`load_video_network`).
        ensemble, preset, ckpt_dir, device: see :func:`load_video_network`.
        inferer, image_size: see :class:`TorchFrameDetector`.
        operating_score: the score the video's boxes are cut at. Candidates below it are dropped before decoding
            and NMS (``inferer``'s threshold raised to it, below 1): the boxes at or above it are the same, since
            NMS only lets higher-scoring boxes suppress a box, and a frame's decoding and NMS cost a fraction.

    Raises:
        ValueError: an unknown backend or network, naming the bundle key.
        FileNotFoundError: ``"onnxruntime"`` without the exported file.
    """
    backend = check_video_backend(backend)
    if backend == "onnxruntime":
        return _onnx_frame_detector(network, onnx_file, operating_score)
    trained = load_video_network(network, ensemble, preset, ckpt_dir, device)
    if operating_score > inferer.score_thresh:
        inferer = RetinaNetInferer(
            inferer.anchor_generator,
            score_thresh=min(float(operating_score), 0.999),
            nms_thresh=inferer.nms_thresh,
            detections_per_img=inferer.detections_per_img,
            topk_candidates_per_level=inferer.topk_candidates_per_level,
            box_key=inferer.box_key,
            label_key=inferer.label_key,
        )
    return TorchFrameDetector(trained, inferer, image_size, device)
