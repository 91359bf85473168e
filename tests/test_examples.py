"""The examples run end to end at tiny sizes (they are documentation that must not rot)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def scalars(folder: Path) -> dict[str, list[int]]:
    """Every scalar tag in the event files of ``folder`` with its steps, in the order written."""
    steps: dict[str, list[int]] = {}
    for events in sorted(folder.glob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            steps.setdefault(tag, []).extend(e.step for e in acc.Scalars(tag))
    return steps


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ORDER_PROBE = """
import importlib.util, os, sys
spec = importlib.util.spec_from_file_location("example", sys.argv[1])
module = importlib.util.module_from_spec(spec)
seen = {}
class Watch:  # records the wait policy at the moment torch is first imported
    def find_spec(self, name, path=None, target=None):
        if name == "torch" and "torch" not in seen:
            seen["torch"] = os.environ.get("OMP_WAIT_POLICY")
        return None
sys.meta_path.insert(0, Watch())
spec.loader.exec_module(module)
print(seen["torch"])
"""


@pytest.mark.parametrize("name", sorted(p.stem for p in EXAMPLES.glob("*.py")))
def test_examples_set_passive_waits_before_torch_loads(name: str, child_env: dict[str, str]) -> None:
    """docs/threads.md: the examples import monai_kdml first, so torch's OpenMP threads never spin while waiting."""
    env = {k: v for k, v in child_env.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")}
    out = subprocess.run(
        [sys.executable, "-c", ORDER_PROBE, str(EXAMPLES / f"{name}.py")], capture_output=True, text=True, env=env
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "PASSIVE", f"{name}.py imports torch before monai_kdml"


def test_plain_python_msi_example(tmp_path: Path) -> None:
    argv = ["--output-dir", str(tmp_path), "--epochs", "1", "--image-size", "32"]
    results = load("train_msi_plain_python").main([*argv, "--demo-patients", "8", "--demo-tiles-per-patient", "4"])
    for net in ("teacher", "student_0", "student_1", "ensemble"):
        assert 0.0 <= results[f"{net}_auc"] <= 1.0
    assert (tmp_path / "model.pt").is_file()
    tags = scalars(tmp_path / "runs")
    assert {"train/kd/student_0", "val/patient_auc/ensemble", "lr/teacher", "warmup/ml_weight"} <= set(tags)


def test_3d_nifti_segmentation_example(tmp_path: Path) -> None:
    results = load("segment_3d_blobs").main(
        ["--output-dir", str(tmp_path), "--num-volumes", "6", "--size", "16", "--epochs", "2"]
    )
    assert set(results) == {"teacher_dice", "student_0_dice", "student_1_dice", "ensemble_dice"}
    assert all(0.0 <= v <= 1.0 for v in results.values())
    assert len(list((tmp_path / "data").glob("*.nii.gz"))) == 12
    assert json.loads((tmp_path / "dice.json").read_text()) == results
    # the supervised term is named for what it is, and no evaluation goes back to step 1 after the last epoch
    tags = scalars(tmp_path / "runs")
    assert {"train/dice_ce/teacher", "train/dice_ce/student_1", "val/dice/ensemble"} <= set(tags)
    assert not any("/ce/" in tag or tag.startswith("ce_") for tag in tags)
    assert tags["val/dice/ensemble"] == [1, 2]


def test_teacher_ensemble_example(tmp_path: Path) -> None:
    argv = ["--output-dir", str(tmp_path), "--epochs", "1", "--teacher-epochs", "1", "--size", "12"]
    results = load("distil_teacher_ensemble").main([*argv, "--num-train", "32", "--num-val", "16"])
    names = ("teacher", "teacher_0", "teacher_1", "teacher_2", "student_0", "student_1", "ensemble")
    assert set(results) == {f"{n}_{m}" for n in names for m in ("auc", "acc")}
    assert all(0.0 <= v <= 1.0 for v in results.values())
    assert sorted(p.name for p in tmp_path.glob("teacher_*.pt")) == ["teacher_0.pt", "teacher_1.pt", "teacher_2.pt"]
    assert json.loads((tmp_path / "metrics.json").read_text()) == results
