"""One-command offline KD (``teacher_stage``, the MSI bundle's default): the bundle trains the teacher alone first,
then distils from it frozen; a finished stage is reused; given teacher weights or a run without KD skip it; under
``torchrun`` rank 0 trains it before the process group exists."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from monai_kdml.teacher_stage import DONE_NAME, STAGE_FOLDER

TINY = ["--demo_patients", "8", "--demo_tiles_per_patient", "4", "--image_size", "32", "--batch_size", "8"]
RUN = [*TINY, "--max_epochs", "2", "--warmup_epochs", "0"]


@pytest.fixture(scope="module")
def staged_run(msi_bundle, module_tmp: Callable[[str], Path]) -> tuple[Path, str]:
    root = module_tmp("msi_teacher_stage")
    out = msi_bundle.cli("--bundle_root", str(root), *RUN, bundle_defaults=True)  # the default: no --teacher_stage
    return root, out.stdout + out.stderr


def test_stage_one_trains_the_teacher_alone_selected_on_its_own_metric(staged_run: tuple[Path, str]) -> None:
    root, log = staged_run
    stage = root / STAGE_FOLDER
    record = json.loads((stage / "models" / "network.json").read_text())
    assert record["mode"] == "independent" and record["num_students"] == 1
    assert (stage / DONE_NAME).is_file()
    assert "Teacher stage 1 of 2" in log and "Teacher stage 2 of 2" in log
    assert log.count("Next:") == 1  # the next commands are the cohort run's, not stage 1's
    assert log.count("Teacher stage 1 of 2") == 1  # referenced twice in train.json, resolved (and trained) once
    # the same data and overrides reached stage 1, which shared the run's data cache (the demo made once)
    assert record["image_size"] == 32
    assert not (stage / ".cache").exists() and log.count("Generating synthetic MSI demo tiles") == 1


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


def test_given_weights_or_no_kd_skip_the_stage(msi_bundle, staged_run: tuple[Path, str], tmp_path: Path) -> None:
    root, _ = staged_run
    weights = root / STAGE_FOLDER / "models" / "best_networks.pt"
    given = msi_bundle.cli("--bundle_root", str(tmp_path / "given"), *RUN, "--max_epochs", "1", "--teacher_weights",
                           str(weights), "--teacher_mode", "frozen", bundle_defaults=True)  # fmt: skip
    assert "Teacher stage skipped: `teacher_weights` are given" in given.stdout + given.stderr
    independent = msi_bundle.cli("--bundle_root", str(tmp_path / "alone"), *RUN, "--max_epochs", "1", "--mode",
                                 "independent", bundle_defaults=True)  # fmt: skip
    assert "Teacher stage skipped: no network of this run distils" in independent.stdout + independent.stderr
    for run in ("given", "alone"):
        assert not (tmp_path / run / STAGE_FOLDER).exists()


def test_torchrun_trains_the_stage_on_rank_zero_first(msi_bundle, tmp_path: Path) -> None:
    out = msi_bundle.cli("--bundle_root", str(tmp_path), *RUN, "--max_epochs", "1", bundle_defaults=True,
                         config=["train.json", "multi_gpu_train.json"], torchrun=2, timeout=400)  # fmt: skip
    log = out.stdout + out.stderr
    assert log.count("Teacher stage 1 of 2") == 1 and (tmp_path / STAGE_FOLDER / DONE_NAME).is_file()
    assert "waiting for rank 0" in log
    stage_teacher = torch.load(tmp_path / STAGE_FOLDER / "models" / "best_networks.pt", weights_only=True)["teacher"]
    final_teacher = torch.load(tmp_path / "models" / "checkpoint_final.pt", weights_only=True)["teacher"]
    for key, value in stage_teacher.items():
        assert torch.equal(value, final_teacher[key]), key  # both ranks distilled from stage 1's teacher, frozen
