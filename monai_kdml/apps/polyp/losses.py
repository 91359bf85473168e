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

Teacher-bounded box KD (``box_bound_margin``, off by default): Chen et al., "Learning Efficient Object Detection
Models with Knowledge Distillation", NeurIPS 2017, use the teacher's regression only as an upper bound: the student
is penalised where its error to the ground truth exceeds the teacher's by a margin ``m``. Here: the teacher's box
deltas are distilled only on GT-positive anchors where the teacher is closer to the GT than the student by ``m``
(per-anchor smooth-L1 to the encoded GT box, summed over coordinates; :func:`teacher_bounded_mask`); anchors without
a GT box are not distilled (nothing tells whether the teacher is right there). ``box_kd=False`` drops the KD box term.

The ground-truth part and the anchor matching are in :mod:`monai_kdml.apps.polyp.gt_loss`.
Reference: Niyaz & Bathula, ISBI 2022 (KD + ML); Lin et al., ICCV 2017 (RetinaNet); Zhang et al., CVPR 2020 (ATSS).
"""

from __future__ import annotations

import logging
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from monai_kdml.apps.polyp.gt_loss import RetinaNetGTLoss, graph_zero
from monai_kdml.losses import LossTerms
from monai_kdml.options import check_number

__all__ = [
    "DetectionKDMLLoss",
    "box_distillation",
    "distillation_anchor_mask",
    "sigmoid_distillation",
    "sigmoid_kl_div",
    "teacher_bounded_mask",
]

logger = logging.getLogger(__name__)


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
    normalizer: float | None = None,
) -> Tensor:
    """Focal-weighted sigmoid distillation ``T^2 / max(N, sum w) * sum w * KL(Bern(p_t) || Bern(p_s))``.

    ``p = sigmoid(z / T)``, ``w = |p_t - p_s|^gamma`` (detached), sums over all elements (anchors and classes).

    Args:
        student_logits: ``(B, A, C)`` classification logits (any shape); receives the gradient.
        target_logits: same shape; teacher or peer logits, never differentiated.
        temperature: ``T > 0``.
        gamma: ``>= 0``; 0 gives ``w = 1``, i.e. the mean KL over elements (when there are more than ``N``).
        min_normalizer: ``N > 0``, the normaliser's floor (e.g. the number of positive anchors).
        normalizer: a fixed divisor instead of ``max(N, sum w)`` (e.g. the number of anchors the GT classification
            loss samples, for ``kd_cls_normalizer="sampled"``).

    Returns:
        A scalar.
    """
    kl = sigmoid_kl_div(student_logits, target_logits, temperature)
    p_s = torch.sigmoid(student_logits.detach().float() / temperature)
    p_t = torch.sigmoid(target_logits.detach().float() / temperature)
    weight = (p_t - p_s).abs().pow(gamma)
    if normalizer is not None:
        return (weight * kl).sum() * temperature**2 / normalizer
    return (weight * kl).sum() * temperature**2 / weight.sum().clamp(min=min_normalizer)


def distillation_anchor_mask(positive: Tensor, target_logits: Tensor, threshold: float) -> Tensor:
    """Anchors whose boxes are distilled, ``(B, A)`` bool: ``positive | max_c sigmoid(z_t) > threshold``.

    ``positive``: ``(B, A)`` GT-matched anchors; ``target_logits``: ``(B, A, C)``, at ``T = 1``; ``threshold >= 1``
    keeps the positives only.
    """
    confident = torch.sigmoid(target_logits.detach().float()).amax(dim=-1) > threshold
    return positive | confident


def teacher_bounded_mask(
    positive: Tensor, student_deltas: Tensor, teacher_deltas: Tensor, gt_deltas: Tensor, margin: float, beta: float
) -> Tensor:
    """GT-positive anchors where the teacher's box is closer to the ground truth than the student's by ``margin``,
    ``(B, A)`` bool (Chen et al., NeurIPS 2017): ``e_t + margin < e_s`` with ``e = sum_j smoothL1_beta(d_j - g_j)``.

    Args:
        positive: ``(B, A)`` GT-matched anchors.
        student_deltas, teacher_deltas: ``(B, A, 2D)`` predicted deltas (only read).
        gt_deltas: ``(B, A, 2D)`` encoded GT boxes (:meth:`RetinaNetGTLoss.gt_deltas`).
        margin: ``m >= 0`` in the same units as the smooth-L1 errors.
        beta: smooth-L1 ``beta``.
    """
    err_s = F.smooth_l1_loss(student_deltas.detach().float(), gt_deltas, beta=beta, reduction="none").sum(-1)
    err_t = F.smooth_l1_loss(teacher_deltas.detach().float(), gt_deltas, beta=beta, reduction="none").sum(-1)
    return positive & (err_t + margin < err_s)


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
        return graph_zero(student_deltas)
    return F.smooth_l1_loss(
        student_deltas[mask].float(), target_deltas.detach()[mask].float(), beta=beta, reduction="mean"
    )


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
        box_kd: distil the teacher's boxes (``False``: no ``kd_box`` term; ML box terms are unaffected).
        box_bound_margin: ``None`` (default: distil on ``box_threshold``'s mask, as before) or a margin ``m >= 0``:
            distil the teacher's boxes only on GT-positive anchors where it is closer to the GT than the student by
            ``m`` (:func:`teacher_bounded_mask`, Chen et al. 2017); ``box_threshold`` then plays no part in KD.
        kd_cls_normalizer: divisor of the KD classification sum: ``"disagreement"`` (default, ``max(N, sum w)``, as
            the ML term) or ``"sampled"``: the number of anchors the GT classification loss averages over
            (``batch_size_per_image`` per image), so one disagreeing anchor weighs in KD what one sampled anchor
            weighs in the GT loss (see docs/method.md for the measured magnitudes). ML keeps ``max(N, sum w)``.
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
        box_kd: bool = True,
        box_bound_margin: float | None = None,
        kd_cls_normalizer: str = "disagreement",
    ) -> None:
        super().__init__()
        if temperature <= 0 or gamma < 0 or box_beta <= 0:
            raise ValueError(f"need temperature > 0, gamma >= 0, box_beta > 0; got {temperature}, {gamma}, {box_beta}.")
        for name, value in (("gt_weight", gt_weight), ("kd_weight", kd_weight), ("ml_weight", ml_weight)):
            check_number(name, value)
        if box_bound_margin is not None and not box_bound_margin >= 0:
            raise ValueError(f"`box_bound_margin` must be None or >= 0, got {box_bound_margin}.")
        if kd_cls_normalizer not in ("disagreement", "sampled"):
            raise ValueError(f"`kd_cls_normalizer` must be 'disagreement' or 'sampled', got {kd_cls_normalizer!r}.")
        self.box_kd, self.box_bound_margin = bool(box_kd), box_bound_margin
        self.kd_cls_normalizer = kd_cls_normalizer
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
    ) -> LossTerms:
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
        out: dict[str, Any] = {"students": {}}
        teacher = self.gt_loss.flatten(teacher_output) if teacher_output is not None else None
        if teacher is not None:
            terms = self.gt_loss.compute(*teacher, match)
            out["teacher"] = {"loss": self.gt_weight * (terms["cls"] + terms["box"]), **terms}
        # 5. Students: GT, + KD to the detached teacher, + ML to the detached peers.
        thr = self.box_threshold
        box_masks = [distillation_anchor_mask(positive, logits, thr) for logits, _ in students] if use_ml else []
        teacher_mask = distillation_anchor_mask(positive, teacher[0], thr) if use_kd and teacher is not None else None
        bounded = self.box_bound_margin is not None and self.box_kd and teacher_mask is not None
        gt_deltas = self.gt_loss.gt_deltas(match) if bounded else None
        for k, (cls, box) in enumerate(students):
            terms = self.gt_loss.compute(cls, box, match)
            total = self.gt_weight * (terms["cls"] + terms["box"])
            if teacher is not None and teacher_mask is not None:
                fixed = match.sampled * cls.shape[-1] if self.kd_cls_normalizer == "sampled" else None
                terms["kd_cls"] = sigmoid_distillation(cls, teacher[0], self.temperature, self.gamma, norm, fixed)
                kd = terms["kd_cls"]
                if self.box_kd:
                    mask = teacher_mask
                    if gt_deltas is not None:
                        margin = float(self.box_bound_margin or 0.0)
                        mask = teacher_bounded_mask(positive, box, teacher[1], gt_deltas, margin, self.box_beta)
                    terms["kd_box"] = box_distillation(box, teacher[1], mask, self.box_beta)
                    kd = kd + terms["kd_box"]
                total = total + self.kd_weight * kd
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
        return cast(LossTerms, out)
