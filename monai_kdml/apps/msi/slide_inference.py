"""Whole-slide inference of the MSI student ensemble: tissue tiles of every slide through the ensemble (and, for
comparison, the teacher), in batches with DataLoader workers, one slide at a time, so memory stays bounded by a batch
and a thumbnail whatever the slide size.

Per slide, under ``output_dir/<slide>/``: ``tiles.csv`` (``x, y`` level-0 pixels of the tile's top-left corner,
``level`` read from, ``probability`` of the positive class, ``disagreement`` of the students, and
``teacher_probability`` with the teacher) and ``heatmap.png``. Over all slides: ``slides.csv`` (one row per slide,
failed slides too, with the reason), ``patients.csv`` when slides map to patients, ``summary.md`` and, with a labels
CSV, slide- and patient-level AUCs with bootstrap intervals and ``roc_*.png`` (:mod:`.slide_report`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import DataLoader, PatchWSIDataset, WSIReader
from monai.transforms import AsDiscreted, CastToTyped, Compose, Resized
from torch import nn

from monai_kdml.apps.msi.classes import TileClasses
from monai_kdml.apps.msi.slide_report import (
    SCORES,
    read_slide_labels,
    slide_auc_report,
    slide_score,
    write_heatmap,
    write_table,
)
from monai_kdml.apps.msi.slides import SlideError, SlidePlan, SlideSource, list_slides, plan_slide
from monai_kdml.data.datasets import AfterCache
from monai_kdml.loop_progress import Progress
from monai_kdml.metrics import student_disagreement
from monai_kdml.networks.ensemble import StudentEnsemble

__all__ = ["SLIDE_COLUMNS", "SlideInference", "slide_tile_transform"]

logger = logging.getLogger(__name__)

SLIDE_COLUMNS = (
    "slide", "patient", "status", "score", "tissue_tiles", "skipped_tiles", "mean_disagreement", "teacher_score",
    "seconds", "mpp", "level", "label",
)  # fmt: skip
"""Columns of ``slides.csv``."""


def slide_tile_transform(image_size: int) -> Compose:
    """A tile read from the slide (``(3, s, s)`` uint8) to the network's input: the deterministic head of
    :func:`monai_kdml.apps.msi.tile_transforms` (area resize to ``image_size``, rounding to uint8, scaling to [0, 1])
    after the reading, so slide tiles meet the network exactly as the training tiles did."""
    return Compose(
        [
            Resized("image", spatial_size=(image_size, image_size), mode="area"),
            AsDiscreted("image", rounding="torchrounding"),
            CastToTyped("image", dtype=torch.uint8),
            AfterCache("image"),
        ]
    )


def _require_backend(backend: str) -> None:
    """Raise a clear error when the reader library of ``backend`` is not installed (the ``wsi`` extra)."""
    import importlib.util

    module = {"openslide": "openslide", "tifffile": "tifffile", "cucim": "cucim"}[backend]
    if importlib.util.find_spec(module) is None:
        raise ImportError(f'`backend` {backend!r} needs {module}: pip install "monai-kdml[wsi]".')


class SlideInference:
    """Score every slide with the student ensemble and write the per-slide and per-patient outputs.

    Args:
        ensemble: the trained :class:`~monai_kdml.networks.StudentEnsemble` (weights loaded).
        slides: the slides (:func:`monai_kdml.apps.msi.slides.list_slides`).
        output_dir: folder of the outputs (``eval/slides``).
        image_size: the network's input side (the record's ``image_size``).
        tile_mpp: microns per pixel of the network's input (the record's ``tile_mpp``).
        classes: the trained classes; the positive one is scored.
        teacher: the teacher, to score beside the ensemble (``teacher_probability``), or ``None``.
        slide_mpp: level-0 microns per pixel for slides whose file states none.
        score: slide score, one of :data:`~monai_kdml.apps.msi.slide_report.SCORES`.
        top_k_fraction: the fraction of tiles of the ``"top_k"`` score.
        min_tissue: smallest tissue fraction of a tile that is scored.
        labels: a CSV ``slide,label[,patient]`` for slide- and patient-level AUCs (its patients map the slides listed
            without one), or ``None``.
        backend: MONAI ``WSIReader`` backend (``"openslide"`` or ``"tifffile"``).
        batch_size: tiles per forward pass.
        num_workers: DataLoader worker processes reading tiles.
        device: where the networks run.
        mask_side: longest side of the thumbnail the tissue mask is computed on.
        num_resamples: bootstrap resamples of the AUC intervals.

    Raises:
        ValueError: an unknown ``score`` or ``backend``, a non-positive ``tile_mpp`` or ``slide_mpp``.
        ImportError: the reader library of ``backend`` is not installed (the ``wsi`` extra).
    """

    def __init__(
        self,
        ensemble: StudentEnsemble,
        slides: Sequence[SlideSource],
        output_dir: str | Path,
        image_size: int,
        tile_mpp: float,
        classes: TileClasses,
        teacher: nn.Module | None = None,
        slide_mpp: float | None = None,
        score: str = "mean",
        top_k_fraction: float = 0.1,
        min_tissue: float = 0.5,
        labels: str | Path | None = None,
        backend: str = "openslide",
        batch_size: int = 32,
        num_workers: int = 0,
        device: str | torch.device = "cpu",
        mask_side: int = 1024,
        num_resamples: int = 1000,
    ) -> None:
        slide_score([0.5], score, top_k_fraction)  # checks both
        for key, value in (("tile_mpp", tile_mpp), ("slide_mpp", slide_mpp)):
            if value is not None and not float(value) > 0:
                raise ValueError(f"`{key}` must be a positive number of microns per pixel, got {value!r}.")
        if backend not in ("openslide", "tifffile", "cucim"):
            raise ValueError(f"`backend` must be 'openslide', 'tifffile' or 'cucim', got {backend!r}.")
        _require_backend(backend)
        if backend == "tifffile":
            logger.warning("MONAI's tifffile reader decodes a whole pyramid level for every tile: use it for small "
                           "slides only; `backend` 'openslide' reads regions.")  # fmt: skip
        self.ensemble, self.teacher = ensemble.eval(), None if teacher is None else teacher.eval()
        self.slides, self.output_dir = list(slides), Path(output_dir)
        self.image_size, self.tile_mpp, self.classes = int(image_size), float(tile_mpp), classes
        self.slide_mpp = None if slide_mpp is None else float(slide_mpp)
        self.score, self.top_k_fraction, self.min_tissue = score, top_k_fraction, min_tissue
        self.labels = None if labels is None else read_slide_labels(labels, classes)
        if labels is not None:  # the labels CSV's `patient` column maps slides listed without one
            patients = {s.name: s.patient for s in list_slides(slides=labels)}
            self.slides = [SlideSource(s.path, s.patient or patients.get(s.name)) for s in self.slides]
        self.backend, self.batch_size, self.num_workers = backend, batch_size, num_workers
        self.device, self.mask_side, self.num_resamples = torch.device(device), mask_side, num_resamples
        self.tile_probabilities: dict[str, np.ndarray] = {}

    def run(self) -> list[dict[str, Any]]:
        """Process every slide (a failing one is logged, counted and skipped) and write the tables.

        Returns:
            The ``slides.csv`` rows.

        Raises:
            RuntimeError: every slide failed (after ``slides.csv`` and ``summary.md`` are written).
        """
        reader = WSIReader(backend=self.backend)
        rows = []
        for index, source in enumerate(self.slides, start=1):
            logger.info("slide %d/%d: %s", index, len(self.slides), source.name)
            start = time.perf_counter()
            row: dict[str, Any] = {"slide": source.name, "patient": source.patient or source.name}
            try:
                plan = plan_slide(reader, source, self.image_size, self.tile_mpp, self.slide_mpp, self.min_tissue,
                                  self.mask_side)  # fmt: skip
                row |= self._score_slide(plan)
                row["status"] = "ok"
            except SlideError as err:
                logger.error("%s Skipped; the other slides go on.", err)
                row |= {"status": f"failed: {err}", "score": ""}
            except Exception as err:  # a file that opens but breaks while its tiles are read
                message = f"slide {source.name}: failed while reading tiles ({type(err).__name__}: {err})"
                logger.error("%s. Skipped; the other slides go on.", message)
                row |= {"status": f"failed: {message}", "score": ""}
            row["seconds"] = round(time.perf_counter() - start, 3)
            if self.labels is not None:
                row["label"] = self.labels.get(source.name, "")
            rows.append(row)
        self._write_summary(rows)
        if not any(r["status"] == "ok" for r in rows):
            raise RuntimeError(f"no slide could be scored ({len(rows)} failed): see {self.output_dir / 'slides.csv'}.")
        return rows

    @torch.inference_mode()
    def _predict(self, plan: SlidePlan) -> dict[str, np.ndarray]:
        dataset = PatchWSIDataset(
            plan.tiles, transform=slide_tile_transform(self.image_size), include_label=False,
            center_location=False, reader=WSIReader, backend=self.backend,
        )  # fmt: skip
        loader = DataLoader(dataset, batch_size=self.batch_size, num_workers=self.num_workers, shuffle=False)
        out: dict[str, list] = {"probability": [], "disagreement": [], "teacher_probability": []}
        positive = self.classes.positive
        with Progress(len(plan.tiles), f"slide {plan.name}", "tile", logger) as progress:
            for batch in loader:
                x = torch.as_tensor(batch["image"]).to(self.device)
                members = self.ensemble.member_logits(x)
                out["probability"].append(torch.softmax(self.ensemble.fuse(members).float(), 1)[:, positive].cpu())
                out["disagreement"].append(student_disagreement(members).reshape(-1).cpu())
                if self.teacher is not None:
                    out["teacher_probability"].append(torch.softmax(self.teacher(x).float(), 1)[:, positive].cpu())
                progress.update(len(x))
        return {k: torch.cat(v).numpy() for k, v in out.items() if v}

    def _score_slide(self, plan: SlidePlan) -> dict[str, Any]:
        predicted = self._predict(plan)
        probs = predicted["probability"]
        self.tile_probabilities[plan.name] = probs
        folder = self.output_dir / plan.name
        tiles = []
        for i, tile in enumerate(plan.tiles):
            y, x = tile["location"]
            tiles.append({"x": x, "y": y, "level": tile["level"]} | {k: float(v[i]) for k, v in predicted.items()})
        write_table(folder / "tiles.csv", tiles, ["x", "y", "level", *predicted])
        score = slide_score(probs, self.score, self.top_k_fraction)
        height, width = plan.thumbnail.shape[:2]
        fraction = (plan.step / (height * plan.thumbnail_ratio), plan.step / (width * plan.thumbnail_ratio))
        title = f"{plan.name}: {self.classes.positive_name} score {score:.3f} ({self.score}, {len(probs)} tiles)"
        cells = [(t["row"], t["col"], float(p)) for t, p in zip(plan.tiles, probs, strict=True)]
        write_heatmap(folder / "heatmap.png", plan.thumbnail, plan.grid, fraction, cells, title,
                      f"{self.classes.positive_name} probability")  # fmt: skip
        teacher = predicted.get("teacher_probability")
        return {
            "score": score,
            "tissue_tiles": len(probs),
            "skipped_tiles": plan.skipped,
            "mean_disagreement": float(predicted["disagreement"].mean()),
            "teacher_score": "" if teacher is None else slide_score(teacher, self.score, self.top_k_fraction),
            "mpp": plan.mpp,
            "level": plan.level,
        }

    def _patients(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        tiles: dict[str, list[np.ndarray]] = {}
        slides: dict[str, list[str]] = {}
        for row in rows:
            slides.setdefault(row["patient"], []).append(row["slide"])
            if row["slide"] in self.tile_probabilities:
                tiles.setdefault(row["patient"], []).append(self.tile_probabilities[row["slide"]])
        out = []
        for patient, names in slides.items():
            probs = np.concatenate(tiles[patient]) if patient in tiles else np.zeros(0)
            labels = {r.get("label") for r in rows if r["patient"] == patient} - {""}
            out.append(
                {"patient": patient, "slides": len(names), "tissue_tiles": int(probs.size),
                 "score": slide_score(probs, self.score, self.top_k_fraction) if probs.size else "",
                 "label": labels.pop() if len(labels) == 1 else ""}
            )  # fmt: skip
        return out

    def _write_summary(self, rows: list[dict[str, Any]]) -> None:
        write_table(self.output_dir / "slides.csv", rows, SLIDE_COLUMNS)
        patients = self._patients(rows)
        if any(s.patient is not None for s in self.slides):
            write_table(
                self.output_dir / "patients.csv", patients, ["patient", "slides", "tissue_tiles", "score", "label"]
            )
        ok = [r for r in rows if r["status"] == "ok"]
        lines = [
            "# Slide inference",
            "",
            f"{len(rows)} slides: {len(ok)} scored, {len(rows) - len(ok)} failed. Score: {self.score} "
            f"{self.classes.positive_name} probability of the tissue tiles (scores: {', '.join(SCORES)}).",
            f"Tiles: {sum(r['tissue_tiles'] for r in ok)} with tissue scored, "
            f"{sum(r['skipped_tiles'] for r in ok)} background skipped; "
            f"{sum(r['seconds'] for r in rows):.1f} s in all.",
        ]
        lines += [f"- {r['status']}" for r in rows if r["status"] != "ok"]
        if self.labels is not None:
            lines += ["", "## AUC", ""]
            lines += slide_auc_report(self.output_dir, ok, patients, self.classes, self.num_resamples)
        text = "\n".join(lines) + "\n"
        (self.output_dir / "summary.md").write_text(text)
        logger.info("Slide inference summary (%s):\n%s", self.output_dir / "summary.md", text.rstrip())


def load_ensemble(network: StudentEnsemble, ckpt_path: str | Path, device: str | torch.device) -> StudentEnsemble:
    """``network`` (the bundle's ``network_def``) with the trained weights of ``model.pt``, on ``device``, in eval mode.

    Raises:
        FileNotFoundError: no ``model.pt``: train the bundle first.
    """
    path = Path(ckpt_path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: train the bundle first (it writes the student ensemble).")
    state = torch.load(path, map_location="cpu", weights_only=True)
    network.load_state_dict(state.get("model", state) if "model" in state else state)
    return network.to(device).eval()


def load_teacher(record: dict[str, Any], ckpt_dir: str | Path, device: str | torch.device) -> nn.Module:
    """The trained teacher of ``best_networks.pt`` (the record names its network), for comparison with the ensemble.

    Raises:
        FileNotFoundError: no ``best_networks.pt`` beside ``model.pt``.
    """
    from monai_kdml.networks import build_network, build_teacher

    path = Path(ckpt_dir) / "best_networks.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: `with_teacher` needs the training's best_networks.pt.")

    def factory() -> nn.Module:
        return build_network(
            record["teacher_network"], spatial_dims=2, in_channels=3, num_classes=record["num_classes"]
        )

    members = record.get("teacher_members", 0)
    teacher = build_teacher(factory, [None] * members if members else None)
    teacher.load_state_dict(torch.load(path, map_location="cpu", weights_only=True)["teacher"])
    return teacher.to(device).eval()
