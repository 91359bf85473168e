"""The MSI bundle through MONAI's own entry points, on tiny overrides: train, resume, evaluate, infer, export, DDP."""

from __future__ import annotations

import csv
import inspect
import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigWorkflow, verify_metadata, verify_net_in_out
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from monai_kdml.apps.msi import prepare_msi_datalists
from monai_kdml.data.evaluation import external_report_name
from monai_kdml.networks import StudentEnsemble, build_network, combine_student_logits, get_preset

TINY = ["--demo_patients", "8", "--demo_tiles_per_patient", "4", "--image_size", "32", "--batch_size", "8"]
STUDENTS = 3  # the trained run's K, not the default: evaluation, inference and export must read it from the record
REPO = Path(__file__).resolve().parents[3]


def demo_ensemble(num_students: int = STUDENTS) -> StudentEnsemble:
    return StudentEnsemble([build_network("resnet10_slim") for _ in range(num_students)])


@pytest.fixture(scope="module")
def trained(msi_bundle, module_tmp: Callable[[str], Path]) -> Path:
    """One tiny 2-epoch demo run (3 students, 32 px) shared by the tests that need trained weights; its log is
    ``train.log`` beside the run."""
    root = module_tmp("msi")
    out = msi_bundle.cli("--bundle_root", str(root), "--max_epochs", "2", "--num_students", str(STUDENTS), *TINY)
    (root.parent / f"{root.name}.log").write_text(out.stdout + out.stderr)
    return root


def train_log(trained: Path) -> str:
    return (trained.parent / f"{trained.name}.log").read_text()


def suggested(log: str, label: str) -> list[str]:
    """The command the end-of-run summary suggests under ``label``, as arguments (this interpreter for python)."""
    line = next(line for line in log.splitlines() if line.strip().startswith(label))
    args = shlex.split(line.strip()[len(label) :])
    assert args[0] == "python"
    return [sys.executable, *args[1:]]


def run_suggested(args: list[str]) -> str:
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    out = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout + out.stderr


def test_train_writes_checkpoints_events_and_metrics(trained: Path) -> None:
    for name in ("model.pt", "best_networks.pt", "checkpoint_final.pt", "checkpoint_epoch=2.pt"):
        assert (trained / "models" / name).is_file(), name
    assert list((trained / "eval").glob("events.out.tfevents.*"))
    with (trained / "eval" / "metrics_history.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    for net in ("teacher", "student_0", "student_1", "student_2", "ensemble"):
        for metric in ("auc", "acc", "bacc", "f1", "patient_auc"):
            assert 0.0 <= float(rows[-1][f"{net}_{metric}"]) <= 1.0
    assert "disagreement" in rows[-1]
    # model.pt is the deployable ensemble: it loads into a fresh StudentEnsemble of the demo preset
    demo_ensemble().load_state_dict(torch.load(trained / "models" / "model.pt", weights_only=True))
    (events,) = (trained / "eval").glob("events.out.tfevents.*")  # one writer: training and validation curves
    acc = EventAccumulator(str(events), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/kd/student_2", "train/ce/teacher", "val/patient_auc/ensemble", "lr/student_0"} <= tags
    assert "custom_scalars__config__" in acc.Tags()["tensors"]
    record = json.loads((trained / "models" / "network.json").read_text())
    assert record == {
        "bundle": "msi", "preset": "demo", "teacher_network": "resnet18", "student_network": "resnet10_slim",
        "num_students": STUDENTS, "num_classes": 2, "combine": "mean", "image_size": 32, "teacher_members": 0,
        "class_names": [["MSS", "nonMSIH"], ["MSI", "MSIMUT", "MSIH"]], "positive_class": "MSI",
        "tile_mpp": pytest.approx(8.0),  # the demo's 224 px tiles at 256/224 um/px, resized to 32 px
        "mode": "kdml", "cohorts": None, "seed": 0, "data": "synthetic demo data",  # what a resume must match
    }  # fmt: skip


def test_the_log_is_short_and_ends_with_where_everything_is(trained: Path) -> None:
    log = train_log(trained)
    assert "Engine run starting with max_epochs=2." in log and "resuming from iteration 0" not in log
    assert re.search(r"Caching \d+ training tiles in memory", log)  # said before the silent part of the start
    table = log[log.index("Epoch 2/2 in ") :].splitlines()
    assert table[1].split()[:5] == ["network", "loss", "ce", "kd", "ml"] and "patient_auc" in table[1]
    assert [row.split()[0] for row in table[2:7]] == ["teacher", "student_0", "student_1", "student_2", "ensemble"]
    # no 1,259-character metric lines (the log records; the suggested commands hold this test's absolute paths)
    assert max(len(line) for line in log.splitlines() if " - INFO - " in line) < 300
    summary = log[log.index("Training finished in") :]
    assert f"{trained}/models/model.pt" in summary and f"tensorboard --logdir {trained}/eval" in summary
    assert "--resume" not in summary.split("Next:")[1]


def test_demo_data_is_announced_and_cached(msi_bundle, trained: Path, tmp_path: Path) -> None:
    demo = trained / ".cache" / "msi_demo"
    assert (demo / "CRC_DX_TRAIN" / "MSIMUT").is_dir() and (demo / "CRC_DX_TEST" / "MSS").is_dir()
    out = msi_bundle.cli(
        "--bundle_root", str(tmp_path), "--cache_dir", str(trained / ".cache"), "--max_epochs", "1", *TINY
    )  # fmt: skip
    log = out.stdout + out.stderr
    assert "SYNTHETIC DEMO DATA" in log
    assert "Generating synthetic MSI demo tiles" not in log  # reused from the cache


def test_resume_continues_from_last_checkpoint(msi_bundle, tmp_path: Path) -> None:
    msi_bundle.cli("--bundle_root", str(tmp_path), "--max_epochs", "1", *TINY)
    out = msi_bundle.cli("--bundle_root", str(tmp_path), "--max_epochs", "2", "--resume", "true", *TINY)
    log = out.stdout + out.stderr
    assert "Resuming from" in log
    assert "Epoch: 1/2" not in log and "Epoch: 2/2" in log  # epoch 1 is not trained again
    state = torch.load(tmp_path / "models" / "checkpoint_final.pt", weights_only=True)
    assert state["trainer"]["iteration"] == 2 * state["trainer"]["epoch_length"]


def test_evaluate_writes_report(trained: Path) -> None:
    # the evaluation command the training run suggested, as printed: same bundle_root and data overrides
    log = run_suggested(suggested(train_log(trained), "evaluate on the test split"))
    assert "| ensemble |" in log and "Evaluation finished in" in log  # the summary table, as polyp prints it
    report = trained / "eval" / "test"
    for name in ("summary.md", "roc_tiles.png", "roc_patients.png", "tile_scores.csv", "patient_scores.csv"):
        assert (report / name).is_file(), name
    summary = (report / "summary.md").read_text()
    assert "| ensemble |" in summary and "teacher / ensemble" in summary and "DEMO" in summary
    with (report / "tile_scores.csv").open() as f:
        rows = list(csv.DictReader(f))
    test_tiles = list((trained / ".cache" / "msi_demo" / "CRC_DX_TEST").rglob("*.png"))
    assert len(rows) == len(test_tiles) > 0


def test_inference_writes_tile_and_patient_csv(msi_bundle, trained: Path, tmp_path: Path) -> None:
    out_dir = tmp_path / "inference"
    out = msi_bundle.cli("--bundle_root", str(trained), "--output_dir", str(out_dir), config="inference.json")
    assert re.search(rf"probability of every tile +{out_dir}/tiles.csv", out.stdout + out.stderr)
    with (out_dir / "tiles.csv").open() as f:
        tiles = list(csv.DictReader(f))
    with (out_dir / "patients.csv").open() as f:
        patients = list(csv.DictReader(f))
    assert tiles and all(0 <= float(t["probability"]) <= 1 and 0 <= float(t["disagreement"]) <= 0.5 for t in tiles)
    assert {p["patient_id"] for p in patients} == {t["patient_id"] for t in tiles}
    assert all(t["patient_id"].startswith("TCGA-") for t in tiles)


def test_export_torchscript_matches(trained: Path) -> None:
    run_suggested(suggested(train_log(trained), "export to TorchScript"))  # as the training run printed it
    ts = trained / "models" / "ensemble.ts"  # beside model.pt, where git ignores it
    scripted = torch.jit.load(str(ts))
    ensemble = demo_ensemble().eval()
    ensemble.load_state_dict(torch.load(trained / "models" / "model.pt", weights_only=True))
    x = torch.rand(2, 3, 32, 32)
    assert torch.allclose(scripted(x), ensemble(x), atol=1e-5)


@pytest.mark.parametrize(("config", "kind"), [("train.json", "train"), ("inference.json", "inference")])
def test_check_properties(msi_bundle, real_tiles: Path, config: str, kind: str, tmp_path: Path) -> None:
    data = {"dataset_dir": str(real_tiles)} if kind == "inference" else {}  # nothing written into the repository
    if kind == "train":  # the default two-stage teacher runs only from a command line (refused here: polyp's tests)
        data["teacher_stage"] = False
    workflow = ConfigWorkflow(
        config_file=str(msi_bundle.dir / config), workflow_type=kind, logging_file=False, bundle_root=str(tmp_path),
        **data,
    )  # fmt: skip
    workflow.initialize()
    assert workflow.check_properties() == []


def test_metadata_and_network_io(msi_bundle) -> None:
    verify_metadata(
        meta_file=str(msi_bundle.dir / "metadata.json"),
        filepath=str(msi_bundle.dir.parent / "schema/meta_schema_20240725.json"),
    )
    verify_net_in_out(
        net_id="network_def",
        meta_file=str(msi_bundle.dir / "metadata.json"),
        config_file=str(msi_bundle.dir / "inference.json"),
    )


def test_two_process_gloo_run(msi_bundle, tmp_path: Path) -> None:
    out = msi_bundle.cli(
        "--bundle_root", str(tmp_path), "--max_epochs", "2", *TINY, "--batch_size", "4",
        config=["train.json", "multi_gpu_train.json"], torchrun=2,
    )  # fmt: skip
    log = out.stdout + out.stderr
    assert log.count("Epoch: 2/2, Iter: 1/") == 1  # only rank 0 logs
    assert len(list((tmp_path / "eval").glob("events.out.tfevents.*"))) == 1  # one curve writer, rank 0 only
    assert log.count("Training finished in") == 1
    # the saved ensemble is unwrapped from DDP: plain keys, loads into the bundle's network_def
    state = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    assert not any(".module." in k for k in state)
    demo_ensemble(2).load_state_dict(state)


def test_weighted_sampling_is_kept_under_ddp(msi_bundle, tmp_path: Path) -> None:
    probe = tmp_path / "probe.json"  # one more layer: report the sampler each rank trains with, then train
    probe.write_text(json.dumps({"run": ["$print('SAMPLER', type(@train#sampler).__name__)", "$@train#trainer.run()"]}))
    out = msi_bundle.cli(
        "--bundle_root", str(tmp_path / "run"), "--max_epochs", "1", *TINY, "--batch_size", "4",
        "--balance", "weighted", config=["train.json", "multi_gpu_train.json", str(probe)], torchrun=2,
    )  # fmt: skip
    assert out.stdout.count("SAMPLER DistributedWeightedRandomSampler") == 2  # both ranks, not dropped


class TestBadInput:
    def test_missing_dataset_dir(self, msi_bundle, tmp_path: Path) -> None:
        out = msi_bundle.cli("--bundle_root", str(tmp_path), "--dataset_dir", str(tmp_path / "nope"), check=False)
        assert out.returncode != 0 and f"{tmp_path / 'nope'} does not exist" in out.stdout + out.stderr
        assert not (tmp_path / "models").exists()  # failed before any training

    def test_missing_class_folder(self, msi_bundle, tmp_path: Path) -> None:
        (tmp_path / "data" / "MSIMUT").mkdir(parents=True)
        (tmp_path / "data" / "MSIMUT" / "blk-AAAAAAAAAAAA-TCGA-AA-0001-01Z-00-DX1.png").write_bytes(b"x")
        out = msi_bundle.cli("--bundle_root", str(tmp_path), "--dataset_dir", str(tmp_path / "data"), check=False)
        assert out.returncode != 0 and "missing the MSS class folder" in out.stdout + out.stderr

    @pytest.mark.parametrize(
        ("args", "message"),
        [
            (["--mode", "kdl"], "`mode`"),
            (["--max_epoch", "1"], "`--max_epoch` is not a key"),
            (["--mdoe", "kd"], "Did you mean --mode"),
            (["--image_size", "0"], "`image_size` must be an integer >= 32"),
            (["--image_size", "7"], "`image_size` must be an integer >= 32"),
            (["--kd_weight", "-5"], "`kd_weight` must be a finite number >= 0"),
            (["--dataset_dir", ""], "`dataset_dir` is ''"),
            (["--key_metric", "bogus_auc"], "Valid: ["),
            (["--num_students", "1"], "`num_students` must be >= 2"),
            (["--amp_dtype", "float8"], "`amp_dtype` must be one of ['auto', 'bfloat16', 'float16']"),
            (["--channels_last", "yes"], "`channels_last` must be true or false"),
            (["--persistent_workers", "true"], "`persistent_workers` keeps DataLoader worker processes"),
        ],
    )
    def test_bad_override_is_refused_before_training(self, msi_bundle, tmp_path: Path, args, message) -> None:
        out = msi_bundle.cli("--bundle_root", str(tmp_path), *TINY, *args, check=False)
        log = out.stdout + out.stderr
        assert out.returncode != 0 and message in log, log[-2000:]
        assert "Epoch: 1/" not in log  # nothing trained

    @pytest.mark.parametrize(
        ("args", "message"),
        [
            (["--ramp_shape", "cubic"], "`ramp_shape` must be one of ('linear', 'cosine', 'sigmoid'), got 'cubic'"),
            (["--combine", "maxx"], "`combine`: By 'maxx', did you mean 'mean'?"),
            (["--teacher_mode", "frozn"], "`teacher_mode`: By 'frozn', did you mean 'frozen'?"),
            (["--teacher_mode", "online"], "`--teacher_mode online` asks for a teacher trained in the same iterations"),
            (["--temperature", "-1"], "`temperature` must be > 0, got -1"),
            (["--kd_gate", "maybe"], "`kd_gate` must be one of ('none', 'correct', 'probability'), got 'maybe'"),
            (["--teacher_learning_rate", "0"], "`teacher_learning_rate` must be a finite number > 0, got 0"),
            (["--max_epochs", "0"], "`max_epochs` must be an integer >= 1, got 0"),
        ],
    )
    def test_a_bad_value_is_refused_before_the_teacher_stage(self, msi_bundle, tmp_path: Path, args, message) -> None:
        """Values read only by stage 2 (or by handlers a default leaves off) are checked before stage 1's hours."""
        out = msi_bundle.cli("--bundle_root", str(tmp_path / "run"), *TINY, *args, check=False, bundle_defaults=True)
        log = out.stdout + out.stderr
        assert out.returncode != 0 and f"monai-kdml: ValueError: {message}" in log, log[-2000:]
        assert "Teacher stage 1" not in log and not (tmp_path / "run").exists()  # nothing started, nothing written

    def test_a_missing_dataset_dir_is_refused_before_the_teacher_stage(self, msi_bundle, tmp_path: Path) -> None:
        missing = tmp_path / "kather"
        out = msi_bundle.cli("--bundle_root", str(tmp_path / "run"), "--dataset_dir", str(missing), check=False,
                             bundle_defaults=True)  # fmt: skip
        log = out.stdout + out.stderr
        assert out.returncode != 0 and f"monai-kdml: FileNotFoundError: dataset_dir {missing} does not exist." in log
        assert "Teacher stage 1" not in log and not (tmp_path / "run").exists()

    def test_a_data_layout_problem_fails_stage_1_and_names_its_logs(self, msi_bundle, tmp_path: Path) -> None:
        """What the folder holds is the loaders' check, which stage 1 runs first: the parent names its log folder."""
        (tmp_path / "data" / "MSIMUT").mkdir(parents=True)
        (tmp_path / "data" / "MSIMUT" / "blk-AAAAAAAAAAAA-TCGA-AA-0001-01Z-00-DX1.png").write_bytes(b"x")
        root = tmp_path / "run"
        out = msi_bundle.cli("--bundle_root", str(root), "--dataset_dir", str(tmp_path / "data"), check=False,
                             bundle_defaults=True)  # fmt: skip
        log = out.stdout + out.stderr
        assert out.returncode != 0 and "missing the MSS class folder" in log, log[-2000:]
        logs = root / "teacher_stage" / "eval" / "logs"
        assert out.stderr.splitlines()[-1].startswith("monai-kdml: RuntimeError: Teacher stage 1 failed (exit 1)")
        assert f"its logs are in {logs}." in out.stderr and list(logs.glob("error-*.log"))
        assert "Epoch: 1/" not in log

    def test_a_gate_metric_typo_is_refused_before_any_epoch(self, msi_bundle, tmp_path: Path) -> None:
        """Checked after the data (the metric names need the networks' names): by stage 1 itself under the stage."""
        args = ["--teacher_gate", "true", "--teacher_gate_metric", "AUC"]
        out = msi_bundle.cli("--bundle_root", str(tmp_path / "run"), *TINY, *args, check=False, bundle_defaults=True)
        log = out.stdout + out.stderr
        assert out.returncode != 0 and "`teacher_gate_metric` is 'AUC': the validation computes no" in log, log[-2000:]
        assert "Epoch: 1/" not in log

    def test_a_bad_value_is_refused_before_the_teacher_stage_under_torchrun(self, msi_bundle, tmp_path: Path) -> None:
        out = msi_bundle.cli(
            "--bundle_root", str(tmp_path / "run"), *TINY, "--ramp_shape", "cubic",
            config=["train.json", "multi_gpu_train.json"], torchrun=2, check=False, bundle_defaults=True,
        )  # fmt: skip
        log = out.stdout + out.stderr
        assert out.returncode != 0 and "`ramp_shape` must be one of" in log, log[-2000:]
        assert "Teacher stage" not in log and not (tmp_path / "run").exists()

    def test_a_finished_run_is_not_overwritten(self, msi_bundle, trained: Path) -> None:
        before = (trained / "models" / "model.pt").read_bytes()
        same = ["--bundle_root", str(trained), "--max_epochs", "1", "--num_students", str(STUDENTS), *TINY]
        out = msi_bundle.cli(*same, check=False)
        assert out.returncode != 0 and "Continue it with `--resume true`" in out.stderr.splitlines()[-1]
        # other settings: --resume true would be refused, so it is not suggested (issue 15 case 24)
        out = msi_bundle.cli("--bundle_root", str(trained), "--max_epochs", "1", *TINY, check=False)
        last = out.stderr.splitlines()[-1]
        assert out.returncode != 0 and "`num_students`: trained with 3, configured 2" in last and "--resume" not in last
        assert (trained / "models" / "model.pt").read_bytes() == before

    @pytest.mark.parametrize("spelling", ["false", "False"])
    def test_a_switch_set_false_on_the_command_line_is_off(self, msi_bundle, trained: Path, spelling: str) -> None:
        # python-fire hands `--resume false` on as the string 'false', which would count as set
        before = (trained / "models" / "model.pt").read_bytes()
        out = msi_bundle.cli(
            "--bundle_root", str(trained), "--max_epochs", "1", *TINY, "--resume", spelling, check=False
        )  # fmt: skip
        assert out.returncode != 0 and "already holds a run" in out.stdout + out.stderr
        assert (trained / "models" / "model.pt").read_bytes() == before

    def test_overrides_that_contradict_the_record_are_refused(self, msi_bundle, trained: Path) -> None:
        out = msi_bundle.cli("--bundle_root", str(trained), "--image_size", "64", config="inference.json", check=False)
        log = out.stdout + out.stderr
        assert out.returncode != 0 and "`image_size`: trained with 32, configured 64" in log
        out = msi_bundle.cli(
            "--bundle_root", str(trained), *TINY, "--num_students", "2", config=["train.json", "evaluate.json"],
            check=False,
        )  # fmt: skip
        assert out.returncode != 0 and "`num_students`: trained with 3, configured 2" in out.stdout + out.stderr

    def test_evaluation_without_a_test_split_is_refused_unless_allowed(
        self, msi_bundle, trained: Path, real_tiles: Path, tmp_path: Path
    ) -> None:
        args = ["--bundle_root", str(trained), "--dataset_dir", str(real_tiles), "--image_size", "32"]
        out = msi_bundle.cli(*args, config=["train.json", "evaluate.json"], check=False)
        assert out.returncode != 0 and "--allow_validation_as_test true" in out.stdout + out.stderr
        msi_bundle.cli(*args, "--allow_validation_as_test", "true", config=["train.json", "evaluate.json"])
        assert "OPTIMISTIC" in (trained / "eval" / "validation" / "summary.md").read_text()


def test_external_cohort_is_scored_whole(msi_bundle, trained: Path, real_tiles: Path) -> None:
    msi_bundle.cli(
        "--bundle_root", str(trained), *TINY, "--test_dir", str(real_tiles), config=["train.json", "evaluate.json"]
    )
    report = trained / "eval" / external_report_name(real_tiles)
    summary = (report / "summary.md").read_text()
    assert "EXTERNAL cohort" in summary and "72 tiles of 72 read, 0 skipped" in summary
    with (report / "tile_scores.csv").open() as f:
        assert len(list(csv.DictReader(f))) == 72  # every tile, nothing re-split


def test_an_ensemble_of_saved_teachers_is_distilled(msi_bundle, tmp_path: Path) -> None:
    files = []
    for m in range(3):  # three "folds" saved as plain state dicts, as a model zoo hands them out
        torch.manual_seed(m)
        files.append(tmp_path / f"fold{m}.pt")
        torch.save(build_network("resnet18").state_dict(), files[-1])
    msi_bundle.cli(
        "--bundle_root", str(tmp_path / "run"), "--max_epochs", "1", *TINY, "--teacher_mode", "frozen", "--mode", "kd",
        "--teacher_weights", repr([str(f) for f in files]),
    )  # fmt: skip
    with (tmp_path / "run" / "eval" / "metrics_history.csv").open() as f:
        row = next(csv.DictReader(f))
    assert all(0 <= float(row[f"teacher_{m}_auc"]) <= 1 for m in range(3)) and "teacher_auc" in row
    assert json.loads((tmp_path / "run" / "models" / "network.json").read_text())["teacher_members"] == 3
    best = torch.load(tmp_path / "run" / "models" / "best_networks.pt", weights_only=True)["teacher"]
    saved = torch.load(files[1], weights_only=True)
    assert all(torch.equal(best[f"members.1.{k}"], v) for k, v in saved.items())  # frozen: never updated


def test_students_start_from_torchvision_weights_and_bad_files_are_named(msi_bundle, tmp_path: Path) -> None:
    torchvision = pytest.importorskip("torchvision")
    teacher_file = tmp_path / "resnet18_imagenet_layout.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), teacher_file)  # random, nothing downloads
    run = tmp_path / "run"
    msi_bundle.cli(
        "--bundle_root", str(run), "--max_epochs", "1", *TINY, "--teacher_weights", str(teacher_file),
        "--teacher_weights_source", "torchvision",
    )  # fmt: skip
    assert (run / "models" / "model.pt").is_file()
    out = msi_bundle.cli(
        "--bundle_root", str(tmp_path / "bad"), *TINY, "--student_weights", str(teacher_file), check=False
    )  # a ResNet18 file for ResNet10-slim students
    assert out.returncode != 0 and "student_weights" in out.stdout + out.stderr


def test_fast_path_options_are_accepted_and_reach_the_engines(msi_bundle, tmp_path: Path) -> None:
    """``--channels_last true --amp_dtype bfloat16`` trains on a CPU (amp stays off there; the networks and batches
    are channels_last); ``compile`` reaches both engines (checked unbuilt: compiling is a GPU-sized cost)."""
    out = msi_bundle.cli(
        "--bundle_root", str(tmp_path / "run"), "--max_epochs", "1", *TINY,
        "--channels_last", "true", "--amp", "true", "--amp_dtype", "bfloat16",
    )  # fmt: skip
    assert (tmp_path / "run" / "models" / "model.pt").is_file(), out.stderr[-2000:]
    overrides = {"demo_patients": 8, "demo_tiles_per_patient": 4, "image_size": 32, "batch_size": 8}
    workflow = msi_bundle.workflow(
        bundle_root=str(tmp_path / "built"), run=False, compile=True, channels_last=True, **overrides
    )
    trainer = workflow.parser.get_parsed_content("train#trainer")
    evaluator = workflow.parser.get_parsed_content("validate#evaluator")
    assert trainer.compile and evaluator.compile and trainer.channels_last and evaluator.channels_last
    assert all(hasattr(n, "_orig_mod") for n in (trainer.teacher, *trainer.students, *evaluator.students))
    conv = next(m for m in workflow.parser.get_parsed_content("teacher").modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) and conv.in_channels > 1
    loader = workflow.parser.get_parsed_content("train#dataloader")
    assert not loader.pin_memory and not loader.persistent_workers  # CPU defaults: no workers to keep, nothing to pin
    assert not trainer.non_blocking


def test_optimisers_are_components_and_the_teacher_has_its_own_settings(msi_bundle, tmp_path: Path) -> None:
    """``--student_optimizer#_target_`` swaps the students' optimiser class; ``teacher_learning_rate`` and
    ``teacher_weight_decay`` reach the teacher's optimiser only, and default to the students' values; the trainer
    and the evaluator fuse the students' predictions with the same ``combine`` rule."""
    tiny = {"demo_patients": 8, "demo_tiles_per_patient": 4, "image_size": 32, "batch_size": 8}
    workflow = msi_bundle.workflow(bundle_root=str(tmp_path / "default"), run=False, **tiny)
    trainer = workflow.parser.get_parsed_content("train#trainer")
    groups = [o.param_groups[0] for o in (trainer.teacher_optimizer, *trainer.student_optimizers)]
    assert isinstance(trainer.teacher_optimizer, torch.optim.AdamW)
    assert {(g["lr"], g["weight_decay"]) for g in groups} == {(0.002, 0.0001)}
    workflow = msi_bundle.workflow(
        bundle_root=str(tmp_path / "own"), run=False, teacher_learning_rate=0.01, teacher_weight_decay=0.0,
        combine="vote", **{"student_optimizer#_target_": "torch.optim.SGD"}, **tiny,
    )  # fmt: skip
    trainer = workflow.parser.get_parsed_content("train#trainer")
    evaluator = workflow.parser.get_parsed_content("validate#evaluator")
    teacher_group = trainer.teacher_optimizer.param_groups[0]
    assert isinstance(trainer.teacher_optimizer, torch.optim.AdamW)
    assert (teacher_group["lr"], teacher_group["weight_decay"]) == (0.01, 0.0)
    assert all(isinstance(o, torch.optim.SGD) and o.param_groups[0]["lr"] == 0.002 for o in trainer.student_optimizers)
    logits = [torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([[1.0, 0.0], [3.0, 0.0]])]
    assert torch.equal(trainer.combine(logits), evaluator.combines[0](logits))
    assert not torch.equal(trainer.combine(logits), combine_student_logits(logits, "mean"))


def test_factory_defaults_equal_the_bundle_demo_settings(msi_bundle) -> None:
    config = json.loads((msi_bundle.dir / "train.json").read_text())
    defaults = inspect.signature(prepare_msi_datalists).parameters
    for key in (
        "demo_patients",
        "demo_tiles_per_patient",
        "val_fraction",
        "seed",
        "balance",
        "decode",
        "max_image_pixels",
    ):
        assert defaults[key].default == config[key], key
    inference = json.loads((msi_bundle.dir / "inference.json").read_text())["untrained_network"]
    demo = config["profiles"]["demo"]
    assert inference["preset"] == demo["preset"] and inference["image_size"] == demo["image_size"]
    assert inference["student_network"] == get_preset(demo["preset"]).student


def test_real_tiles_smoke(msi_bundle, real_tiles: Path, tmp_path: Path) -> None:
    """The bundle on the 72 real H&E tiles in Kather layout (single class-folder root, real patient split)."""
    out = msi_bundle.cli(
        "--bundle_root", str(tmp_path), "--dataset_dir", str(real_tiles), "--preset", "demo", "--max_epochs", "1",
        "--image_size", "32", "--batch_size", "16",
    )  # fmt: skip
    log = out.stdout + out.stderr
    assert "SYNTHETIC" not in log and "kept 72 of 72 tiles" in log
    assert (tmp_path / "models" / "model.pt").is_file()
