"""The method's losses: knowledge distillation (KD) from the teacher and mutual learning (ML) between peers.

Every term is a pure function over logits plus a thin ``nn.Module``; :class:`KDMLLoss` combines them and returns a
dict of named terms that the trainer sums and logs without knowing their names.

Notation: ``p = softmax(z / T)`` over dim 1 (classes). ``KL(p_t || p_s) = sum_c p_t,c (log p_t,c - log p_s,c)``,
summed over classes and averaged over the batch and, for dense (segmentation) logits ``(B, C, *spatial)``, over all
positions. Everything is computed from log-softmax, so extreme logits never produce NaN.

Reference: Niyaz & Bathula, "Augmenting Knowledge Distillation with Peer-to-Peer Mutual Learning for Model
Compression", ISBI 2022. KD: Hinton et al., 2015. Deep mutual learning: Zhang et al., CVPR 2018.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypedDict

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from monai_kdml.options import check_number

__all__ = [
    "KD_GATES",
    "DistillationLoss",
    "KDLoss",
    "KDMLLoss",
    "LossTerms",
    "MutualLearningLoss",
    "cross_entropy",
    "kd_kl_div",
    "mutual_learning_kl_divs",
    "teacher_true_class_weight",
    "term_name",
]


class _RequiredTerms(TypedDict):
    loss: Tensor
    students: dict[str, list[Tensor]]


class LossTerms(_RequiredTerms, total=False):
    """What a loss of the method returns, and what :class:`~monai_kdml.engines.KDMLTrainer` sums and logs.

    - ``loss``: the students' backpropagated total (a scalar);
    - ``students``: term name -> one scalar per student, in order; ``"loss"`` is each student's total;
    - ``teacher`` (only when teacher predictions were given): term name -> scalar; ``"loss"`` is the teacher's own
      objective, which the trainer adds when the teacher learns online.

    Term names are free (``ce``, ``kd``, ``ml`` here; ``cls``, ``box``, ``kd_cls``, ... for detection): the trainer
    publishes every one as ``<term>_<network>`` without knowing it.
    """

    teacher: dict[str, Tensor]


class DistillationLoss(Protocol):
    """The call contract of the trainer's ``loss_function`` (:class:`KDMLLoss`, the detection loss, or yours)."""

    def __call__(
        self, student_preds: Sequence[Any], teacher_pred: Any, target: Any, *, use_kd: bool = True, use_ml: bool = True
    ) -> LossTerms: ...


def kd_kl_div(
    student_logits: Tensor, target_logits: Tensor, temperature: float = 1.0, weight: Tensor | None = None
) -> Tensor:
    """``T^2 * mean KL(softmax(target/T) || softmax(student/T))``; the target side is detached.

    Args:
        student_logits: ``(B, C)`` or ``(B, C, *spatial)``; receives the gradient.
        target_logits: same shape; a teacher's or a peer's logits, never differentiated.
        temperature: softening temperature ``T > 0``.
        weight: optional detached per-sample (per-position) weight ``(B,)`` or ``(B, *spatial)``; the KL of each
            sample is multiplied by it before the mean over all samples (a gate of 0/1 drops samples from the sum
            but keeps the divisor, so gated-out samples lower the term instead of re-weighting the rest).

    Returns:
        A scalar: KL summed over classes, averaged over the batch and spatial positions, scaled by ``T^2`` so the
        gradient magnitude does not shrink as ``T`` grows (Hinton et al.).
    """
    if student_logits.shape != target_logits.shape:
        raise ValueError(
            f"distillation needs logits of one shape, got {tuple(student_logits.shape)} (student) and "
            f"{tuple(target_logits.shape)} (target)."
        )
    log_p_student = F.log_softmax(student_logits.float() / temperature, dim=1)
    log_p_target = F.log_softmax(target_logits.detach().float() / temperature, dim=1)
    kl = F.kl_div(log_p_student, log_p_target, reduction="none", log_target=True).sum(dim=1)
    if weight is not None:
        kl = kl * weight.detach().float().reshape(kl.shape)
    return kl.mean() * temperature**2


def mutual_learning_kl_divs(student_logits: Sequence[Tensor], temperature: float = 1.0) -> list[Tensor]:
    """Peer term of each student: ``T^2 / (K-1) * sum_{j != k} mean KL(p_j || p_k)``, every peer ``p_j`` detached.

    Args:
        student_logits: ``K >= 2`` tensors of one shape, ``(B, C)`` or ``(B, C, *spatial)``.
        temperature: softening temperature ``T > 0``.

    Returns:
        ``K`` scalars; term ``k`` only sends gradient to student ``k``.

    Raises:
        ValueError: fewer than two students.
    """
    num = len(student_logits)
    if num < 2:
        raise ValueError(f"mutual learning needs at least 2 students, got {num}.")
    return [
        torch.stack([kd_kl_div(student_logits[k], student_logits[j], temperature) for j in range(num) if j != k]).mean()
        for k in range(num)
    ]


KD_GATES = ("none", "correct", "probability")
"""Per-sample KD weighting by the teacher's standing on the true class (:func:`teacher_true_class_weight`)."""


def teacher_true_class_weight(teacher_logits: Tensor, target: Tensor, gate: str) -> Tensor | None:
    """Per-sample KD weight from the teacher's (untempered) probability of the true class: distil what it gets right.

    - ``"none"``: ``None`` (no weighting; the plain mean);
    - ``"correct"``: 1 where the teacher's arg-max is the true class, else 0 (a hard gate);
    - ``"probability"``: ``p_teacher(y)``, the teacher's probability of the true class (a soft gate).

    Sample-wise weighting of the soft labels by how right the teacher is follows Zhou et al., "Rethinking Soft
    Labels for Knowledge Distillation: A Bias-Variance Tradeoff Perspective", ICLR 2021 (weighted soft labels); the
    hard gate, dropping the samples the teacher gets wrong, is the simplest form of the "knowledge adjustment" of
    Wen et al., "Preparing Lessons: Improve Knowledge Distillation with Better Supervision", Neurocomputing 2021.

    Args:
        teacher_logits: ``(B, C)`` or ``(B, C, *spatial)``.
        target: class indices ``(B, *spatial)`` / ``(B, 1, *spatial)`` or one-hot / soft ``(B, C, *spatial)``.
        gate: one of :data:`KD_GATES`.

    Returns:
        ``None`` or a detached float ``(B, *spatial)`` weight in ``[0, 1]``.
    """
    if gate not in KD_GATES:
        raise ValueError(f"`kd_gate` must be one of {KD_GATES}, got {gate!r}.")
    if gate == "none":
        return None
    prob = F.softmax(teacher_logits.detach().float(), dim=1)
    if target.shape == teacher_logits.shape and target.is_floating_point() and teacher_logits.shape[1] > 1:
        truth = target.detach().float()  # one-hot or soft labels
        index = truth.argmax(dim=1)
    else:
        index = (target.squeeze(1) if target.ndim == teacher_logits.ndim and target.shape[1] == 1 else target).long()
        truth = F.one_hot(index, teacher_logits.shape[1]).movedim(-1, 1).float()
    if gate == "probability":
        return (prob * truth).sum(dim=1)
    return (prob.argmax(dim=1) == index).float()


def cross_entropy(logits: Tensor, target: Tensor) -> Tensor:
    """Cross-entropy accepting the target layouts MONAI pipelines produce.

    Args:
        logits: ``(B, C)`` or ``(B, C, *spatial)``; two logits for binary tasks.
        target: class indices ``(B,)``/``(B, *spatial)``, with a channel dim ``(B, 1, *)``, or one-hot/soft
            ``(B, C, *)`` of the logits' shape.

    Returns:
        The mean cross-entropy (over batch and positions).
    """
    if target.shape == logits.shape and target.is_floating_point() and logits.shape[1] > 1:
        return F.cross_entropy(logits.float(), target.float())  # one-hot or soft labels
    if target.ndim == logits.ndim and target.shape[1] == 1:
        target = target.squeeze(1)
    return F.cross_entropy(logits.float(), target.long())


class KDLoss(nn.Module):
    """Knowledge distillation: ``T^2 * mean_b KL(p_teacher || p_student)``, teacher detached.

    Args:
        temperature: softening temperature ``T > 0``.

    Example::

        loss = KDLoss(temperature=4.0)(student_logits, teacher_logits)
    """

    def __init__(self, temperature: float = 1.0) -> None:
        super().__init__()
        _check_temperature(temperature)
        self.temperature = temperature

    def forward(self, student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
        return kd_kl_div(student_logits, teacher_logits, self.temperature)


class MutualLearningLoss(nn.Module):
    """Deep mutual learning between ``K >= 2`` peers: one term per student (see :func:`mutual_learning_kl_divs`).

    Args:
        temperature: softening temperature ``T > 0``.
    """

    def __init__(self, temperature: float = 1.0) -> None:
        super().__init__()
        _check_temperature(temperature)
        self.temperature = temperature

    def forward(self, student_logits: Sequence[Tensor]) -> list[Tensor]:
        return mutual_learning_kl_divs(student_logits, self.temperature)


class KDMLLoss(nn.Module):
    """The students' objective (supervised + KD + ML) and the online teacher's objective, as a dict of named terms.

    For student ``k``: ``L_k = ce_weight * CE(z_k, y) + kd_weight * KD(z_k, z_t) + ml_weight * ML_k``.
    For the teacher: ``L_t = CE(z_t, y) [+ teacher_ensemble_weight * T^2 KL(mean_k p_k || p_t)]``; the second term
    (off by default) lets the teacher also learn from the students' ensemble, with the students detached.

    Weights and temperature are plain attributes so warm-up handlers can change them between iterations. A term whose
    weight is 0 is still reported (curves stay continuous) but never enters the total.

    Args:
        ce_weight: weight of each student's supervised loss.
        kd_weight: weight of the distillation term.
        ml_weight: weight of the mutual-learning term.
        temperature: softening temperature ``T > 0`` of both KD and ML.
        supervised_loss: ``f(logits, target) -> scalar``; defaults to :func:`cross_entropy` (class indices or
            one-hot). Any MONAI loss (e.g. ``DiceCELoss(to_onehot_y=True, softmax=True)``) works for segmentation.
        teacher_ensemble_weight: weight of the teacher's term towards the students' ensemble (0 = classic online KD).
        supervised_name: the supervised term's name in the loss dict, logs and TensorBoard tags; default: taken from
            ``supervised_loss`` (:func:`term_name`: ``ce`` for the default, ``dice_ce`` for ``DiceCELoss``).
        kd_gate: per-sample weight of the KD term by the teacher's probability of the true class
            (:func:`teacher_true_class_weight`): ``"none"`` (default, the plain mean), ``"correct"`` (distil only the
            samples/positions the teacher classifies right) or ``"probability"`` (weight by ``p_teacher(y)``).

    Example::

        terms = KDMLLoss(kd_weight=1.0, ml_weight=1.0, temperature=2.0)([z0, z1], z_teacher, y)
        terms["loss"].backward()  # students' total; add terms["teacher"]["loss"] to train the teacher online
        KDMLLoss(supervised_loss=DiceCELoss(to_onehot_y=True, softmax=True)).supervised_name  # "dice_ce"
    """

    def __init__(
        self,
        ce_weight: float = 1.0,
        kd_weight: float = 1.0,
        ml_weight: float = 1.0,
        temperature: float = 1.0,
        supervised_loss: Callable[[Tensor, Tensor], Tensor] | None = None,
        teacher_ensemble_weight: float = 0.0,
        supervised_name: str | None = None,
        kd_gate: str = "none",
    ) -> None:
        super().__init__()
        _check_temperature(temperature)
        if kd_gate not in KD_GATES:
            raise ValueError(f"`kd_gate` must be one of {KD_GATES}, got {kd_gate!r}.")
        self.kd_gate = kd_gate
        weights = {"ce_weight": ce_weight, "kd_weight": kd_weight, "ml_weight": ml_weight}
        for name, value in {**weights, "teacher_ensemble_weight": teacher_ensemble_weight}.items():
            check_number(name, value)
        self.ce_weight = ce_weight
        self.kd_weight = kd_weight
        self.ml_weight = ml_weight
        self.temperature = temperature
        self.teacher_ensemble_weight = teacher_ensemble_weight
        self.supervised_loss = cross_entropy if supervised_loss is None else supervised_loss
        self.supervised_name = term_name(self.supervised_loss) if supervised_name is None else supervised_name
        if not self.supervised_name.isidentifier() or self.supervised_name in ("loss", "kd", "ml", "ens"):
            raise ValueError(
                f"`supervised_name` must be a name other than loss, kd, ml, ens; got {self.supervised_name!r}."
            )

    def forward(
        self,
        student_logits: Sequence[Tensor],
        teacher_logits: Tensor | None,
        target: Tensor,
        *,
        use_kd: bool = True,
        use_ml: bool = True,
    ) -> LossTerms:
        """Compute every term.

        Args:
            student_logits: ``K >= 1`` tensors ``(B, C)`` or ``(B, C, *spatial)``.
            teacher_logits: the teacher's logits of the same shape, or ``None`` (no KD, no teacher terms).
            target: labels in any layout :func:`cross_entropy` (or ``supervised_loss``) accepts.
            use_kd: include the distillation term (the trainer's ``mode``); needs ``teacher_logits``.
            use_ml: include the mutual-learning term (the trainer's ``mode``); needs ``K >= 2``.

        Returns:
            ``{"loss": students' total, "students": {"loss": [K], "ce": [K], "kd": [K], "ml": [K]},
            "teacher": {"loss", "ce"[, "ens"]}}``; "kd"/"ml" only when used, "teacher" only with teacher logits.
            ``"ce"`` is :attr:`supervised_name` (``"dice_ce"`` for a Dice-CE loss, ...).
        """
        t = self.temperature
        ce = [self.supervised_loss(z, target) for z in student_logits]
        students: dict[str, list[Tensor]] = {self.supervised_name: ce}
        totals = [self.ce_weight * c for c in ce]
        if use_kd and teacher_logits is not None:
            gate = teacher_true_class_weight(teacher_logits, target, self.kd_gate)
            students["kd"] = [kd_kl_div(z, teacher_logits, t, gate) for z in student_logits]
            totals = _add_weighted(totals, students["kd"], self.kd_weight)
        if use_ml:
            students["ml"] = mutual_learning_kl_divs(student_logits, t)
            totals = _add_weighted(totals, students["ml"], self.ml_weight)
        out: LossTerms = {"loss": torch.stack(totals).sum(), "students": {"loss": totals, **students}}
        if teacher_logits is not None:
            out["teacher"] = self._teacher_terms(student_logits, teacher_logits, target)
        return out

    def _teacher_terms(
        self, student_logits: Sequence[Tensor], teacher_logits: Tensor, target: Tensor
    ) -> dict[str, Tensor]:
        ce = self.supervised_loss(teacher_logits, target)
        terms = {"loss": ce, self.supervised_name: ce}
        if self.teacher_ensemble_weight > 0:
            t = self.temperature
            # log of the students' mean probability, built in log space so it stays finite
            log_p = torch.stack([F.log_softmax(z.detach().float() / t, dim=1) for z in student_logits])
            ens_logits = torch.logsumexp(log_p, dim=0) - torch.log(torch.tensor(float(len(student_logits))))
            # scaled by t so that kd_kl_div's softmax(. / t) recovers exactly the ensemble's mean probability
            terms["ens"] = kd_kl_div(teacher_logits, ens_logits * t, t)
            terms["loss"] = ce + self.teacher_ensemble_weight * terms["ens"]
        return terms


def term_name(loss: Callable[..., Any]) -> str:
    """A loss term's name from its function or class: ``ce`` for :func:`cross_entropy`, ``dice_ce`` for MONAI's
    ``DiceCELoss``, ``focal`` for ``FocalLoss``, ``cross_entropy`` for ``torch.nn.CrossEntropyLoss``."""
    if loss is cross_entropy:
        return "ce"
    target = getattr(loss, "func", loss)  # functools.partial
    name = getattr(target, "__name__", None) or type(target).__name__
    name = re.sub(r"Loss$", "", name) or name
    words = re.findall(r"[A-Z]+(?=[A-Z][a-z]|$|_|\d)|[A-Z]?[a-z]+|\d+|[A-Z]+", name)
    return "_".join(w.lower() for w in words) or "supervised"


def _add_weighted(totals: list[Tensor], terms: list[Tensor], weight: float) -> list[Tensor]:
    # a zero weight leaves the total untouched, so a term that is warming up cannot inject NaN or cost a backward
    return totals if weight == 0 else [tot + weight * term for tot, term in zip(totals, terms, strict=True)]


def _check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise ValueError(f"`temperature` must be > 0, got {temperature}.")
