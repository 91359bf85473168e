"""The MSI bundle's deployment files from a trained tiny run: ``run export`` (TorchScript, ONNX, torch.export, each
checked against eager), inference in ONNX Runtime, and the model-zoo checks (``verify_metadata``,
``verify_net_in_out``, ``ckpt_export`` then ``torch.jit.load``)."""

from __future__ import annotations

import csv
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
from monai.bundle import ckpt_export, verify_metadata, verify_net_in_out

from monai_kdml.networks import StudentEnsemble, build_network

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning", "ignore::FutureWarning")
TINY = ["--demo_patients", "8", "--demo_tiles_per_patient", "4", "--image_size", "32", "--batch_size", "8"]
SIZE = 32
REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def trained(msi_bundle, module_tmp: Callable[[str], Path]) -> Path:
    """One tiny 1-epoch demo run at 32 px, then the bundle's export (as a user runs both)."""
    root = module_tmp("msi_export")
    train = msi_bundle.cli("--bundle_root", str(root), "--max_epochs", "1", "--num_students", "2", *TINY)
    label = "export to ONNX, .pt2 and TorchScript"  # the command the end-of-run summary prints, run as printed
    line = next(x.strip() for x in (train.stdout + train.stderr).splitlines() if x.strip().startswith(label))
    args = shlex.split(line[len(label) :])
    assert args[:5] == ["python", "-m", "monai.bundle", "run", "export"] and f"--bundle_root {root}" in line
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    out = subprocess.run([sys.executable, *args[1:]], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    (root / "export.log").write_text(out.stdout + out.stderr)
    return root


def eager(trained: Path) -> StudentEnsemble:
    ensemble = StudentEnsemble([build_network("resnet10_slim") for _ in range(2)]).eval()
    ensemble.load_state_dict(torch.load(trained / "models" / "model.pt", weights_only=True))
    return ensemble


def test_export_writes_three_files_checked_against_eager(trained: Path) -> None:
    log = (trained / "export.log").read_text()
    diffs = re.findall(r"Exported (\S+): max \|diff\| from the eager network = (\S+) \(batch 3\)", log)
    assert sorted(Path(p).name for p, _ in diffs) == ["ensemble.onnx", "ensemble.pt2", "ensemble.ts"]
    assert all(float(d) <= 1e-4 for _, d in diffs)
    meta = json.loads((trained / "models" / "metadata.json").read_text())  # the run's: its trained size
    assert meta["network_data_format"]["inputs"]["image"]["spatial_shape"] == [SIZE, SIZE]
    x = torch.rand(5, 3, SIZE, SIZE)
    with torch.no_grad():
        want = eager(trained)(x)
        program = torch.export.load(str(trained / "models" / "ensemble.pt2")).module()
        assert torch.allclose(program(x), want, atol=1e-5)
        extra = {"metadata.json": ""}
        scripted = torch.jit.load(str(trained / "models" / "ensemble.ts"), _extra_files=extra)
        assert torch.allclose(scripted(x), want, atol=1e-5)
    assert json.loads(extra["metadata.json"])["network_data_format"]["inputs"]["image"]["spatial_shape"] == [32, 32]
    # log-probabilities, as metadata.json says: exp sums to 1
    assert torch.allclose(want.exp().sum(1), torch.ones(5), atol=1e-5)


def test_onnx_file_runs_in_a_python_without_torch_or_monai(trained: Path, tmp_path: Path) -> None:
    x = torch.rand(4, 3, SIZE, SIZE)
    with torch.no_grad():
        want = eager(trained)(x).numpy()
    import numpy as np

    np.save(tmp_path / "x.npy", x.numpy())
    script = f"""
import sys
sys.modules["torch"] = None; sys.modules["monai"] = None; sys.modules["monai_kdml"] = None
import json, numpy as np, onnxruntime as ort
session = ort.InferenceSession({str(trained / "models" / "ensemble.onnx")!r}, providers=["CPUExecutionProvider"])
meta = json.loads(session.get_modelmeta().custom_metadata_map["metadata.json"])
assert meta["network_data_format"]["outputs"]["pred"]["format"].startswith("log-probabilities")
np.save({str(tmp_path / "y.npy")!r}, session.run(["pred"], {{"image": np.load({str(tmp_path / "x.npy")!r})}})[0])
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert np.abs(np.load(tmp_path / "y.npy") - want).max() <= 1e-4


def test_inference_in_onnx_runtime_gives_the_pytorch_probabilities(msi_bundle, trained: Path) -> None:
    rows = {}
    for runtime in ("torch", "onnx"):
        out = trained / f"inference_{runtime}"
        msi_bundle.workflow("inference.json", "infer", bundle_root=str(trained), output_dir=str(out), runtime=runtime)
        with (out / "tiles.csv").open() as f:
            rows[runtime] = list(csv.DictReader(f))
    assert len(rows["torch"]) == len(rows["onnx"]) > 0
    for a, b in zip(rows["torch"], rows["onnx"], strict=True):
        assert a["path"] == b["path"] and a["predicted"] == b["predicted"]
        assert abs(float(a["probability"]) - float(b["probability"])) <= 1e-4
        assert b["disagreement"] == ""  # the students are inside the ONNX graph: not reported
    with pytest.raises(RuntimeError) as error:  # MONAI's "Failed to evaluate" around ours
        msi_bundle.workflow("inference.json", "infer", bundle_root=str(trained), runtime="tensorrt", run=False)
    assert "`runtime` must be one of ['torch', 'onnx'], got 'tensorrt'" in str(error.value.__cause__)


def test_model_zoo_checks_pass_on_the_trained_bundle(msi_bundle, trained: Path, tmp_path: Path) -> None:
    schema = str(msi_bundle.dir.parent / "schema" / "meta_schema_20240725.json")
    for meta in (msi_bundle.dir / "metadata.json", trained / "models" / "metadata.json"):
        verify_metadata(meta_file=str(meta), filepath=schema)
    verify_net_in_out(
        net_id="network_def",
        meta_file=str(trained / "models" / "metadata.json"),
        config_file=str(msi_bundle.dir / "inference.json"),
        bundle_root=str(trained),
        device="cpu",
    )
    target = tmp_path / "model.ts"
    ckpt_export(
        "network_def",
        filepath=str(target),
        ckpt_file=str(trained / "models" / "model.pt"),
        meta_file=str(trained / "models" / "metadata.json"),
        config_file=str(msi_bundle.dir / "inference.json"),
        bundle_root=str(trained),
    )
    x = torch.rand(2, 3, SIZE, SIZE)
    with torch.no_grad():
        assert torch.allclose(torch.jit.load(str(target))(x), eager(trained)(x), atol=1e-5)
