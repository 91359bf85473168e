"""Detection losses: RetinaNet ground truth, distillation from a teacher (KD) and mutual learning between peers (ML).

RetinaNet scores every anchor ``a`` and class ``c`` with an independent sigmoid (no background class), so the
distillation target is a Bernoulli per anchor and class: ``p = sigmoid(z / T)``. Notation below: ``t`` = the target
network (the teacher for KD, a peer for ML; always detached), ``s`` = the student being trained, ``N`` = number of
GT-positive (ATSS-matched) anchors in the batch, counting at least one per image.

- classification: ``T^2 / max(N, sum w) * sum_{a,c} w * KL(Bern(p_t) || Bern(p_s))`` with the detached anchor weight
  ``w = |p_t - p_s|^gamma`` (:func:`sigmoid_distillation`);
- box regression: mean smooth-L1 between the student's and the target's box deltas over anchors that are
  GT-positive or where the target is confident, ``max_c sigmoid(z_t) > threshold`` (:func:`box_distillation`).

Why the ``|p_t - p_s|^gamma`` factor: ~99 % of anchors are easy background where both networks say ~0.01; their
KL is tiny per anchor but, summed over thousands of anchors, plain KL matches the signal of the few object anchors.
The factor (the modulating term of Quality Focal Loss, Li et al., NeurIPS 2020, with the teacher's probability as the
soft label) makes agreeing anchors nearly silent, keeps anchors where the two networks disagree (missed objects and
false positives alike), and is zero while an online teacher is still at its prior. It is detached: it only weighs.

Why ``max(N, sum w)``: while the two networks disagree on a few anchors (``sum w < N``) the term is normalised like
RetinaNet's focal loss, by the positives. When they disagree broadly, e.g. on the background level of a whole image,
a sum over tens of thousands of anchors divided by a few positives pushes every shared head weight with a gain of
``#anchors / N``; two peers pulling at each other with that gain overshoot and diverge (seen: the ``gpu`` preset's
ResNet18 peers, ML term 0.5 -> 490 in one SGD step). Dividing by the effective number of disagreeing anchors
``sum w`` then turns the term into a weighted mean, whose gradient on any shared logit offset is at most ``T``.

This is the only module of monai-kdml that touches :class:`RetinaNetDetector` internals.
Reference: Niyaz & Bathula, ISBI 2022 (KD + ML); Lin et al., ICCV 2017 (RetinaNet); Zhang et al., CVPR 2020 (ATSS).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from monai.apps.detection.networks.retinanet_detector import RetinaNetDetector
from monai.losses import FocalLoss
from monai.utils import convert_to_tensor
from torch import Tensor, nn

from monai_kdml.detection.networks import DetectorSpec

__all__ = [
    "AnchorMatch",
    "DetectionKDMLLoss",
    "RetinaNetGTLoss",
    "box_distillation",
    "distillation_anchor_mask",
    "sigmoid_distillation",
    "sigmoid_kl_div",
]

logger = logging.getLogger(__name__)

HeadOutput = Mapping[str, Sequence[Tensor]]


def sigmoid_kl_div(student_logits: Tensor, target_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Element-wise ``KL(Bern(p_t) || Bern(p_s))`` with ``p = sigmoid(z / T)``; the target is detached.

    ``KL = p_t (log p_t - log p_s) + (1 - p_t) (log(1 - p_t) - log(1 - p_s))``, from ``logsigmoid`` so extreme logits
    stay finite. Shapes are preserved; not scaled by ``T^2``.
    """
    z_s = student_logits.float() / temperature
    z_t = target_logits.detach().float() / temperature
    p_t = torch.sigmoid(z_t)
    return p_t * (F.logsigmoid(z_t) - F.logsigmoid(z_s)) + (1 - p_t) * (F.logsigmoid(-z_t) - F.logsigmoid(-z_s))


def sigmoid_distillation(
    student_logits: Tensor,
    target_logits: Tensor,
    temperature: float = 1.0,
    gamma: float = 2.0,
    min_normalizer: float = 1.0,
) -> Tensor:
    """Focal-weighted sigmoid distillation ``T^2 / max(N, sum w) * sum w * KL(Bern(p_t) || Bern(p_s))``.

    ``p = sigmoid(z / T)``, ``w = |p_t - p_s|^gamma`` (detached), sums over all elements (anchors and classes).

    Args:
        student_logits: ``(B, A, C)`` classification logits (any shape); receives the gradient.
        target_logits: same shape; teacher or peer logits, never differentiated.
        temperature: ``T > 0``.
        gamma: ``>= 0``; 0 gives ``w = 1``, i.e. the mean KL over elements (when there are more than ``N``).
        min_normalizer: ``N > 0``, the normaliser's floor (e.g. the number of positive anchors).

    Returns:
        A scalar.
    """
    kl = sigmoid_kl_div(student_logits, target_logits, temperature)
    p_s = torch.sigmoid(student_logits.detach().float() / temperature)
    p_t = torch.sigmoid(target_logits.detach().float() / temperature)
    weight = (p_t - p_s).abs().pow(gamma)
    return (weight * kl).sum() * temperature**2 / weight.sum().clamp(min=min_normalizer)


def distillation_anchor_mask(positive: Tensor, target_logits: Tensor, threshold: float) -> Tensor:
    """Anchors whose boxes are distilled, ``(B, A)`` bool: ``positive | max_c sigmoid(z_t) > threshold``.

    ``positive``: ``(B, A)`` GT-matched anchors; ``target_logits``: ``(B, A, C)``, at ``T = 1``; ``threshold >= 1``
    keeps the positives only.
    """
    confident = torch.sigmoid(target_logits.detach().float()).amax(dim=-1) > threshold
    return positive | confident


def box_distillation(student_deltas: Tensor, target_deltas: Tensor, mask: Tensor, beta: float = 1.0 / 9) -> Tensor:
    """``mean_{a in mask, j} smoothL1_beta(d_s[a, j] - d_t[a, j])``; the target is detached.

    Args:
        student_deltas: ``(B, A, 2 * spatial_dims)`` encoded box deltas; receives the gradient.
        target_deltas: same shape, never differentiated.
        mask: ``(B, A)`` bool, anchors to distil.
        beta: smooth-L1 transition point (MONAI's RetinaNet default ``1/9``).

    Returns:
        A scalar; an exact zero that keeps the graph when ``mask`` is empty.
    """
    if not bool(mask.any()):
        return _graph_zero(student_deltas)
    return F.smooth_l1_loss(
        student_deltas[mask].float(), target_deltas.detach()[mask].float(), beta=beta, reduction="mean"
    )


def _graph_zero(tensor: Tensor) -> Tensor:
    """A float32 ``0.`` on ``tensor``'s device, in its graph (zero gradient); ``+ 0`` makes ``-0.`` read ``0.``."""
    return tensor.float().sum() * 0.0 + 0.0


@dataclass(frozen=True)
class AnchorMatch:
    """Anchors and their ATSS matches for one batch: the same for every network sharing a :class:`DetectorSpec`.

    Attributes:
        anchors: per image, ``(A, 2 * spatial_dims)`` xyxy pixels.
        matched_idxs: per image, ``(A,)``: a GT index ``>= 0``, ``-1`` background, ``-2`` ignored.
        targets: per image ``{box_key: (M, 4) float32, label_key: (M,) int64}`` on the anchors' device (copies).
    """

    anchors: list[Tensor]
    matched_idxs: list[Tensor]
    targets: list[dict[str, Tensor]]

    @property
    def positive(self) -> Tensor:
        """``(B, A)`` bool: GT-matched anchors."""
        return torch.stack([m >= 0 for m in self.matched_idxs])

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
        return AnchorMatch([anchors] * len(targets), matched, targets)

    def compute(self, cls_logits: Tensor, box_deltas: Tensor, match: AnchorMatch) -> dict[str, Tensor]:
        """``{"cls", "box"}`` GT losses of flattened outputs (see :meth:`flatten`) against a batch's ``match``."""
        cls = self.template.compute_cls_loss(cls_logits, match.targets, match.matched_idxs)
        if not any(bool((m >= 0).any()) for m in match.matched_idxs):
            box = _graph_zero(box_deltas)  # MONAI returns a graph-less CPU zero here
        else:
            box = self.template.compute_box_loss(box_deltas, match.targets, match.anchors, match.matched_idxs)
        return {"cls": cls, "box": box}

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
        width, out = 2 * self.spec.spatial_dims, []
        for i, target in enumerate(targets):
            if self.box_key not in target or self.label_key not in target:
                raise ValueError(f"targets[{i}] needs `{self.box_key}` and `{self.label_key}`, got {sorted(target)}.")
            # plain tensors (a MetaTensor would drag its meta through every matching op); lists/arrays accepted
            boxes = convert_to_tensor(target[self.box_key], wrap_sequence=True, track_meta=False)
            labels = convert_to_tensor(target[self.label_key], wrap_sequence=True, track_meta=False)
            if boxes.numel() == 0:
                boxes = boxes.reshape(0, width)
            if boxes.ndim != 2 or boxes.shape[1] != width or labels.shape != (boxes.shape[0],):
                raise ValueError(
                    f"targets[{i}]: expected `{self.box_key}` (M, {width}) and `{self.label_key}` (M,), "
                    f"got {tuple(boxes.shape)} and {tuple(labels.shape)}."
                )
            out_of_range = labels.numel() > 0 and (labels.min() < 0 or labels.max() >= self.spec.num_classes)
            if labels.is_floating_point() or out_of_range:
                raise ValueError(f"targets[{i}]: `{self.label_key}` must be integers in [0, {self.spec.num_classes}).")
            out.append({self.box_key: boxes.to(device, torch.float32), self.label_key: labels.to(device, torch.int64)})
        return out


class DetectionKDMLLoss(nn.Module):
    """Loss of one teacher and ``K`` student RetinaNets trained together (GT + KD + ML), as a dict of named terms.

    Per network (unweighted terms, all scalars):

    - teacher: ``cls``, ``box`` (its GT loss, :class:`RetinaNetGTLoss`); ``loss = gt_weight * (cls + box)``;
    - student ``k``: ``cls``, ``box``; ``kd_cls``, ``kd_box`` against the detached teacher; ``ml_cls``, ``ml_box``
      averaged over the ``K - 1`` detached peers; ``loss = gt_weight * (cls + box) + kd_weight * (kd_cls + kd_box)
      + ml_weight * (ml_cls + ml_box)``.

    Anchors are matched once per batch (every network shares the spec) and the image size comes from the head-output
    shapes and ``spec.strides``, so images may change size between batches. Because targets are detached, one
    backward of ``out["loss"] + out["teacher"]["loss"]`` equals separate backwards of each network's loss.
    Weights, temperature and thresholds are plain attributes: a warm-up handler may change them between iterations.

    Args:
        gt_loss: ground-truth loss and anchor matching for the shared spec.
        gt_weight, kd_weight, ml_weight: term weights.
        temperature: ``T`` of the classification terms.
        gamma: exponent of the detached anchor weight ``|p_t - p_s|^gamma`` (0: every anchor weighs 1).
        box_threshold: a target's box deltas are also distilled where its score exceeds this (``>= 1``: GT-positive
            anchors only).
        box_beta: smooth-L1 ``beta`` of the box terms.
    """

    def __init__(
        self,
        gt_loss: RetinaNetGTLoss,
        gt_weight: float = 1.0,
        kd_weight: float = 1.0,
        ml_weight: float = 1.0,
        temperature: float = 1.0,
        gamma: float = 2.0,
        box_threshold: float = 0.5,
        box_beta: float = 1.0 / 9,
    ) -> None:
        super().__init__()
        if temperature <= 0 or gamma < 0 or box_beta <= 0:
            raise ValueError(f"need temperature > 0, gamma >= 0, box_beta > 0; got {temperature}, {gamma}, {box_beta}.")
        self.gt_loss = gt_loss
        self.gt_weight, self.kd_weight, self.ml_weight = gt_weight, kd_weight, ml_weight
        self.temperature, self.gamma = temperature, gamma
        self.box_threshold, self.box_beta = box_threshold, box_beta

    def forward(
        self,
        student_outputs: list[dict],
        teacher_output: dict | None,
        targets: list[dict[str, Tensor]],
        *,
        use_kd: bool = True,
        use_ml: bool = True,
    ) -> dict:
        """Loss terms of every network.

        Args:
            student_outputs: ``K`` RetinaNet head outputs ``{cls_key: [(B, A*C, H_l, W_l)], box_reg_key: [...]}``.
            teacher_output: the teacher's head output, or ``None`` (no teacher terms, no KD).
            targets: per image ``{"box": (M, 4) float xyxy pixels, "label": (M,) int64}``; ``M`` may be 0.
            use_kd: add the KD terms (ignored without a teacher).
            use_ml: add the ML terms; needs ``K >= 2``.

        Returns:
            ``{"loss": sum of the students' totals, "students": {"loss": [K], "<term>": [K], ...},
            "teacher": {"loss", "cls", "box"}}`` (``"teacher"`` only when ``teacher_output`` is given).

        Raises:
            ValueError: no students, ML with fewer than two, or outputs/targets that do not fit the spec.
        """
        # 1. Validate the switches against what was given.
        num_students = len(student_outputs)
        if num_students == 0:
            raise ValueError("`student_outputs` is empty: DetectionKDMLLoss needs at least one student.")
        if use_ml and num_students < 2:
            raise ValueError(f"mutual learning (use_ml=True) needs at least 2 students, got {num_students}.")
        # 2. Match anchors with the targets once: all networks share anchors.
        match = self.gt_loss.match(student_outputs[0], targets)
        positive, norm = match.positive, match.normalizer
        # 3. Flatten every head output to (B, A, C) logits and (B, A, 2D) deltas.
        students = [self.gt_loss.flatten(o) for o in student_outputs]
        # 4. Teacher: its own GT loss.
        out: dict = {"students": {}}
        teacher = self.gt_loss.flatten(teacher_output) if teacher_output is not None else None
        if teacher is not None:
            terms = self.gt_loss.compute(*teacher, match)
            out["teacher"] = {"loss": self.gt_weight * (terms["cls"] + terms["box"]), **terms}
        # 5. Students: GT, + KD to the detached teacher, + ML to the detached peers.
        thr = self.box_threshold
        box_masks = [distillation_anchor_mask(positive, logits, thr) for logits, _ in students] if use_ml else []
        teacher_mask = distillation_anchor_mask(positive, teacher[0], thr) if use_kd and teacher is not None else None
        for k, (cls, box) in enumerate(students):
            terms = self.gt_loss.compute(cls, box, match)
            total = self.gt_weight * (terms["cls"] + terms["box"])
            if teacher is not None and teacher_mask is not None:
                terms["kd_cls"] = sigmoid_distillation(cls, teacher[0], self.temperature, self.gamma, norm)
                terms["kd_box"] = box_distillation(box, teacher[1], teacher_mask, self.box_beta)
                total = total + self.kd_weight * (terms["kd_cls"] + terms["kd_box"])
            if use_ml:
                peers = [j for j in range(num_students) if j != k]
                ml_cls = [sigmoid_distillation(cls, students[j][0], self.temperature, self.gamma, norm) for j in peers]
                ml_box = [box_distillation(box, students[j][1], box_masks[j], self.box_beta) for j in peers]
                terms["ml_cls"] = torch.stack(ml_cls).mean()
                terms["ml_box"] = torch.stack(ml_box).mean()
                total = total + self.ml_weight * (terms["ml_cls"] + terms["ml_box"])
            for name, value in {"loss": total, **terms}.items():
                out["students"].setdefault(name, []).append(value)
        # 6. The backpropagated total of the students (the trainer adds the teacher's own loss when it trains it).
        out["loss"] = torch.stack(out["students"]["loss"]).sum()
        return out
