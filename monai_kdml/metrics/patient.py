"""Patient-level scores and AUC: the clinical end point of tile classifiers (is this patient MSI-high?).

Tile probabilities are averaged per patient and the AUC is computed over patients, as in Kather et al.
(Nature Medicine 2019). The patient id comes from the tile path through any ``patient_id_fn``; the default
reads the TCGA barcode ``TCGA-<TSS>-<participant>`` that Kather's tile names carry.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

import ignite.distributed as idist
import numpy as np
import torch
from ignite.exceptions import NotComputableError
from ignite.metrics import Metric
from ignite.metrics.metric import reinit__is_reduced
from monai.metrics import compute_roc_auc

__all__ = ["TCGA_PATIENT_PATTERN", "PatientAUC", "patient_level_scores", "tcga_patient_id"]

logger = logging.getLogger(__name__)

TCGA_PATIENT_PATTERN = re.compile(r"TCGA-[A-Z0-9]{2}-[A-Z0-9]{4}", re.IGNORECASE)
"""TCGA patient barcode: project, tissue source site, participant (``TCGA-AA-3516``); any case."""


def tcga_patient_id(path: str | Path) -> str:
    """Patient id of a tile: the first TCGA barcode in the file name (upper-cased), else the file stem.

    Same rule as :func:`monai_kdml.data.kather.patient_id_from_path`, so metrics group tiles as the split does;
    without a barcode every tile is its own patient.

    Example:
        >>> tcga_patient_id("/data/MSIMUT/blk-AAAAAAAAAAAA-TCGA-AA-3516-01Z-00-DX1.png")
        'TCGA-AA-3516'
    """
    name = Path(path).name
    match = TCGA_PATIENT_PATTERN.search(name)
    return match.group(0).upper() if match else Path(name).stem


def patient_level_scores(
    paths: Sequence[str | Path],
    probs: Sequence[float] | np.ndarray | torch.Tensor,
    labels: Sequence[int] | np.ndarray | torch.Tensor | None = None,
    patient_id_fn: Callable[[str], str] | None = None,
) -> list[dict[str, Any]]:
    """Average tile probabilities per patient: ``p_patient = mean(p_tile for the patient's tiles)``.

    A patient's label is the majority of its tile labels (ties count as positive). All tiles of a patient should
    share the label (MSI status is per patient); disagreement means a labelling or ``patient_id_fn`` problem, so
    it is logged as a warning naming the patients rather than silently averaged away.

    Args:
        paths: tile paths, length N.
        probs: positive-class probability of each tile, shape (N,).
        labels: binary tile labels (0/1), shape (N,), or None for unlabelled data.
        patient_id_fn: tile path -> patient id; default :func:`tcga_patient_id`.

    Returns:
        One row per patient, sorted by id: ``{"patient_id", "num_tiles", "probability"}`` plus ``"label"`` when
        labels are given; ready for ``csv.DictWriter``.

    Raises:
        ValueError: lengths differ, or labels are not 0/1.
    """
    id_fn = patient_id_fn or tcga_patient_id
    prob_arr = np.asarray(torch.as_tensor(probs).detach().cpu(), dtype=np.float64).reshape(-1)
    if len(paths) != prob_arr.size:
        raise ValueError(f"`paths` has {len(paths)} entries but `probs` has {prob_arr.size}.")
    label_arr = None
    if labels is not None:
        label_arr = np.asarray(torch.as_tensor(labels).detach().cpu()).reshape(-1)
        if label_arr.size != prob_arr.size:
            raise ValueError(f"`labels` has {label_arr.size} entries but `probs` has {prob_arr.size}.")
        if not np.isin(label_arr, (0, 1)).all():
            raise ValueError(f"`labels` must be binary (0/1), got values {np.unique(label_arr).tolist()}.")

    groups: dict[str, list[int]] = {}
    for index, path in enumerate(paths):
        groups.setdefault(id_fn(str(path)), []).append(index)

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
    if mixed:
        logger.warning(
            "%d patient(s) have tiles with different labels, using the majority label (ties positive): %s. "
            "Check the labels and `patient_id_fn`.",
            len(mixed),
            ", ".join(mixed[:5]) + (", ..." if len(mixed) > 5 else ""),
        )
    return rows


class PatientAUC(Metric):
    """ROC AUC over patients of the per-patient mean positive-class probability (see :func:`patient_level_scores`).

    ``update`` takes ``(paths, probs, labels)``: tile paths (list of B str), positive-class probabilities (B,) and
    binary labels (B,), e.g. from :class:`monai_kdml.metrics.classification.TileScoreOutput`. Under DDP, ``compute``
    gathers the tiles of every rank; a tile seen twice (``DistributedSampler`` pads the last batch) counts once.
    The AUC is MONAI's :func:`~monai.metrics.compute_roc_auc` (NaN with a warning when all patients share a label).

    Args:
        patient_id_fn: tile path -> patient id; default :func:`tcga_patient_id`.
        output_transform: maps ``engine.state.output`` to ``(paths, probs, labels)``.
        device: unused by the computation (kept on CPU); accepted for the ignite ``Metric`` interface.

    Example:
        >>> metric = PatientAUC()
        >>> paths = ["a/TCGA-AA-0001-x.png", "b/TCGA-AA-0002-y.png"]
        >>> metric.update((paths, torch.tensor([0.9, 0.2]), torch.tensor([1, 0])))
        >>> metric.compute()
        1.0
    """

    def __init__(
        self,
        patient_id_fn: Callable[[str], str] | None = None,
        output_transform: Callable = lambda x: x,
        device: str | torch.device = "cpu",
    ) -> None:
        self.patient_id_fn = patient_id_fn
        super().__init__(output_transform=output_transform, device=device, skip_unrolling=True)

    @reinit__is_reduced
    def reset(self) -> None:
        self._tiles: dict[str, tuple[float, int]] = {}

    @reinit__is_reduced
    def update(self, output: Sequence[Any]) -> None:
        """Record one batch of ``(paths, probs, labels)``."""
        if len(output) != 3:
            raise ValueError(f"PatientAUC.update expects (paths, probs, labels), got {len(output)} items.")
        paths, probs, labels = output
        prob_list = torch.as_tensor(probs).detach().cpu().reshape(-1).tolist()
        label_list = torch.as_tensor(labels).detach().cpu().reshape(-1).tolist()
        if not len(paths) == len(prob_list) == len(label_list):
            raise ValueError(
                f"PatientAUC.update: {len(paths)} paths, {len(prob_list)} probabilities and {len(label_list)} labels."
            )
        for path, prob, label in zip(paths, prob_list, label_list, strict=True):
            self._tiles.setdefault(str(path), (float(prob), int(label)))

    def compute(self) -> float:
        """Patient-level AUC of the tiles recorded on all ranks since the last ``reset``."""
        tiles: dict[str, tuple[float, int]] = {}
        gathered = cast(list[dict[str, tuple[float, int]]], idist.all_gather(self._tiles))
        for rank_tiles in gathered:  # one dict per rank; [self._tiles] without DDP
            for path, value in rank_tiles.items():
                tiles.setdefault(path, value)
        if not tiles:
            raise NotComputableError("PatientAUC must have at least one example before it can be computed.")
        paths = list(tiles)
        probs = [tiles[p][0] for p in paths]
        labels = [tiles[p][1] for p in paths]
        rows = patient_level_scores(paths, probs, labels, self.patient_id_fn)
        patient_probs = torch.tensor([row["probability"] for row in rows], dtype=torch.float64)
        patient_labels = torch.tensor([row["label"] for row in rows], dtype=torch.float64)
        return float(cast(float, compute_roc_auc(patient_probs, patient_labels)))
