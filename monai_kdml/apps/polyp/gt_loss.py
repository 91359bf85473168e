"""RetinaNet's ground-truth loss through MONAI's ``RetinaNetDetector``, with anchors matched once per batch.

:class:`RetinaNetGTLoss` owns a network-less detector "template" set up with MONAI's ATSS matcher, hard-negative
sampler, focal classification loss and smooth-L1 box loss, and calls its public loss methods. Matching is done here
because ``RetinaNetDetector.compute_anchor_matched_idxs`` needs torchvision's ``Matcher`` class even for ATSS. This and
:mod:`monai_kdml.apps.polyp.losses` are the only modules of monai-kdml that touch :class:`RetinaNetDetector` internals.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from monai.apps.detection.networks.retinanet_detector import RetinaNetDetector
from monai.losses import FocalLoss
from torch import Tensor, nn

from monai_kdml.apps.polyp.batching import detection_targets
from monai_kdml.apps.polyp.networks import DetectorSpec

__all__ = ["AnchorMatch", "HeadOutput", "RetinaNetGTLoss", "graph_zero"]

logger = logging.getLogger(__name__)

HeadOutput = Mapping[str, Sequence[Tensor]]
"""A RetinaNet head output: ``{cls_key: [(B, A*C, *spatial_l)], box_reg_key: [(B, A*2D, *spatial_l)]}``."""


def graph_zero(tensor: Tensor) -> Tensor:
    """A float32 ``0.`` on ``tensor``'s device, in its graph (zero gradient); ``+ 0`` makes ``-0.`` read ``0.``."""
    return tensor.float().sum() * 0.0 + 0.0


@dataclass(frozen=True)
class AnchorMatch:
    """Anchors and their ATSS matches for one batch: the same for every network sharing a :class:`DetectorSpec`.

    Attributes:
        anchors: per image, ``(A, 2 * spatial_dims)`` xyxy pixels.
        matched_idxs: per image, ``(A,)``: a GT index ``>= 0``, ``-1`` background, ``-2`` ignored.
        targets: per image ``{box_key: (M, 4) float32, label_key: (M,) int64}`` on the anchors' device (copies).
        sampled_per_image: anchors per image the GT classification loss samples (``batch_size_per_image``).
    """

    anchors: list[Tensor]
    matched_idxs: list[Tensor]
    targets: list[dict[str, Tensor]]
    sampled_per_image: int = 64

    @property
    def positive(self) -> Tensor:
        """``(B, A)`` bool: GT-matched anchors."""
        return torch.stack([m >= 0 for m in self.matched_idxs])

    @property
    def sampled(self) -> float:
        """Anchors the GT classification loss averages over, nominally: ``sampled_per_image`` (the hard-negative
        sampler's ``batch_size_per_image``) times the number of images."""
        return float(self.sampled_per_image * len(self.matched_idxs))

    @property
    def normalizer(self) -> float:
        """Number of positive anchors, at least one per image (the ``N`` of the distillation terms)."""
        return float(sum(max(1, int((m >= 0).sum())) for m in self.matched_idxs))


class RetinaNetGTLoss(nn.Module):
    """Ground-truth RetinaNet loss of any network laid out by ``spec``, through MONAI's RetinaNetDetector.

    Owns a network-less :class:`RetinaNetDetector` "template" set up with the ATSS matcher, the hard-negative sampler,
    a sigmoid focal classification loss and a smooth-L1 box loss on encoded deltas, and calls its
    ``compute_cls_loss`` / ``compute_box_loss``. Matching is done here, once per batch, with the template's ATSS
    matcher: ``RetinaNetDetector.compute_anchor_matched_idxs`` tests ``isinstance(matcher, torchvision Matcher)``
    first and raises ``OptionalImportError`` without torchvision. Anchors are made once per image size, which is
    read from the head outputs: ``H_0 * strides[0]``.

    Args:
        spec: the shared layout (anchors, strides, classes).
        cls_loss: classification loss on sampled ``(n, C)`` logits; default ``FocalLoss(gamma=2, use_softmax=False)``.
        box_loss: loss between predicted and GT-encoded deltas; default ``SmoothL1Loss(beta=1/9)``.
        num_candidates, center_in_gt: ATSS matcher settings (``set_atss_matcher``).
        batch_size_per_image, positive_fraction, min_neg, pool_size: hard-negative sampler settings.
        box_key, label_key: target keys.
        cls_key, box_reg_key: head-output keys (RetinaNet's).
    """

    def __init__(
        self,
        spec: DetectorSpec,
        cls_loss: nn.Module | None = None,
        box_loss: nn.Module | None = None,
        num_candidates: int = 4,
        center_in_gt: bool = False,
        batch_size_per_image: int = 64,
        positive_fraction: float = 0.3,
        min_neg: int = 16,
        pool_size: float = 20,
        box_key: str = "box",
        label_key: str = "label",
        cls_key: str = "classification",
        box_reg_key: str = "box_regression",
    ) -> None:
        super().__init__()
        self.spec = spec
        self.batch_size_per_image = batch_size_per_image
        self.box_key, self.label_key = box_key, label_key
        self.cls_key, self.box_reg_key = cls_key, box_reg_key
        self.template = RetinaNetDetector(
            network=nn.Module(),  # never run: the template only computes losses from given head outputs
            anchor_generator=spec.anchor_generator(),
            spatial_dims=spec.spatial_dims,
            num_classes=spec.num_classes,
            size_divisible=spec.size_divisible,
            cls_key=cls_key,
            box_reg_key=box_reg_key,
        )
        self.template.set_atss_matcher(num_candidates=num_candidates, center_in_gt=center_in_gt)
        self.template.set_hard_negative_sampler(batch_size_per_image, positive_fraction, min_neg, pool_size)
        self.template.set_cls_loss(cls_loss if cls_loss is not None else FocalLoss(gamma=2.0, use_softmax=False))
        self.template.set_box_regression_loss(
            box_loss if box_loss is not None else nn.SmoothL1Loss(beta=1.0 / 9), encode_gt=True, decode_pred=False
        )
        self.template.set_target_keys(box_key, label_key)
        self._anchors: dict[tuple, Tensor] = {}

    def flatten(self, head_output: HeadOutput) -> tuple[Tensor, Tensor]:
        """Head maps -> float32 ``(B, A, num_classes)`` logits and ``(B, A, 2 * spatial_dims)`` deltas, anchor order."""
        spec = self.spec
        per_anchor = {self.cls_key: spec.num_classes, self.box_reg_key: 2 * spec.spatial_dims}
        for key, width in per_anchor.items():
            if key not in head_output:
                raise ValueError(f"head output has no `{key}` entry; got keys {sorted(head_output)}.")
            channels = {int(m.shape[1]) for m in head_output[key]}
            if channels != {spec.num_anchors * width}:
                raise ValueError(
                    f"head output `{key}` has {sorted(channels)} channels; the spec needs {spec.num_anchors} anchors x "
                    f"{width} = {spec.num_anchors * width}."
                )
        # MONAI's own reshape keeps the (H, W, anchor) order its anchor generator uses.
        cls_logits = self.template._reshape_maps(list(head_output[self.cls_key]))
        box_deltas = self.template._reshape_maps(list(head_output[self.box_reg_key]))
        return cls_logits.float(), box_deltas.float()  # losses in float32 also under autocast

    def image_size(self, cls_maps: Sequence[Tensor]) -> tuple[int, ...]:
        """Input size implied by the level shapes and ``spec.strides``; ``ValueError`` when they disagree."""
        dims, strides = self.spec.spatial_dims, self.spec.strides
        shapes = [tuple(int(n) for n in m.shape[-dims:]) for m in cls_maps]
        sizes = {tuple(n * s for n in shape) for shape, s in zip(shapes, strides, strict=False)}
        if len(shapes) != len(strides) or len(sizes) != 1:
            raise ValueError(f"head output levels {shapes} do not match the spec's strides {strides}.")
        return sizes.pop()

    def anchors(self, cls_maps: Sequence[Tensor]) -> Tensor:
        """``(A, 2 * spatial_dims)`` float32 anchors for these level maps, cached per image size and device."""
        size, device = self.image_size(cls_maps), cls_maps[0].device
        key = (size, str(device))
        if key not in self._anchors:
            # the generator reads only shapes and the device: zero-storage float32 stand-ins avoid copies.
            images = torch.zeros((), device=device).expand(1, 1, *size)
            maps = [torch.zeros((), device=device).expand(m.shape) for m in cls_maps]
            self._anchors[key] = self.template.anchor_generator(images, maps)[0]
        return self._anchors[key]

    def match(self, head_output: HeadOutput, targets: Sequence[Mapping[str, Tensor]]) -> AnchorMatch:
        """Validate ``targets`` and ATSS-match them with the anchors of ``head_output``'s image size."""
        cls_maps = list(head_output[self.cls_key])
        anchors = self.anchors(cls_maps)
        targets = self._checked_targets(targets, cls_maps[0].shape[0], anchors.device)
        num_locs = [int(m.shape[2:].numel()) for m in cls_maps]
        matched = []
        for i, target in enumerate(targets):
            boxes = target[self.box_key]
            if boxes.shape[0] == 0:
                matched.append(torch.full((anchors.shape[0],), -1, dtype=torch.int64, device=anchors.device))
                continue
            _, idxs = self.template.proposal_matcher(boxes, anchors, num_locs, self.spec.num_anchors)
            if int(idxs.max()) < 0:
                logger.warning("image %d: no anchor matched its %d box(es); check the anchor shapes.", i, len(boxes))
            matched.append(idxs)
        return AnchorMatch([anchors] * len(targets), matched, targets, self.batch_size_per_image)

    def compute(self, cls_logits: Tensor, box_deltas: Tensor, match: AnchorMatch) -> dict[str, Tensor]:
        """``{"cls", "box"}`` GT losses of flattened outputs (see :meth:`flatten`) against a batch's ``match``."""
        cls = self.template.compute_cls_loss(cls_logits, match.targets, match.matched_idxs)
        if not any(bool((m >= 0).any()) for m in match.matched_idxs):
            box = graph_zero(box_deltas)  # MONAI returns a graph-less CPU zero here
        else:
            box = self.template.compute_box_loss(box_deltas, match.targets, match.anchors, match.matched_idxs)
        return {"cls": cls, "box": box}

    def gt_deltas(self, match: AnchorMatch) -> Tensor:
        """``(B, A, 2 * spatial_dims)`` GT boxes encoded against their matched anchors (the regression targets of
        :meth:`compute`'s box loss, by the template's box coder); zeros on anchors that are not GT-positive."""
        anchors = match.anchors[0]
        out = torch.zeros((len(match.matched_idxs), *anchors.shape), device=anchors.device, dtype=torch.float32)
        for i, (idxs, target) in enumerate(zip(match.matched_idxs, match.targets, strict=True)):
            fg = torch.where(idxs >= 0)[0]
            if fg.numel():
                boxes = target[self.box_key][idxs[fg]].to(anchors.device)
                out[i, fg] = self.template.box_coder.encode_single(boxes, match.anchors[i][fg]).float()
        return out

    def forward(self, head_output: HeadOutput, targets: Sequence[Mapping[str, Tensor]]) -> dict[str, Tensor]:
        """``{"cls", "box"}`` GT losses of one network's head output."""
        cls_logits, box_deltas = self.flatten(head_output)
        return self.compute(cls_logits, box_deltas, self.match(head_output, targets))

    def _checked_targets(
        self, targets: Sequence[Mapping[str, Tensor]], batch_size: int, device: torch.device
    ) -> list[dict[str, Tensor]]:
        """Copies of ``targets`` on ``device`` (boxes float32 ``(M, 2D)``, labels int64); ``ValueError`` if bad."""
        if len(targets) != batch_size:
            raise ValueError(f"`targets` has {len(targets)} entries for a batch of {batch_size} images.")
        for i, target in enumerate(targets):
            if self.box_key not in target or self.label_key not in target:
                raise ValueError(f"targets[{i}] needs `{self.box_key}` and `{self.label_key}`, got {sorted(target)}.")
        return detection_targets(
            [t[self.box_key] for t in targets],
            [t[self.label_key] for t in targets],
            spatial_dims=self.spec.spatial_dims,
            num_classes=self.spec.num_classes,
            device=device,
            box_key=self.box_key,
            label_key=self.label_key,
        )
