"""Classification metrics for every network of one validation pass: teacher, each student and the ensemble.

The evaluator publishes each network's logits under :func:`monai_kdml.keys.pred_key` (the ensemble's are the log of
the mean student probability, so ``softmax`` gives the ensemble probability) and the class index under ``"label"``.
The output transforms here are named, picklable callables that read that output, decollated (a list of per-sample
dicts, MONAI's default) or batched (one dict), so configs never need ``$lambda``.

Which implementation computes what:

- AUC: MONAI :class:`~monai.handlers.ROCAUC` on the class probabilities (macro one-vs-rest; for two classes this
  equals the AUC of class 1, since both columns rank samples identically).
- Two classes: accuracy, balanced accuracy and F1 from MONAI :class:`~monai.handlers.ConfusionMatrix` on the
  positive class's channel only (``positive_class``, default 1; :class:`PredictionOutput` puts it last and
  ``include_background=False`` drops the other), so the numbers are the textbook ones for that class.
- More classes: MONAI's confusion-matrix handler averages one-vs-rest counts, whose "accuracy" counts true
  negatives of every class (a chance-level 9-class model scores ~0.8), so ignite's ``Accuracy``,
  ``Recall(average="macro")`` (= balanced accuracy) and macro ``Fbeta(1)`` are used instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from ignite.metrics import Accuracy, Fbeta, Metric, Recall
from monai.handlers import ROCAUC, ConfusionMatrix
from monai.networks.utils import one_hot

from monai_kdml.keys import ENSEMBLE, cohort_key, is_teacher_name, pred_key, split_cohort
from monai_kdml.metrics.disagreement import StudentDisagreement

__all__ = [
    "ClassIndexOutput",
    "PredictionOutput",
    "ProbabilityOutput",
    "StudentLogitsOutput",
    "class_indices",
    "classification_metrics",
    "logits_of",
    "stack_output",
]


def stack_output(output: Any, key: str) -> torch.Tensor:
    """One key of an engine output as a batch: per-sample values of a decollated list are stacked on dim 0.

    Raises:
        ValueError: the output is neither a dict nor a non-empty list of dicts, or lacks ``key``.
    """
    if isinstance(output, dict):
        if key not in output:
            raise ValueError(f"engine output has no key '{key}'; keys: {sorted(output)}.")
        return torch.as_tensor(output[key])
    if isinstance(output, (list, tuple)) and output and all(isinstance(item, dict) for item in output):
        if key not in output[0]:
            raise ValueError(f"engine output has no key '{key}'; keys: {sorted(output[0])}.")
        return torch.stack([torch.as_tensor(item[key]) for item in output])
    raise ValueError(f"engine output must be a dict or a non-empty list of dicts, got {type(output).__name__}.")


def logits_of(output: Any, key: str, num_classes: int) -> torch.Tensor:
    """``output[key]`` as float ``(B, num_classes)`` logits; a clear ``ValueError`` for any other shape."""
    logits = stack_output(output, key)
    if logits.ndim != 2 or logits.shape[1] != num_classes:
        raise ValueError(
            f"'{key}' must hold {num_classes} logits per sample (B, {num_classes}), got {tuple(logits.shape)}."
        )
    return logits.float()


def class_indices(output: Any, key: str, num_classes: int) -> torch.Tensor:
    """``output[key]`` as ``(B,)`` int64 class indices in ``[0, num_classes)``; a clear ``ValueError`` otherwise."""
    labels = stack_output(output, key)
    if labels.ndim == 0 or labels.numel() != labels.shape[0]:
        raise ValueError(f"'{key}' must hold one class index per sample, got shape {tuple(labels.shape)}.")
    labels = labels.reshape(-1).long()
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"'{key}' has class indices outside [0, {num_classes}): {labels.unique().tolist()}.")
    return labels


class ProbabilityOutput:
    """``(probabilities (B, C), one-hot labels (B, C))`` of one network, for MONAI ``ROCAUC``.

    Args:
        pred_key: output key of the network's logits, e.g. ``pred_key("teacher")``.
        num_classes: number of classes C.
        label_key: output key of the class index, shape (1,) or () per sample.
    """

    def __init__(self, pred_key: str, num_classes: int, label_key: str = "label") -> None:
        self.pred_key, self.num_classes, self.label_key = pred_key, num_classes, label_key

    def __call__(self, output: Any) -> tuple[torch.Tensor, torch.Tensor]:
        probs = torch.softmax(logits_of(output, self.pred_key, self.num_classes), dim=1)
        labels = class_indices(output, self.label_key, self.num_classes)
        return probs, one_hot(labels[:, None], self.num_classes, dim=1).to(probs.device)


class PredictionOutput:
    """``(one-hot argmax prediction (B, C), one-hot labels (B, C))`` of one network, for MONAI ``ConfusionMatrix``.

    Args are those of :class:`ProbabilityOutput`, and:
        positive_class: when given, its channel is moved last (the others keep their order), so that a binary
            ``ConfusionMatrix(include_background=False)`` scores that class.
    """

    def __init__(
        self, pred_key: str, num_classes: int, label_key: str = "label", positive_class: int | None = None
    ) -> None:
        self.pred_key, self.num_classes, self.label_key = pred_key, num_classes, label_key
        self.order = None if positive_class is None else _positive_last(num_classes, positive_class)

    def __call__(self, output: Any) -> tuple[torch.Tensor, torch.Tensor]:
        logits = logits_of(output, self.pred_key, self.num_classes)
        labels = class_indices(output, self.label_key, self.num_classes)
        predicted = one_hot(logits.argmax(dim=1, keepdim=True), self.num_classes, dim=1)
        target = one_hot(labels[:, None], self.num_classes, dim=1).to(predicted.device)
        if self.order is not None:
            predicted, target = predicted[:, self.order], target[:, self.order]
        return predicted, target


def _positive_last(num_classes: int, positive_class: int) -> list[int]:
    if isinstance(positive_class, bool) or not 0 <= positive_class < num_classes:
        raise ValueError(f"`positive_class` must be a class index in [0, {num_classes}), got {positive_class!r}.")
    return [c for c in range(num_classes) if c != positive_class] + [positive_class]


class ClassIndexOutput:
    """``(logits (B, C), class indices (B,))`` of one network, for ignite ``Accuracy``, ``Recall``, ``Fbeta``.

    Args are those of :class:`ProbabilityOutput`.
    """

    def __init__(self, pred_key: str, num_classes: int, label_key: str = "label") -> None:
        self.pred_key, self.num_classes, self.label_key = pred_key, num_classes, label_key

    def __call__(self, output: Any) -> tuple[torch.Tensor, torch.Tensor]:
        logits = logits_of(output, self.pred_key, self.num_classes)
        return logits, class_indices(output, self.label_key, self.num_classes).to(logits.device)


class StudentLogitsOutput:
    """The students' logits as a list of K batched tensors (B, C, *), for ``StudentDisagreement``.

    Args:
        pred_keys: output keys of the students' logits.
    """

    def __init__(self, pred_keys: Sequence[str]) -> None:
        self.pred_keys = list(pred_keys)

    def __call__(self, output: Any) -> list[torch.Tensor]:
        return [stack_output(output, key).float() for key in self.pred_keys]


def _confusion_metrics(key: str, num_classes: int, label_key: str, positive_class: int) -> dict[str, Metric]:
    if num_classes == 2:
        transform = PredictionOutput(key, num_classes, label_key, positive_class)
        return {
            suffix: ConfusionMatrix(
                include_background=False, metric_name=name, output_transform=transform, save_details=False
            )
            for suffix, name in (("acc", "accuracy"), ("bacc", "balanced accuracy"), ("f1", "f1 score"))
        }
    transform_idx = ClassIndexOutput(key, num_classes, label_key)
    return {
        "acc": Accuracy(output_transform=transform_idx),
        "bacc": Recall(average="macro", output_transform=transform_idx),
        "f1": Fbeta(beta=1.0, average=True, output_transform=transform_idx),
    }


def classification_metrics(
    network_names: Sequence[str], num_classes: int = 2, label_key: str = "label", positive_class: int = 1
) -> dict[str, Metric]:
    """Metrics of every network, ready for an evaluator's ``key_val_metric`` / ``additional_metrics``.

    Per network ``<net>``: ``<net>_auc``, ``<net>_acc``, ``<net>_bacc`` (balanced accuracy), ``<net>_f1`` (of
    ``positive_class`` for two classes, macro otherwise); plus ``disagreement`` (:class:`StudentDisagreement`) when
    there are at least two students. Names of a cohort run (``kd/student_0``, :func:`monai_kdml.keys.network_names`
    with ``cohorts``) give ``kd/student_0_auc``, ... and one ``kd/disagreement`` per cohort. Patient-level AUCs are the
    MSI app's (:func:`monai_kdml.apps.msi.patient_auc_metrics`).
    All values are scalars, so ``StatsHandler``, ``TensorBoardStatsHandler`` and ``MetricsSaver`` log them unchanged.

    Args:
        network_names: e.g. ``monai_kdml.keys.network_names(K)``.
        num_classes: number of classes C (>= 2).
        label_key: output key of the class index.
        positive_class: the class whose F1 two classes report (accuracy and balanced accuracy are symmetric);
            unused for more classes (macro averages).

    Returns:
        Fresh metric objects keyed by name (build one dict per evaluator).

    Raises:
        ValueError: empty or duplicated ``network_names``, ``num_classes < 2``, or ``positive_class`` outside
            ``[0, num_classes)``.
    """
    if not network_names or len(set(network_names)) != len(network_names):
        raise ValueError(f"`network_names` must be non-empty and unique, got {list(network_names)}.")
    if num_classes < 2:
        raise ValueError(f"`num_classes` must be >= 2, got {num_classes}.")
    _positive_last(num_classes, positive_class)
    metrics: dict[str, Metric] = {}
    for name in network_names:
        key = pred_key(name)
        metrics[f"{name}_auc"] = ROCAUC(output_transform=ProbabilityOutput(key, num_classes, label_key))
        for suffix, metric in _confusion_metrics(key, num_classes, label_key, positive_class).items():
            metrics[f"{name}_{suffix}"] = metric
    groups: dict[str | None, list[str]] = {}
    for name in network_names:
        cohort, plain = split_cohort(name)
        if plain != ENSEMBLE and not is_teacher_name(plain):
            groups.setdefault(cohort, []).append(name)
    for cohort, students in groups.items():
        if len(students) >= 2:
            transform_students = StudentLogitsOutput([pred_key(name) for name in students])
            metrics[cohort_key(cohort, "disagreement")] = StudentDisagreement(output_transform=transform_students)
    return metrics
