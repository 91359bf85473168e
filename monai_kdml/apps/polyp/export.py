"""The polyp detector as a tensor-only network that exports to ONNX, ``torch.export`` and TorchScript.

MONAI's export tools refuse dict outputs, and a RetinaNet's head outputs mean nothing without the anchors and the
box decoding of :class:`~monai.apps.detection.networks.retinanet_detector.RetinaNetDetector`. :class:`RetinaNetBoxes`
puts both in the graph: it takes frames in the usual ``(B, 3, H, W)`` layout (it moves them to MONAI's ``(B, 3, W, H)``
itself) and returns ``pred`` ``(B, 4 + C, N)``: rows 0-3 the decoded ``[x_min, y_min, x_max, y_max]`` box of each of
the ``N`` anchors in input pixels (x along W, y along H), rows ``4 + c`` the sigmoid score of class ``c``; anchors in
MONAI's order, level by level (finest first). What is left -- per-level top-k, clipping, NMS and mapping to the
caller's frame -- is data-dependent and runs in numpy (:mod:`monai_kdml.apps.polyp.runtime`), with the settings this
module writes into the ONNX file's metadata.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.apps.detection.networks.retinanet_detector import RetinaNetDetector
from monai.apps.detection.utils.anchor_utils import AnchorGenerator
from monai.data.box_utils import CenterSizeMode, StandardMode, convert_box_mode
from monai.inferers import Inferer
from torch import Tensor, nn

from monai_kdml.apps.polyp.runtime import DecoderSettings, FrameDecoder
from monai_kdml.networks.export import EXPORT_FORMATS, ExportCheck, export_network, onnx_session, trained_metadata

__all__ = [
    "OnnxDetectionInferer",
    "RetinaNetBoxes",
    "decoder_settings",
    "export_detector",
    "export_detector_checkpoint",
]


def _flatten_maps(maps: list[Tensor], num_anchors: int) -> Tensor:
    """Per-level ``(B, A * K, w, h)`` maps -> ``(B, sum(w h A), K)``, MONAI's ``RetinaNetDetector._reshape_maps``."""
    flat: list[Tensor] = []
    for result_map in maps:
        batch, channels = result_map.shape[0], result_map.shape[1]
        view = result_map.reshape(batch, num_anchors, channels // num_anchors, result_map.shape[2], result_map.shape[3])
        flat.append(view.permute(0, 3, 4, 1, 2).reshape(batch, -1, channels // num_anchors))
    return torch.cat(flat, dim=1)


class RetinaNetBoxes(nn.Module):
    """A RetinaNet-like network plus its anchors and box decoding: ``(B, 3, S, S)`` -> ``pred (B, 4 + C, N)``.

    The decoding is :meth:`monai.apps.detection.utils.box_coder.BoxCoder.decode_single` with the coder of a default
    :class:`RetinaNetDetector` (weights and ``log(1000/16)`` clip), written without its NaN check, which branches
    on data and so cannot be exported; a test holds the two equal.

    Args:
        network: a RetinaNet or :class:`~monai_kdml.apps.polyp.RetinaNetHeadEnsemble` (2D, ``cls_key``/``box_reg_key``
            dict output, ``num_anchors``, ``num_classes``).
        anchor_generator: the detector's anchor generator (``DetectorSpec.anchor_generator()``).
        image_size: the side ``S`` of the square frames the network was trained on (anchors are fixed for it).

    Attributes:
        level_sizes: anchors per pyramid level, finest first (they sum to ``N``).
    """

    def __init__(self, network: nn.Module, anchor_generator: AnchorGenerator, image_size: int) -> None:
        super().__init__()
        if int(network.spatial_dims) != 2:  # type: ignore[arg-type]
            raise ValueError("RetinaNetBoxes exports 2D detectors only.")
        self.network = network
        self.num_anchors: int = int(network.num_anchors)  # type: ignore[arg-type]
        self.num_classes: int = int(network.num_classes)  # type: ignore[arg-type]
        self.cls_key, self.box_reg_key = str(network.cls_key), str(network.box_reg_key)
        self.image_size = int(image_size)
        coder = RetinaNetDetector(network=network, anchor_generator=anchor_generator).box_coder
        self.weights: list[float] = [float(w) for w in coder.weights]
        self.clip: float = float(coder.boxes_xform_clip)
        was_training = network.training
        network.eval()
        with torch.no_grad():
            probe = torch.zeros(1, 3, self.image_size, self.image_size, device=next(network.parameters()).device)
            cls_maps = network(probe)[self.cls_key]
            anchors = anchor_generator(probe, cls_maps)[0].float().cpu()
        network.train(was_training)
        self.level_sizes: list[int] = [int(m.shape[2] * m.shape[3] * self.num_anchors) for m in cls_maps]
        centre_size = torch.as_tensor(convert_box_mode(anchors, src_mode=StandardMode, dst_mode=CenterSizeMode))
        # fixed tensors as frozen parameters: they follow .to(device), and TorchScript, torch.export and mypy all
        # type them as tensors (a buffer's annotation trips TorchScript)
        self.anchor_centre = nn.Parameter(centre_size[:, :2].contiguous(), requires_grad=False)
        self.anchor_size = nn.Parameter(centre_size[:, 2:].contiguous(), requires_grad=False)

    def forward(self, images: Tensor) -> Tensor:
        """``(B, 3, S, S)`` frames in [0, 1], (H, W) layout -> ``(B, 4 + C, N)`` boxes and scores of every anchor."""
        out = self.network(images.transpose(2, 3))  # MONAI detectors index images as (x, y): (W, H)
        logits = _flatten_maps(out[self.cls_key], self.num_anchors)
        deltas = _flatten_maps(out[self.box_reg_key], self.num_anchors).float()
        centre_delta = deltas[..., :2] / torch.tensor(self.weights[:2], device=deltas.device)
        size_delta = deltas[..., 2:] / torch.tensor(self.weights[2:], device=deltas.device)
        size_delta = torch.clamp(size_delta, max=self.clip)
        centre = centre_delta * self.anchor_size + self.anchor_centre
        half = 0.5 * (torch.exp(size_delta) * self.anchor_size)
        boxes = torch.cat([centre - half, centre + half], dim=2)
        return torch.cat([boxes, torch.sigmoid(logits.float())], dim=2).transpose(1, 2)


def decoder_settings(
    boxes: RetinaNetBoxes,
    classes: Sequence[str],
    score_thresh: float = 0.05,
    nms_thresh: float = 0.5,
    detections_per_img: int = 100,
    topk_candidates_per_level: int = 1000,
) -> dict[str, Any]:
    """What :class:`~monai_kdml.apps.polyp.runtime.FrameDecoder` needs to read ``boxes``' output (JSON-able);
    the thresholds default to the inference bundle's."""
    return {
        "image_size": boxes.image_size,
        "level_sizes": list(boxes.level_sizes),
        "classes": [str(c) for c in classes],
        "score_thresh": float(score_thresh),
        "nms_thresh": float(nms_thresh),
        "detections_per_img": int(detections_per_img),
        "topk_candidates_per_level": int(topk_candidates_per_level),
    }


def export_detector(
    boxes: RetinaNetBoxes,
    stem: str | Path,
    classes: Sequence[str] = ("polyp",),
    formats: Sequence[str] = EXPORT_FORMATS,
    meta: Mapping[str, Any] | None = None,
    atol: float = 1e-3,
    **selection: Any,
) -> dict[str, ExportCheck]:
    """Export ``boxes`` (the deployed ensemble wrapped in :class:`RetinaNetBoxes`) in ``formats``, each checked
    against eager (see :func:`monai_kdml.networks.export.export_network`); the ONNX file carries the decoder
    settings (``kdml_decoder`` metadata) that :class:`~monai_kdml.apps.polyp.runtime.OnnxFrameDetector` reads.

    Args:
        boxes: the network to export.
        stem: path without suffix (``models/detector`` writes ``models/detector.onnx`` ...).
        classes: class names, label ``i`` is ``classes[i]``.
        formats, meta, atol: see :func:`~monai_kdml.networks.export.export_network`; 1e-3 here: box corners are
            differences of coordinates near the frame size (float32 rounds them to ~1e-5 of it), scores in [0, 1].
        selection: ``score_thresh``, ``nms_thresh``, ``detections_per_img``, ``topk_candidates_per_level``.
    """
    boxes = boxes.eval()
    return export_network(
        boxes,
        stem,
        (2, 3, boxes.image_size, boxes.image_size),
        formats=formats,
        meta=meta,
        onnx_metadata={"kdml_decoder": json.dumps(decoder_settings(boxes, classes, **selection))},
        atol=atol,
    )


def export_detector_checkpoint(
    boxes: RetinaNetBoxes,
    ckpt_file: str | Path,
    stem: str | Path,
    classes: Sequence[str] = ("polyp",),
    meta: Mapping[str, Any] | None = None,
    formats: Sequence[str] = EXPORT_FORMATS,
    **selection: Any,
) -> dict[str, ExportCheck]:
    """Load ``ckpt_file`` (the bundle's ``models/model.pt``) into ``boxes.network`` and :func:`export_detector`
    it; with ``meta``, also write the run's ``metadata.json`` (trained input size) beside the files."""
    boxes.network.load_state_dict(torch.load(str(ckpt_file), map_location="cpu", weights_only=True))
    if meta is not None:
        meta = trained_metadata(meta, boxes.image_size)
        Path(stem).parent.mkdir(parents=True, exist_ok=True)
        (Path(stem).parent / "metadata.json").write_text(json.dumps(meta, indent=4))
    return export_detector(boxes.cpu(), stem, classes, formats=formats, meta=meta, **selection)


class OnnxDetectionInferer(Inferer):
    """:class:`~monai_kdml.apps.polyp.RetinaNetInferer`'s output from an exported detector run by ONNX Runtime.

    Takes the bundle's ``(B, 3, W, H)`` batches (MONAI's axis order), runs the ``.onnx`` file written by
    :func:`export_detector` and decodes with :class:`~monai_kdml.apps.polyp.runtime.FrameDecoder`, so per image
    ``{box_key: (N, 4) xyxy input pixels, label_key: (N,), label_key + "_scores": (N,)}`` as torch tensors; the
    ``network`` argument is ignored. The session opens on the first call.

    Args:
        path: the ``.onnx`` file.
        score_thresh, nms_thresh, detections_per_img, topk_candidates_per_level: selection (as RetinaNetInferer).
        threads: ONNX Runtime intra-op threads (``None``: one per core).
        box_key, label_key: output keys.
    """

    def __init__(
        self,
        path: str | Path,
        score_thresh: float = 0.05,
        nms_thresh: float = 0.5,
        detections_per_img: int = 100,
        topk_candidates_per_level: int = 1000,
        threads: int | None = None,
        box_key: str = "box",
        label_key: str = "label",
    ) -> None:
        super().__init__()
        self.path, self.threads = Path(path), threads
        self.selection = {
            "score_thresh": score_thresh,
            "nms_thresh": nms_thresh,
            "detections_per_img": detections_per_img,
            "topk_candidates_per_level": topk_candidates_per_level,
        }
        self.box_key, self.label_key = box_key, label_key
        self._session: Any = None
        self._decoder: FrameDecoder | None = None

    def _open(self) -> tuple[Any, FrameDecoder]:
        if self._session is None or self._decoder is None:
            if not self.path.is_file():
                raise FileNotFoundError(
                    f"{self.path} does not exist: export it first (python -m monai.bundle run export ...)."
                )
            self._session = onnx_session(self.path, self.threads)
            stored = json.loads(self._session.get_modelmeta().custom_metadata_map["kdml_decoder"])
            self._decoder = FrameDecoder(DecoderSettings.from_mapping({**stored, **self.selection}))
        return self._session, self._decoder

    def __call__(  # type: ignore[override]
        self, inputs: Tensor, network: nn.Module | None = None, *args: Any, **kwargs: Any
    ) -> list[dict[str, Tensor]]:
        session, decoder = self._open()
        frames = inputs.detach().float().cpu().transpose(2, 3).contiguous().numpy()  # (B, 3, H, W)
        results = []
        for pred in session.run(None, {"image": frames})[0]:
            boxes, scores, labels = decoder(pred)
            results.append(
                {
                    self.box_key: torch.from_numpy(boxes).to(inputs.device),
                    self.label_key: torch.from_numpy(labels).to(inputs.device),
                    f"{self.label_key}_scores": torch.from_numpy(scores).to(inputs.device),
                }
            )
        return results
