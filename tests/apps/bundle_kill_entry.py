"""Entry of the kill driver (``tests/killing.py``) for the real bundles: one tiny demo training run of a bundle's
``train.json`` through MONAI's ``ConfigWorkflow``, resumed with ``--resume true`` semantics when asked."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from pathlib import Path

import torch
from monai.bundle import ConfigWorkflow

import monai_kdml.apps.msi
import monai_kdml.apps.polyp  # noqa: F401

torch.set_num_threads(1)

BUNDLES = Path(__file__).resolve().parents[2] / "bundles"
TINY = {
    "msi": {"demo_patients": 8, "demo_tiles_per_patient": 4, "image_size": 32, "batch_size": 8},
    "polyp": {"preset": "tiny", "image_size": 64, "demo_images": 16, "demo_image_size": 80, "batch_size": 4},
}


def train(workdir: str, resume: bool = False, seed: int = 0, bundle: str = "msi", **overrides: object) -> None:
    """Train ``bundle`` at a tiny size into ``workdir`` (its ``bundle_root``); ``overrides`` as on the command line."""
    workflow = ConfigWorkflow(
        config_file=str(BUNDLES / bundle / "train.json"),
        workflow_type="train",
        logging_file=False,
        **{**TINY[bundle], "teacher_stage": False, "bundle_root": workdir, "resume": resume, "seed": seed, **overrides},
    )
    workflow.initialize()
    workflow.run()
    workflow.finalize()
