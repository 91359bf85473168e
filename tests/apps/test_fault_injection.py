"""Fault injection through the real bundles: SIGKILL at random moments (also while a checkpoint is written), hostile
pickles at every entry point that reads a file, and checkpoints that do not fit. Nothing may be lost or run."""

from __future__ import annotations

import json
import pickle
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

ENTRY = Path(__file__).resolve().parent / "bundle_kill_entry.py"


def campaign(kill_driver, tmp_path: Path, bundle: str, seeds: list[int], kills: int, max_epochs: int) -> dict:
    spec = {
        "entry": str(ENTRY),
        "workdir": str(tmp_path / "runs"),
        "seeds": seeds,
        "kills_per_seed": kills,
        "kwargs": {"bundle": bundle, "max_epochs": max_epochs, "cache_dir": str(tmp_path / "cache")},
        "compare": ["model.pt", "best_networks.pt"],
        "timeout": 300,
    }
    report = kill_driver(spec, timeout=900)
    print(f"{bundle}: {json.dumps({k: v for k, v in report.items() if k != 'seeds'})}")  # the figures in the log
    return report


@pytest.mark.parametrize(("bundle", "seeds", "kills"), [("msi", [0, 1], 6), ("polyp", [0, 1], 5)])
def test_sigkill_at_random_moments_loses_nothing(kill_driver, tmp_path: Path, bundle: str, seeds, kills) -> None:
    """22 kills in all (12 MSI + 10 polyp); each resumed run must end exactly where the uninterrupted one did."""
    report = campaign(kill_driver, tmp_path, bundle, seeds, kills, max_epochs=3)
    assert report["kills"] == len(seeds) * kills
    assert report["resumes"] + report["fresh_starts"] >= report["kills"]  # a kill before any checkpoint: fresh
    assert report["failures"] == [] and report["damaged"] == [] and report["regressions"] == []
    unequal = [
        {k: s[k] for k in ("seed", "final_state_equal", "identical_files", "final_exists")}
        for s in report["seeds"]
        if not (s["final_state_equal"] and all(s["identical_files"].values()))
    ]
    assert report["all_equal"], unequal  # final checkpoint state, model.pt and best_networks.pt
    assert report["kills_during_write"] >= 1  # some kills hit a checkpoint being written


class _Hostile:
    """Unpickling this calls ``open(marker, "w")``: if the file appears, code from a checkpoint ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (open, (str(self.marker), "w"))


@pytest.fixture
def hostile(tmp_path: Path) -> tuple[Path, Path]:
    marker = tmp_path / "pwned"
    path = tmp_path / "hostile.pt"
    with path.open("wb") as f:
        pickle.dump({"teacher": _Hostile(marker), "model": _Hostile(marker)}, f)
    return path, marker


MSI_TINY = {"demo_patients": 8, "demo_tiles_per_patient": 4, "image_size": 32, "batch_size": 8}
POLYP_TINY = {"preset": "tiny", "image_size": 64, "demo_images": 16, "demo_image_size": 80, "batch_size": 4}


@pytest.fixture(scope="module")
def trained_runs(msi_bundle, polyp_bundle, module_tmp: Callable[[str], Path]) -> dict[str, Path]:
    """One finished tiny run per bundle, whose model.pt / best_networks.pt the hostile tests replace in copies."""
    roots = {"msi": module_tmp("msi_run"), "polyp": module_tmp("polyp_run")}
    msi_bundle.workflow("train.json", "train", bundle_root=str(roots["msi"]), max_epochs=1, **MSI_TINY)
    polyp_bundle.workflow("train.json", "train", bundle_root=str(roots["polyp"]), max_epochs=1, **POLYP_TINY)
    return roots


def _refused(run) -> BaseException:  # type: ignore[no-untyped-def]
    with pytest.raises(Exception) as error:
        run()
    return error.value


@pytest.mark.parametrize("bundle", ["msi", "polyp"])
@pytest.mark.parametrize(
    "entry",
    ["teacher_weights", "student_weights", "resume", "inference_model", "export_model", "evaluate_best_networks"],
)
def test_a_pickle_that_would_run_code_is_refused_everywhere(
    msi_bundle, polyp_bundle, trained_runs, hostile, tmp_path: Path, bundle: str, entry: str
) -> None:
    """Six entry points per bundle (12 in all) that read a file a user may have been handed."""
    path, marker = hostile
    runner, tiny = (msi_bundle, MSI_TINY) if bundle == "msi" else (polyp_bundle, POLYP_TINY)
    root = tmp_path / "run"
    if entry in ("teacher_weights", "student_weights"):
        mode = {"teacher_mode": "frozen", "mode": "kd"} if entry == "teacher_weights" else {}
        overrides = {"bundle_root": str(root), entry: str(path), "max_epochs": 1, **mode, **tiny}
        error = _refused(lambda: runner.workflow("train.json", "train", **overrides))
        assert "hostile.pt" in f"{error} {error.__cause__}"
    elif entry == "resume":
        (root / "models").mkdir(parents=True)
        (root / "models" / "checkpoint_epoch=9.pt").write_bytes(path.read_bytes())
        overrides = {"bundle_root": str(root), "resume": True, "max_epochs": 1, **tiny}
        error = _refused(lambda: runner.workflow("train.json", "train", **overrides))
        assert "checkpoint_epoch=9.pt is refused by weights_only loading" in f"{error} {error.__cause__}"
    else:
        import shutil

        shutil.copytree(trained_runs[bundle], root)
        target = root / "models" / ("best_networks.pt" if entry == "evaluate_best_networks" else "model.pt")
        target.write_bytes(path.read_bytes())
        if entry == "inference_model":
            _refused(lambda: runner.workflow("inference.json", "infer", bundle_root=str(root)))
        elif entry == "evaluate_best_networks":
            _refused(lambda: runner.workflow(["train.json", "evaluate.json"], "infer", bundle_root=str(root), **tiny))
        else:
            from monai.bundle import ckpt_export

            _refused(
                lambda: ckpt_export(
                    "network_def",
                    filepath=str(tmp_path / "m.ts"),
                    ckpt_file=str(target),
                    config_file=str(runner.dir / "inference.json"),
                    meta_file=str(runner.dir / "metadata.json"),
                    bundle_root=str(root),
                )
            )
    assert not marker.exists()  # nothing from the pickle ran


def test_resuming_with_another_number_of_students_names_both(msi_bundle, tmp_path: Path) -> None:
    msi_bundle.workflow("train.json", "train", bundle_root=str(tmp_path), max_epochs=1, **MSI_TINY)
    error = _refused(
        lambda: msi_bundle.workflow(
            "train.json", "train", bundle_root=str(tmp_path), resume=True, max_epochs=2, num_students=3, **MSI_TINY
        )
    )
    assert "`num_students`: trained with 2, configured 3" in f"{error} {error.__cause__}"
    state = torch.load(tmp_path / "models" / "checkpoint_final.pt", weights_only=True)
    assert len(state["students"]) == 2  # the checkpoint is untouched


def _files(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``folder`` with its bytes and modification time (ns)."""
    return {
        str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()
    }


@pytest.mark.parametrize(("bundle", "damage"), [("msi", "truncated"), ("msi", "deleted"), ("polyp", "truncated")])
def test_resume_without_a_readable_checkpoint_refuses_and_changes_nothing(
    msi_bundle, polyp_bundle, trained_runs, tmp_path: Path, bundle: str, damage: str
) -> None:
    """Issue 15 case 3: `--resume true` with every checkpoint truncated or deleted refused before training, naming
    what it found; model.pt, best_networks.pt and every other file of the run stay as they were."""
    import shutil

    runner, tiny = (msi_bundle, MSI_TINY) if bundle == "msi" else (polyp_bundle, POLYP_TINY)
    root = tmp_path / "run"
    shutil.copytree(trained_runs[bundle], root)
    checkpoints = sorted((root / "models").glob("checkpoint*.pt"))
    assert checkpoints and (root / "models" / "model.pt").is_file()
    for path in checkpoints:
        if damage == "truncated":
            path.write_bytes(path.read_bytes()[:2000])
        else:
            path.unlink()
    before = _files(root)
    overrides = {"bundle_root": str(root), "resume": True, "max_epochs": 2, **tiny}
    error = _refused(lambda: runner.workflow("train.json", "train", **overrides))
    message = f"{error} {error.__cause__}"
    assert "--resume true: nothing to resume from" in message and "every file was left as it was" in message
    if damage == "truncated":
        assert f"{len(checkpoints)} checkpoint file" in message and "checkpoint_final.pt is truncated" in message
    else:
        assert "holds no checkpoint*.pt, only best_networks.pt, model.pt, network.json" in message
    assert _files(root) == before
