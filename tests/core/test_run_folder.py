"""Run folders (issue 15 cases 2, 5, 11, 15, 18, 24): a run deletes only its own files, holds its folder for its
whole life, refuses a resume that contradicts its record, and names the files of another run or bundle."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from monai_kdml.record import check_weights_file, read_record, run_record, write_record
from monai_kdml.runfolder import LOCK_NAME, MANIFEST_NAME, RunFolder, RunFolderBusyError, RunFolderError

REPO = Path(__file__).resolve().parents[2]
RECORD = {"bundle": "msi", "preset": "demo", "num_students": 2}


def fake_run(folder: Path, record: dict | None = None) -> None:
    """What a finished training run leaves (names as the bundles write them)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("model.pt", "best_networks.pt", "checkpoint_final.pt", "metrics_history.csv", "metrics.csv"):
        (folder / name).write_text("run")
    (folder / "events.out.tfevents.1.host.1.0").write_text("run")
    (folder / "network.json").write_text(json.dumps(record or RECORD))


def test_overwrite_deletes_only_the_runs_own_files(tmp_path: Path) -> None:
    shared = tmp_path / "results"  # --output_dir and --ckpt_dir at a folder that holds other things
    fake_run(shared)
    (shared / "other_project_results.csv").write_text("precious")
    (shared / "notes").mkdir()
    (shared / "notes" / "paper.tex").write_text("precious")
    RunFolder(shared, shared, overwrite=True, record=RECORD).open().close()
    left = sorted(str(p.relative_to(shared)) for p in shared.rglob("*") if not p.name.startswith(LOCK_NAME))
    assert left == ["notes", "notes/paper.tex", "other_project_results.csv"]


def test_overwrite_deletes_what_the_manifest_lists_and_the_folders_the_run_made(tmp_path: Path) -> None:
    ckpt, out = tmp_path / "models", tmp_path / "eval"
    run = RunFolder(ckpt, out, record=RECORD).open()
    fake_run(ckpt)
    (ckpt / "cohorts" / "kd").mkdir(parents=True)
    (ckpt / "cohorts" / "kd" / "model.pt").write_text("run")
    (out / "curves.png").write_text("run")
    run.close()
    listed = json.loads((ckpt / MANIFEST_NAME).read_text())["created"]
    assert str((out / "curves.png").resolve()) in listed
    (out / "mine.txt").write_text("user's")  # written after the run: not its file
    RunFolder(ckpt, out, overwrite=True, record=RECORD).open().close()
    assert not (ckpt / "cohorts").exists() and not (out / "curves.png").exists()
    assert (out / "mine.txt").read_text() == "user's"


def test_a_manifest_never_reaches_outside_the_run_folders(tmp_path: Path) -> None:
    ckpt = tmp_path / "models"
    fake_run(ckpt)
    precious = tmp_path / "precious.txt"
    precious.write_text("keep")
    (ckpt / MANIFEST_NAME).write_text(json.dumps({"created": [str(precious), "/etc/hostname"]}))
    RunFolder(ckpt, tmp_path / "eval", overwrite=True).open().close()
    assert precious.read_text() == "keep" and not (ckpt / "model.pt").exists()


def test_an_earlier_run_is_refused_with_what_works(tmp_path: Path) -> None:
    fake_run(tmp_path / "models")
    with pytest.raises(RunFolderError, match="Continue it with `--resume true`"):
        RunFolder(tmp_path / "models", tmp_path / "eval", record=RECORD).open()
    # a run of the other bundle (the README's polyp command after the MSI one): no --resume suggestion
    with pytest.raises(RunFolderError, match="of the msi bundle") as info:
        RunFolder(tmp_path / "models", tmp_path / "eval", record={"bundle": "polyp"}).open()
    assert "--resume" not in str(info.value)
    with pytest.raises(RunFolderError, match=r"other settings \(`num_students`: trained with 2, configured 3\)"):
        RunFolder(tmp_path / "models", tmp_path / "eval", record={**RECORD, "num_students": 3}).open()
    assert (tmp_path / "models" / "model.pt").read_text() == "run"


def test_a_quoted_tilde_is_refused(tmp_path: Path) -> None:
    with pytest.raises(RunFolderError, match="did not expand '~'"):
        RunFolder("~/run/models", tmp_path).open()


HOLDER = """
import sys, time
from monai_kdml.runfolder import RunFolder
RunFolder(sys.argv[1], sys.argv[2]).open()
print("locked", flush=True)
time.sleep(60)
"""


def _holder(tmp_path: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    args = [sys.executable, "-c", HOLDER, str(tmp_path / "models"), str(tmp_path / "eval")]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_run_is_refused_naming_the_first_and_a_dead_holder_frees_the_folder(tmp_path: Path) -> None:
    first = _holder(tmp_path)
    try:
        with pytest.raises(RunFolderBusyError) as info:
            RunFolder(tmp_path / "models", tmp_path / "eval").open()
        message = str(info.value)
        assert f"process {first.pid} on {socket.gethostname()}, started " in message and "time.sleep" in message
    finally:
        first.send_signal(signal.SIGKILL)  # no clean-up: the lock is left as a killed run leaves it
        first.wait()
    assert (tmp_path / "models" / f"{LOCK_NAME}.json").is_file()
    run = RunFolder(tmp_path / "models", tmp_path / "eval").open()
    holder = json.loads((tmp_path / "models" / f"{LOCK_NAME}.json").read_text())
    assert holder["pid"] == os.getpid()
    run.close()
    assert not (tmp_path / "models" / f"{LOCK_NAME}.json").exists()


def test_resume_with_another_data_source_seed_or_mode_is_refused(tmp_path: Path) -> None:
    trained = run_record(RECORD, None, "kdml", seed=0, data=str(tmp_path / "kather"))
    write_record(tmp_path, trained)
    write_record(tmp_path, trained, resume=True)  # the same settings resume
    for change, shown in (
        ({"seed": 1}, "`seed`: trained with 0, configured 1"),
        ({"mode": "kd"}, "`mode`: trained with 'kdml', configured 'kd'"),
        ({"data": "/other"}, f"`data`: trained with '{tmp_path / 'kather'}', configured '/other'"),
        ({"cohorts": ["kd", "kdml"]}, "`cohorts`: trained with None"),
    ):
        with pytest.raises(ValueError, match="would continue the run") as info:
            write_record(tmp_path, {**trained, **change}, resume=True)
        assert shown in str(info.value)
    assert read_record(tmp_path) == trained


def test_a_record_of_the_other_bundle_is_named(tmp_path: Path) -> None:
    write_record(tmp_path, RECORD)
    with pytest.raises(ValueError, match="records a model of the msi bundle, not of the polyp bundle"):
        read_record(tmp_path, bundle="polyp")
    assert read_record(tmp_path, bundle="msi") == RECORD


def test_weights_of_another_run_are_named(tmp_path: Path) -> None:
    write_record(tmp_path, RECORD)  # 2 students
    ensemble = {f"students.{i}.weight": torch.zeros(1) for i in range(3)}
    torch.save(ensemble, tmp_path / "model.pt")
    with pytest.raises(ValueError, match=r"model.pt holds 3 students but .*network.json records 2"):
        check_weights_file(tmp_path / "model.pt", tmp_path)
    torch.save({"teacher": {}, "students": [{}, {}], "optimizers": []}, tmp_path / "model.pt")
    with pytest.raises(ValueError, match=r"model.pt is not the deployed ensemble's weights but a training checkpoint"):
        check_weights_file(tmp_path / "model.pt", tmp_path)
    torch.save({"teacher": {}, "students": [{}]}, tmp_path / "best_networks.pt")
    with pytest.raises(ValueError, match=r"best_networks.pt holds 1 students but .*records 2"):
        check_weights_file(tmp_path / "best_networks.pt", tmp_path, kind="networks")
    torch.save({"teacher": {}, "students": [{}, {}]}, tmp_path / "best_networks.pt")
    check_weights_file(tmp_path / "best_networks.pt", tmp_path, kind="networks")
    (tmp_path / "model.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"model.pt: not a readable weights file"):
        check_weights_file(tmp_path / "model.pt", tmp_path)


def test_the_evaluate_command_names_test_dir_only_without_a_test_split() -> None:
    from monai_kdml.commands import evaluate_command

    assert "--test_dir" not in evaluate_command(["train.json", "evaluate.json"], has_test=True)
    without = evaluate_command(["train.json", "evaluate.json"], has_test=False, placeholder="<folder of test tiles>")
    assert without.endswith("--test_dir <folder of test tiles>")


def test_a_state_dict_that_does_not_fit_is_summarised_in_one_line() -> None:
    from monai_kdml._cli import _summary

    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    weights = {"teacher.a": torch.zeros(1), "0.weight": torch.zeros(3, 3), "0.bias": torch.zeros(2)}
    with pytest.raises(RuntimeError) as info:
        net.load_state_dict(weights)
    line = _summary(info.value)
    assert "\n" not in line and line.startswith("monai-kdml: RuntimeError: the weights file does not fit the network")
    assert (
        "2 missing keys (e.g. 1.weight), 1 unexpected keys (e.g. teacher.a), 1 of other shapes (e.g. 0.weight)" in line
    )
