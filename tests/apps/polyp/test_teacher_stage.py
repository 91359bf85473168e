"""``teacher_stage`` (the polyp bundle's default): the teacher is trained alone (selected on its own mAP), then frozen;
in-process workflows, which have no command line to repeat, are refused with the two-step recipe."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from monai_kdml.teacher_stage import STAGE_FOLDER

TINY = ["--preset", "tiny", "--image_size", "64", "--demo_images", "16", "--demo_image_size", "80", "--batch_size", "4"]

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")


def test_two_stages_in_one_command(polyp_bundle, tmp_path: Path) -> None:
    polyp_bundle.cli("--bundle_root", str(tmp_path), *TINY, "--max_epochs", "1", bundle_defaults=True)  # the default
    stage = tmp_path / STAGE_FOLDER / "models"
    record = json.loads((stage / "network.json").read_text())
    assert record["mode"] == "independent" and record["num_students"] == 1
    stage_teacher = torch.load(stage / "best_networks.pt", weights_only=True)["teacher"]
    final_teacher = torch.load(tmp_path / "models" / "checkpoint_final.pt", weights_only=True)["teacher"]
    assert all(torch.equal(v, final_teacher[k]) for k, v in stage_teacher.items())


def test_in_process_workflows_are_refused_with_the_recipe(polyp_bundle, tmp_path: Path) -> None:
    tiny = {"preset": "tiny", "image_size": 64, "demo_images": 16, "demo_image_size": 80, "batch_size": 4}
    with pytest.raises(RuntimeError) as caught:  # MONAI wraps the component's error; ours is the cause
        polyp_bundle.workflow("train.json", bundle_root=str(tmp_path), teacher_stage=True, max_epochs=1, **tiny)
    assert "stage_one_overrides" in str(caught.value.__cause__)
