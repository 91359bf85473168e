"""The MSI bundle through MONAI's own entry points, on tiny overrides: train, resume, evaluate, infer, export, DDP."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigWorkflow, verify_metadata, verify_net_in_out

from monai_kdml.networks import StudentEnsemble, build_network

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "msi"
REAL_TILES = REPO.parent / "shared" / "data" / "he-tiles-real"
TINY = ["--demo_patients", "8", "--demo_tiles_per_patient", "4", "--image_size", "32", "--batch_size", "8"]
ENV = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def bundle(
    *args: str, config: str = "train.json", torchrun: int = 0, check: bool = True
) -> subprocess.CompletedProcess:
    """``python -m monai.bundle run`` (or ``torchrun -m monai.bundle run``) from the repository root."""
    files = [str(BUNDLE / c) for c in config.split(",")]
    config_arg = files[0] if len(files) == 1 else repr(files)
    launcher = [sys.executable, "-m"]
    if torchrun:
        launcher += ["torch.distributed.run", f"--nproc_per_node={torchrun}", "--master_port=29533", "-m"]
    cmd = [*launcher, "monai.bundle", "run", "--config_file", config_arg, *args]
    result = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny 2-epoch demo run shared by the tests that need trained weights."""
    root = tmp_path_factory.mktemp("msi")
    bundle("--bundle_root", str(root), "--max_epochs", "2", *TINY)
    return root


def test_train_writes_checkpoints_events_and_metrics(trained: Path) -> None:
    for name in ("model.pt", "best_networks.pt", "checkpoint_final.pt", "checkpoint_epoch=2.pt"):
        assert (trained / "models" / name).is_file(), name
    assert list((trained / "eval").glob("events.out.tfevents.*"))
    with (trained / "eval" / "metrics_history.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    for net in ("teacher", "student_0", "student_1", "ensemble"):
        for metric in ("auc", "acc", "bacc", "f1", "patient_auc"):
            assert 0.0 <= float(rows[-1][f"{net}_{metric}"]) <= 1.0
    assert "disagreement" in rows[-1]
    # model.pt is the deployable ensemble: it loads into a fresh StudentEnsemble of the demo preset
    ensemble = StudentEnsemble([build_network("resnet10_slim") for _ in range(2)])
    ensemble.load_state_dict(torch.load(trained / "models" / "model.pt", weights_only=True))


def test_demo_data_is_announced_and_cached(trained: Path, tmp_path: Path) -> None:
    demo = trained / ".cache" / "msi_demo"
    assert (demo / "CRC_DX_TRAIN" / "MSIMUT").is_dir() and (demo / "CRC_DX_TEST" / "MSS").is_dir()
    out = bundle("--bundle_root", str(tmp_path), "--cache_dir", str(trained / ".cache"), "--max_epochs", "1", *TINY)
    log = out.stdout + out.stderr
    assert "SYNTHETIC DEMO DATA" in log
    assert "Generating synthetic MSI demo tiles" not in log  # reused from the cache


def test_resume_continues_from_last_checkpoint(tmp_path: Path) -> None:
    bundle("--bundle_root", str(tmp_path), "--max_epochs", "1", *TINY)
    out = bundle("--bundle_root", str(tmp_path), "--max_epochs", "2", "--resume", "true", *TINY)
    log = out.stdout + out.stderr
    assert "Resuming from" in log
    assert "Epoch: 1/2" not in log and "Epoch: 2/2" in log  # epoch 1 is not trained again
    state = torch.load(tmp_path / "models" / "checkpoint_final.pt", weights_only=True)
    assert state["trainer"]["iteration"] == 2 * state["trainer"]["epoch_length"]


def test_evaluate_writes_report(trained: Path) -> None:
    bundle("--bundle_root", str(trained), *TINY, config="train.json,evaluate.json")
    report = trained / "eval" / "test"
    for name in ("summary.md", "roc_tiles.png", "roc_patients.png", "tile_scores.csv", "patient_scores.csv"):
        assert (report / name).is_file(), name
    summary = (report / "summary.md").read_text()
    assert "| ensemble |" in summary and "teacher / ensemble" in summary and "DEMO" in summary
    with (report / "tile_scores.csv").open() as f:
        rows = list(csv.DictReader(f))
    test_tiles = list((trained / ".cache" / "msi_demo" / "CRC_DX_TEST").rglob("*.png"))
    assert len(rows) == len(test_tiles) > 0


def test_inference_writes_tile_and_patient_csv(trained: Path, tmp_path: Path) -> None:
    out_dir = tmp_path / "inference"
    bundle("--bundle_root", str(trained), "--image_size", "32", "--output_dir", str(out_dir), config="inference.json")
    with (out_dir / "tiles.csv").open() as f:
        tiles = list(csv.DictReader(f))
    with (out_dir / "patients.csv").open() as f:
        patients = list(csv.DictReader(f))
    assert tiles and all(0 <= float(t["probability"]) <= 1 and 0 <= float(t["disagreement"]) <= 0.5 for t in tiles)
    assert {p["patient_id"] for p in patients} == {t["patient_id"] for t in tiles}
    assert all(t["patient_id"].startswith("TCGA-") for t in tiles)


def test_export_torchscript_matches(trained: Path, tmp_path: Path) -> None:
    ts = tmp_path / "ensemble.ts"
    cmd = [sys.executable, "-m", "monai.bundle", "ckpt_export", "network_def", "--filepath", str(ts), "--ckpt_file",
           str(trained / "models" / "model.pt"), "--meta_file", str(BUNDLE / "metadata.json"), "--config_file",
           str(BUNDLE / "inference.json")]  # fmt: skip
    subprocess.run(cmd, cwd=REPO, env=ENV, check=True, capture_output=True, timeout=300)
    scripted = torch.jit.load(str(ts))
    ensemble = StudentEnsemble([build_network("resnet10_slim") for _ in range(2)]).eval()
    ensemble.load_state_dict(torch.load(trained / "models" / "model.pt", weights_only=True))
    x = torch.rand(2, 3, 32, 32)
    assert torch.allclose(scripted(x), ensemble(x), atol=1e-5)


@pytest.mark.parametrize(("config", "kind"), [("train.json", "train"), ("inference.json", "inference")])
def test_check_properties(config: str, kind: str) -> None:
    workflow = ConfigWorkflow(config_file=str(BUNDLE / config), workflow_type=kind, logging_file=False)
    workflow.initialize()
    assert workflow.check_properties() == []


def test_metadata_and_network_io() -> None:
    verify_metadata(
        meta_file=str(BUNDLE / "metadata.json"), filepath=str(REPO / "bundles/schema/meta_schema_20240725.json")
    )
    verify_net_in_out(
        net_id="network_def", meta_file=str(BUNDLE / "metadata.json"), config_file=str(BUNDLE / "inference.json")
    )


def test_two_process_gloo_run(tmp_path: Path) -> None:
    out = bundle(
        "--bundle_root", str(tmp_path), "--max_epochs", "2", *TINY, "--batch_size", "4",
        config="train.json,multi_gpu_train.json", torchrun=2,
    )  # fmt: skip
    log = out.stdout + out.stderr
    assert log.count("Epoch: 2/2, Iter: 1/") == 1  # only rank 0 logs
    assert len(list((tmp_path / "eval").glob("events.out.tfevents.*"))) == 2  # trainer + evaluator, rank 0 only
    # the saved ensemble is unwrapped from DDP: plain keys, loads into the bundle's network_def
    state = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    assert not any(".module." in k for k in state)
    StudentEnsemble([build_network("resnet10_slim") for _ in range(2)]).load_state_dict(state)


class TestBadInput:
    def test_missing_dataset_dir(self, tmp_path: Path) -> None:
        out = bundle("--bundle_root", str(tmp_path), "--dataset_dir", str(tmp_path / "nope"), check=False)
        assert out.returncode != 0 and f"{tmp_path / 'nope'} does not exist" in out.stdout + out.stderr
        assert not (tmp_path / "models").exists()  # failed before any training

    def test_missing_class_folder(self, tmp_path: Path) -> None:
        (tmp_path / "data" / "MSIMUT").mkdir(parents=True)
        (tmp_path / "data" / "MSIMUT" / "blk-AAAAAAAAAAAA-TCGA-AA-0001-01Z-00-DX1.png").write_bytes(b"x")
        out = bundle("--bundle_root", str(tmp_path), "--dataset_dir", str(tmp_path / "data"), check=False)
        assert out.returncode != 0 and "missing the MSS class folder" in out.stdout + out.stderr

    def test_unknown_mode_is_named(self, tmp_path: Path) -> None:
        out = bundle("--bundle_root", str(tmp_path), "--mode", "kdl", *TINY, check=False)
        assert out.returncode != 0 and "`mode`" in out.stdout + out.stderr and "did you mean" in out.stdout + out.stderr


def test_real_tiles_smoke(tmp_path: Path) -> None:
    """The bundle on the 72 real H&E tiles in Kather layout (single class-folder root, real patient split)."""
    if not REAL_TILES.is_dir():
        pytest.skip(f"real H&E tiles not found at {REAL_TILES}")
    out = bundle(
        "--bundle_root", str(tmp_path), "--dataset_dir", str(REAL_TILES), "--preset", "demo", "--max_epochs", "1",
        "--image_size", "32", "--batch_size", "16",
    )  # fmt: skip
    log = out.stdout + out.stderr
    assert "SYNTHETIC" not in log and "kept 72 of 72 tiles" in log
    assert (tmp_path / "models" / "model.pt").is_file()
