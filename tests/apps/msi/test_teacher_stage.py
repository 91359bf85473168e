"""One-command offline KD (``--teacher_stage true``): the bundle trains the teacher alone first, then distils from
it frozen; a finished stage is reused, and the options that contradict it are refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from monai_kdml.teacher_stage import DONE_NAME, STAGE_FOLDER

TINY = ["--demo_patients", "8", "--demo_tiles_per_patient", "4", "--image_size", "32", "--batch_size", "8"]
RUN = [*TINY, "--max_epochs", "2", "--warmup_epochs", "0"]


@pytest.fixture(scope="module")
def staged_run(msi_bundle, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("msi_teacher_stage")
    out = msi_bundle.cli("--bundle_root", str(root), *RUN, "--teacher_stage", "true")
    return root, out.stdout + out.stderr


def test_stage_one_trains_the_teacher_alone_selected_on_its_own_metric(staged_run: tuple[Path, str]) -> None:
    root, log = staged_run
    stage = root / STAGE_FOLDER
    record = json.loads((stage / "models" / "network.json").read_text())
    assert record["mode"] == "independent" and record["num_students"] == 1
    assert (stage / DONE_NAME).is_file()
    assert "Teacher stage 1 of 2" in log and "Teacher stage 2 of 2" in log
    # the same data and overrides reached stage 1
    assert record["image_size"] == 32


def test_stage_two_distils_from_that_teacher_frozen(staged_run: tuple[Path, str]) -> None:
    root, _ = staged_run
    stage_teacher = torch.load(root / STAGE_FOLDER / "models" / "best_networks.pt", weights_only=True)["teacher"]
    final_teacher = torch.load(root / "models" / "checkpoint_final.pt", weights_only=True)["teacher"]
    assert stage_teacher.keys() == final_teacher.keys()
    for key, value in stage_teacher.items():
        assert torch.equal(value, final_teacher[key]), key  # frozen: not one step taken in stage 2
    record = json.loads((root / "models" / "network.json").read_text())
    assert record["mode"] == "kdml" and record["num_students"] == 2


def test_a_finished_stage_is_reused(msi_bundle, staged_run: tuple[Path, str]) -> None:
    root, _ = staged_run
    before = (root / STAGE_FOLDER / "models" / "best_networks.pt").stat().st_mtime_ns
    out = msi_bundle.cli("--bundle_root", str(root), *RUN, "--teacher_stage", "true", "--max_epochs", "3",
                         "--resume", "true")  # fmt: skip
    assert "reusing the teacher" in out.stdout + out.stderr
    assert (root / STAGE_FOLDER / "models" / "best_networks.pt").stat().st_mtime_ns == before


def test_teacher_weights_with_the_stage_is_refused(msi_bundle, tmp_path: Path) -> None:
    out = msi_bundle.cli("--bundle_root", str(tmp_path), *RUN, "--teacher_stage", "true", "--teacher_weights",
                         str(tmp_path / "t.pt"), check=False)  # fmt: skip
    assert out.returncode != 0
    assert "`--teacher_stage true` trains its own teacher" in out.stdout + out.stderr
