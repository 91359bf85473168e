"""Run folders through the command line a user types (issue 15 cases 5, 7, 11, 18, 21, 24): one line on the
terminal for an error or Ctrl-C, a second run into a busy folder refused, a resume with other settings refused,
and the files of another bundle or run named."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

TINY = ["--demo_patients", "8", "--demo_tiles_per_patient", "4", "--image_size", "32", "--batch_size", "8"]
REPO = Path(__file__).resolve().parents[3]
ENV = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def finished(msi_bundle, module_tmp: Callable[[str], Path]) -> Path:
    """One finished 1-epoch demo run."""
    root = module_tmp("finished")
    msi_bundle.cli("--bundle_root", str(root), "--max_epochs", "1", *TINY)
    return root


def stderr_lines(out: subprocess.CompletedProcess) -> list[str]:
    return [line for line in out.stderr.splitlines() if line.strip()]


def test_a_bad_option_ends_with_one_line_and_keeps_the_traceback_in_a_file(msi_bundle, tmp_path: Path) -> None:
    out = msi_bundle.cli("--bundle_root", str(tmp_path), *TINY, "--val_interval", "5", "--max_epochs", "2", check=False)
    lines = stderr_lines(out)
    assert out.returncode != 0
    assert lines[-1].startswith(
        "monai-kdml: ValueError: `val_interval` 5 > `max_epochs` 2: no epoch would be validated"
    )
    assert "Traceback" not in out.stdout + out.stderr and len(lines) <= 6, out.stderr
    kept = Path(lines[-2].split("full traceback: ")[1].split(";")[0])
    assert "Traceback (most recent call last)" in kept.read_text()
    debug = msi_bundle.cli(*TINY, "--val_fraction", "0", check=False, env={"MONAI_KDML_DEBUG": "1"})
    assert "Traceback (most recent call last)" in debug.stderr
    assert stderr_lines(debug)[-1].startswith("monai-kdml: ValueError: `val_fraction` is 0: no validation split")


def test_a_failure_during_training_logs_no_traceback_on_the_terminal(msi_bundle, tmp_path: Path) -> None:
    # MONAI's StatsHandler logs every engine exception with its traceback before re-raising it
    out = msi_bundle.cli("--bundle_root", str(tmp_path), *TINY, "--learning_rate", "1e30", check=False)
    assert out.returncode != 0 and "Traceback" not in out.stdout + out.stderr
    assert stderr_lines(out)[-1].startswith("monai-kdml: NonFiniteLossError: non-finite loss")
    (kept,) = (tmp_path / "eval" / "logs").glob("error-*.log")
    assert kept.read_text().count("Traceback (most recent call last)") >= 2  # the logged ones and the final one


def test_a_second_run_is_refused_while_the_first_runs(msi_bundle, tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(msi_bundle.dir / "train.json")]
    args = ["--bundle_root", str(tmp_path), "--max_epochs", "50", *TINY, "--teacher_stage", "false"]
    first = subprocess.Popen(
        [*cmd, *args], cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert first.stdout is not None
        for line in first.stdout:
            if "Epoch: 1/" in line:
                break
        second = msi_bundle.cli(*args, check=False)
        assert second.returncode != 0
        last = stderr_lines(second)[-1]
        assert last.startswith(f"monai-kdml: RunFolderBusyError: {tmp_path / 'models'} is in use by another run")
        assert f"process {first.pid} on " in last and "--max_epochs 50" in last
        first.send_signal(signal.SIGINT)  # training stops at the end of the iteration, with a checkpoint
        stdout, stderr = first.communicate(timeout=120)
    finally:
        first.kill()
    assert first.returncode != 0 and "Traceback" not in stdout + stderr
    assert not (tmp_path / "models" / ".monai_kdml.lock.json").exists()  # released at exit


def test_ctrl_c_outside_training_ends_with_one_line(tmp_path: Path) -> None:
    config = tmp_path / "interrupted.json"
    config.write_text(
        json.dumps(
            {"imports": ["$import signal", "$import monai_kdml"], "run": ["$signal.raise_signal(signal.SIGINT)"]}
        )
    )
    out = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(config)], cwd=tmp_path,
        env={**ENV, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode != 0 and "Traceback" not in out.stdout + out.stderr
    assert out.stderr.strip().splitlines()[-1] == "monai-kdml: interrupted (Ctrl-C)."


def test_resume_with_another_seed_or_data_is_refused(msi_bundle, finished: Path) -> None:
    before = (finished / "models" / "model.pt").read_bytes()
    for extra, shown in (
        (["--seed", "1"], "`seed`: trained with 0, configured 1"),
        # the same tiles under another name: a data set given now, where the run trained on its demo data
        (["--dataset_dir", str(finished / ".cache" / "msi_demo")], "`data`: trained with 'synthetic demo data'"),
    ):
        out = msi_bundle.cli(
            "--bundle_root", str(finished), "--max_epochs", "2", "--resume", "true", *TINY, *extra, check=False
        )  # fmt: skip
        last = stderr_lines(out)[-1]
        assert out.returncode != 0 and "`--resume true` would continue the run" in last and shown in last, last
        assert "Epoch: 1/" not in out.stdout  # refused in the preflight, before the data are read
    assert (finished / "models" / "model.pt").read_bytes() == before


def test_the_other_bundle_on_this_folder_is_named(polyp_bundle, finished: Path) -> None:
    out = polyp_bundle.cli("--bundle_root", str(finished), check=False)  # the README's polyp command after MSI's
    last = stderr_lines(out)[-1]
    assert out.returncode != 0 and "already holds a run" in last and "of the msi bundle" in last
    assert "--resume" not in last
    out = polyp_bundle.cli("--bundle_root", str(finished), config="inference.json", check=False)
    assert "records a model of the msi bundle, not of the polyp bundle" in stderr_lines(out)[-1]


def test_weights_of_another_run_are_named(msi_bundle, finished: Path, tmp_path: Path) -> None:
    models = tmp_path / "models"
    shutil.copytree(finished / "models", models)
    shutil.copy(models / "checkpoint_final.pt", models / "model.pt")  # a checkpoint in place of the model
    export = [
        "--bundle_root",
        str(tmp_path),
        "--filepath",
        str(tmp_path / "e.ts"),
        "--ckpt_file",
        str(models / "model.pt"),
    ]
    out = msi_bundle.cli(*export, command="ckpt_export network_def", config="inference.json", check=False)
    last = stderr_lines(out)[-1]
    assert f"{models / 'model.pt'} is not the deployed ensemble's weights but a training checkpoint" in last, last
    record = models / "network.json"
    record.write_text(record.read_text().replace('"num_students": 2', '"num_students": 3'))
    out = msi_bundle.cli("--bundle_root", str(tmp_path), *TINY, config=["train.json", "evaluate.json"], check=False)
    last = stderr_lines(out)[-1]
    assert f"{models / 'best_networks.pt'} holds 2 students but {record} records 3" in last, last


def test_a_quoted_tilde_bundle_root_is_expanded(msi_bundle, tmp_path: Path) -> None:
    out = msi_bundle.cli("--bundle_root", "~/run", "--max_epochs", "1", *TINY, env={"HOME": str(tmp_path)})
    assert (tmp_path / "run" / "models" / "model.pt").is_file()
    assert not (REPO / "~").exists() and f"{tmp_path}/run/models/model.pt" in out.stdout


def test_without_a_test_split_the_summary_suggests_test_dir(msi_bundle, real_tiles: Path, tmp_path: Path) -> None:
    out = msi_bundle.cli(
        "--bundle_root", str(tmp_path), "--dataset_dir", str(real_tiles), "--max_epochs", "1", "--image_size", "32",
        "--batch_size", "16",
    )  # fmt: skip
    line = next(line for line in out.stdout.splitlines() if "evaluate on the test split" in line)
    assert line.rstrip().endswith("--test_dir <folder of test tiles>"), line


def test_overwrite_also_deletes_the_replaced_runs_evaluation(msi_bundle, finished: Path, tmp_path: Path) -> None:
    shutil.copytree(finished, tmp_path, dirs_exist_ok=True)
    args = ["--bundle_root", str(tmp_path), *TINY]
    msi_bundle.cli(*args, config=["train.json", "evaluate.json"])
    report = tmp_path / "eval" / "test" / "summary.md"
    assert report.is_file()
    (tmp_path / "eval" / "notes.txt").write_text("the user's")
    msi_bundle.cli(*args, "--max_epochs", "1", "--overwrite", "true")
    assert not report.exists() and (tmp_path / "eval" / "notes.txt").read_text() == "the user's"
