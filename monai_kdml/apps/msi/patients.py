"""Patient-level scores and AUC: the clinical end point of tile classifiers (is this patient MSI-high?).

Tile probabilities are averaged per patient and the AUC is computed over patients, as in Kather et al.
(Nature Medicine 2019). The patient id is the datalist's ``"patient"`` field, which travels with every batch
(``KDMLEvaluator(batch_keys=["patient"])`` copies it into the engine output); nothing here re-derives it from file
names, so a datalist whose ids are not in the file names (a CSV, another naming) gets true patient metrics.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, cast

import ignite.distributed as idist
import numpy as np
import torch
from ignite.exceptions import NotComputableError
from ignite.metrics import Metric
from ignite.metrics.metric import reinit__is_reduced
from monai.metrics import compute_roc_auc

from monai_kdml.keys import pred_key
from monai_kdml.metrics.classification import class_indices, logits_of

__all__ = ["PATIENT_KEY", "PatientAUC", "PatientScoreOutput", "patient_auc_metrics", "patient_level_scores"]

logger = logging.getLogger(__name__)

PATIENT_KEY = "patient"
"""Datalist (and engine output) key of a tile's patient id."""


def patient_level_scores(
    patients: Sequence[str],
    probs: Sequence[float] | np.ndarray | torch.Tensor,
    labels: Sequence[int] | np.ndarray | torch.Tensor | None = None,
) -> list[dict[str, Any]]:
    """Average tile probabilities per patient: ``p_patient = mean(p_tile for the patient's tiles)``.

    A patient's label is the majority of its tile labels (ties count as positive). All tiles of a patient should
    share the label (MSI status is per patient); disagreement means a labelling or patient-id problem, so it is
    logged as a warning naming the patients rather than silently averaged away.

    Args:
        patients: patient id of each tile, length N (the datalist's ``"patient"`` values).
        probs: positive-class probability of each tile, shape (N,).
        labels: binary tile labels (0/1), shape (N,), or None for unlabelled data.

    Returns:
        One row per patient, sorted by id: ``{"patient_id", "num_tiles", "probability"}`` plus ``"label"`` when
        labels are given; ready for ``csv.DictWriter``.

    Raises:
        ValueError: lengths differ, or labels are not 0/1.
    """
    prob_arr = np.asarray(torch.as_tensor(probs).detach().cpu(), dtype=np.float64).reshape(-1)
    if len(patients) != prob_arr.size:
        raise ValueError(f"`patients` has {len(patients)} entries but `probs` has {prob_arr.size}.")
    label_arr = None
    if labels is not None:
        label_arr = np.asarray(torch.as_tensor(labels).detach().cpu()).reshape(-1)
        if label_arr.size != prob_arr.size:
            raise ValueError(f"`labels` has {label_arr.size} entries but `probs` has {prob_arr.size}.")
        if not np.isin(label_arr, (0, 1)).all():
            raise ValueError(f"`labels` must be binary (0/1), got values {np.unique(label_arr).tolist()}.")

    groups: dict[str, list[int]] = {}
    for index, patient in enumerate(patients):
        groups.setdefault(str(patient), []).append(index)

    rows: list[dict[str, Any]] = []
    mixed: list[str] = []
    for patient in sorted(groups):
        indices = groups[patient]
        row: dict[str, Any] = {
            "patient_id": patient,
            "num_tiles": len(indices),
            "probability": float(prob_arr[indices].mean()),
        }
        if label_arr is not None:
            positive_fraction = float(label_arr[indices].mean())
            if 0.0 < positive_fraction < 1.0:
                mixed.append(patient)
            row["label"] = int(positive_fraction >= 0.5)
        rows.append(row)
    if mixed and frozenset(mixed) not in _WARNED_MIXED:
        _WARNED_MIXED.add(frozenset(mixed))  # once per process: every network and validation scores the same tiles
        logger.warning(
            "%d patient(s) have tiles with different labels, using the majority label (ties positive): %s. "
            "Check the labels and the datalist's patient ids.",
            len(mixed),
            ", ".join(mixed[:5]) + (", ..." if len(mixed) > 5 else ""),
        )
    return rows


_WARNED_MIXED: set[frozenset[str]] = set()  # patient sets already warned about (log once, not per network/epoch)


class PatientScoreOutput:
    """``(tile ids, patient ids, positive-class probabilities (B,), binary labels (B,))`` of one network.

    For :class:`PatientAUC` and reports. Patient ids are read from ``output[patient_key]`` (copied from the batch by
    ``KDMLEvaluator(batch_keys=["patient"])``); tile ids are the image's ``meta["filename_or_obj"]`` when present
    (so a tile padded twice by a distributed sampler counts once), else ``None``.

    Args:
        pred_key: output key of the network's logits.
        num_classes: number of classes C.
        positive_class: class whose probability is scored; labels become ``label == positive_class``.
        patient_key: output key of the patient ids.
        image_key: output key of the image.
        label_key: output key of the class index.
    """

    def __init__(
        self,
        pred_key: str,
        num_classes: int,
        positive_class: int = 1,
        patient_key: str = PATIENT_KEY,
        image_key: str = "image",
        label_key: str = "label",
    ) -> None:
        if not 0 <= positive_class < num_classes:
            raise ValueError(f"`positive_class` must be in [0, {num_classes}), got {positive_class}.")
        self.pred_key, self.num_classes, self.positive_class = pred_key, num_classes, positive_class
        self.patient_key, self.image_key, self.label_key = patient_key, image_key, label_key

    def _items(self, output: Any) -> list[dict]:
        return [output] if isinstance(output, dict) else list(output)

    def patients(self, output: Any) -> list[str]:
        """The patient id of every sample, in order."""
        found: list[str] = []
        for item in self._items(output):
            if self.patient_key not in item:
                raise ValueError(
                    f"patient-level metrics need the datalist's '{self.patient_key}' ids in the engine output "
                    f"(got keys {sorted(item)}): build the evaluator with batch_keys=['{self.patient_key}']."
                )
            value = item[self.patient_key]
            found.extend([value] if isinstance(value, str) else [str(v) for v in value])
        return [str(p) for p in found]

    def tiles(self, output: Any) -> list[str] | None:
        """The file name of every sample, or ``None`` when the images carry no file names."""
        found: list[str] = []
        for item in self._items(output):
            meta = getattr(item.get(self.image_key), "meta", None) or {}
            names = meta.get("filename_or_obj")
            if names is None:
                return None
            found.extend([names] if isinstance(names, str) else [str(n) for n in names])
        return found

    def __call__(self, output: Any) -> tuple[list[str] | None, list[str], torch.Tensor, torch.Tensor]:
        probs = torch.softmax(logits_of(output, self.pred_key, self.num_classes), dim=1)[:, self.positive_class]
        labels = (class_indices(output, self.label_key, self.num_classes) == self.positive_class).long()
        return self.tiles(output), self.patients(output), probs, labels


class PatientAUC(Metric):
    """ROC AUC over patients of the per-patient mean positive-class probability (see :func:`patient_level_scores`).

    ``update`` takes ``(tile_ids, patient_ids, probs, labels)``, e.g. from :class:`PatientScoreOutput`. Under DDP,
    ``compute`` gathers the tiles of every rank; a tile seen twice (same tile id) counts once. The AUC is MONAI's
    :func:`~monai.metrics.compute_roc_auc` (NaN with a warning when all patients share a label).

    Args:
        output_transform: maps ``engine.state.output`` to ``(tile_ids, patient_ids, probs, labels)``.
        device: unused by the computation (kept on CPU); accepted for the ignite ``Metric`` interface.

    Example:
        >>> metric = PatientAUC()
        >>> metric.update((None, ["P1", "P2"], torch.tensor([0.9, 0.2]), torch.tensor([1, 0])))
        >>> metric.compute()
        1.0
    """

    def __init__(self, output_transform: Callable = lambda x: x, device: str | torch.device = "cpu") -> None:
        super().__init__(output_transform=output_transform, device=device, skip_unrolling=True)

    @reinit__is_reduced
    def reset(self) -> None:
        self._tiles: dict[str, tuple[str, float, int]] = {}

    @reinit__is_reduced
    def update(self, output: Sequence[Any]) -> None:
        """Record one batch of ``(tile_ids, patient_ids, probs, labels)``; ``tile_ids`` may be ``None``."""
        if len(output) != 4:
            raise ValueError(f"PatientAUC.update expects (tile_ids, patient_ids, probs, labels), got {len(output)}.")
        tiles, patients, probs, labels = output
        prob_list = torch.as_tensor(probs).detach().cpu().reshape(-1).tolist()
        label_list = torch.as_tensor(labels).detach().cpu().reshape(-1).tolist()
        if not len(patients) == len(prob_list) == len(label_list):
            raise ValueError(
                f"PatientAUC.update: {len(patients)} patients, {len(prob_list)} probabilities and "
                f"{len(label_list)} labels."
            )
        if tiles is None:  # no file names: every sample is its own tile
            start = len(self._tiles)
            tiles = [f"#{idist.get_rank()}:{start + i}" for i in range(len(patients))]
        keys = [str(t) for t in tiles]
        for key, patient, prob, label in zip(keys, patients, prob_list, label_list, strict=True):
            self._tiles.setdefault(key, (str(patient), float(prob), int(label)))

    def compute(self) -> float:
        """Patient-level AUC of the tiles recorded on all ranks since the last ``reset``."""
        tiles: dict[str, tuple[str, float, int]] = {}
        gathered = cast(list[dict[str, tuple[str, float, int]]], idist.all_gather(self._tiles))
        for rank_tiles in gathered:  # one dict per rank; [self._tiles] without DDP
            for key, value in rank_tiles.items():
                tiles.setdefault(key, value)
        if not tiles:
            raise NotComputableError("PatientAUC must have at least one example before it can be computed.")
        values = list(tiles.values())
        rows = patient_level_scores([v[0] for v in values], [v[1] for v in values], [v[2] for v in values])
        patient_probs = torch.tensor([row["probability"] for row in rows], dtype=torch.float64)
        patient_labels = torch.tensor([row["label"] for row in rows], dtype=torch.float64)
        return float(cast(float, compute_roc_auc(patient_probs, patient_labels)))


def patient_auc_metrics(
    network_names: Sequence[str], num_classes: int = 2, positive_class: int = 1, patient_key: str = PATIENT_KEY
) -> dict[str, Metric]:
    """``<network>_patient_auc`` for every network (positive class vs rest), to merge with the core metrics.

    Example::

        metrics = {**classification_metrics(names), **patient_auc_metrics(names)}
    """
    return {
        f"{name}_patient_auc": PatientAUC(
            output_transform=PatientScoreOutput(pred_key(name), num_classes, positive_class, patient_key)
        )
        for name in network_names
    }
