"""The MSI bundle on labels that are not MSI/MSS: three class folders, a CSV with its own patient ids and a named
positive class, and the refusals of a bad class config (tiny generated 32 px tiles, one epoch)."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from monai_kdml.data.evaluation import external_report_name

CLASSES = ("normal", "adenoma", "carcinoma")
TINY = ["--preset", "demo", "--image_size", "32", "--batch_size", "8"]


def _tile(path: Path, label: int, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 200, (32, 32, 3), dtype=np.uint8)
    pixels[..., label % 3] = 230  # a colour per class: something to learn
    Image.fromarray(pixels).save(path)


def _three_class_folders(root: Path, patients: range) -> Path:
    for p in patients:
        for t in range(3):
            name = f"blk-{chr(65 + t) * 12}-TCGA-ZZ-{p:04d}-01Z-00-DX1.png"
            _tile(root / CLASSES[p % 3] / name, p % 3, seed=p * 10 + t)
    return root


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def _metrics(path: Path) -> dict[str, float]:
    return {k: float(v) for k, v in (line.split(",") for line in path.read_text().splitlines())}


def _pair_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    diff = scores[labels == 1][:, None] - scores[labels == 0][None, :]
    return float(((diff > 0) + 0.5 * (diff == 0)).mean())


@pytest.fixture(scope="module")
def three_class_run(msi_bundle, module_tmp: Callable[[str], Path]) -> tuple[Path, Path]:
    """One epoch on ``<root>/TISSUE_TRAIN/{normal,adenoma,carcinoma}/`` with a ``TISSUE_TEST`` split beside it."""
    data = module_tmp("tissue")
    _three_class_folders(data / "TISSUE_TRAIN", range(12))
    _three_class_folders(data / "TISSUE_TEST", range(20, 26))
    run = data / "run"
    names = repr(list(CLASSES))
    msi_bundle.cli("--bundle_root", str(run), "--dataset_dir", str(data), "--class_names", names, "--max_epochs", "1",
                   *TINY)  # fmt: skip
    return data, run


def test_three_classes_train_and_record_their_names(three_class_run: tuple[Path, Path]) -> None:
    _, run = three_class_run
    record = json.loads((run / "models" / "network.json").read_text())
    assert record["num_classes"] == 3 and record["class_names"] == list(CLASSES)
    assert record["positive_class"] == "carcinoma"  # the last class unless named
    row = _rows(run / "eval" / "metrics_history.csv")[-1]
    assert all(0 <= float(row[f"ensemble_{m}"]) <= 1 for m in ("auc", "acc", "bacc", "f1", "patient_auc"))


def test_three_classes_evaluate_test_split_and_external_folder(msi_bundle, three_class_run) -> None:
    data, run = three_class_run
    args = ["--bundle_root", str(run), "--dataset_dir", str(data), *TINY[2:]]  # class names come from the record
    msi_bundle.cli(*args, config=["train.json", "evaluate.json"])
    summary = (run / "eval" / "test" / "summary.md").read_text()
    assert (
        summary.startswith("# normal / adenoma / carcinoma")
        and "Classes: normal (0), adenoma (1), carcinoma (2)" in summary
    )
    assert "macro averages over the 3 classes" in summary
    tiles = _rows(run / "eval" / "test" / "tile_scores.csv")
    assert len(tiles) == 18 and {t["class"] for t in tiles} == set(CLASSES)
    assert all(t["label"] == str(int(t["class"] == "carcinoma")) for t in tiles)  # positive vs rest
    external = _three_class_folders(data / "hospital_b", range(40, 43))
    msi_bundle.cli(*args, "--test_dir", str(external), config=["train.json", "evaluate.json"])
    scored = _rows(run / "eval" / external_report_name(external) / "tile_scores.csv")
    assert len(scored) == 9 and {t["class"] for t in scored} == set(CLASSES)


def test_three_classes_inference_writes_a_probability_per_class(msi_bundle, three_class_run, tmp_path: Path) -> None:
    data, run = three_class_run
    out = tmp_path / "inference"
    msi_bundle.cli("--bundle_root", str(run), "--dataset_dir", str(data / "TISSUE_TEST"), "--output_dir", str(out),
                   config="inference.json")  # fmt: skip
    tiles = _rows(out / "tiles.csv")
    assert list(tiles[0]) == ["path", "patient_id", "predicted", "probability", "p_normal", "p_adenoma",
                              "p_carcinoma", "disagreement"]  # fmt: skip
    for t in tiles:
        probs = [float(t[f"p_{c}"]) for c in CLASSES]
        assert sum(probs) == pytest.approx(1, abs=1e-5) and t["predicted"] == CLASSES[int(np.argmax(probs))]
        assert float(t["probability"]) == pytest.approx(float(t["p_carcinoma"]))
    patients = _rows(out / "patients.csv")
    assert len(patients) == 6 and all("p_adenoma" in p for p in patients)


def test_csv_with_its_own_patient_ids_and_a_named_positive_class(msi_bundle, tmp_path: Path) -> None:
    """Tiles named ``tile_<n>.png`` (no patient id), patients and splits from the CSV, AUC and F1 of ``benign``."""
    rows = []
    for p in range(16):
        split = "test" if p >= 12 else "val" if p >= 8 else "train"
        for t in range(3):
            name = f"tiles/tile_{p * 3 + t:03d}.png"
            _tile(tmp_path / "data" / name, p % 2, seed=p * 10 + t)
            rows.append([name, ("benign", "malignant")[p % 2], f"case-{p:02d}", split])
    rows.append(["tiles/lost.png", "benign", "case-00", "train"])  # a missing file: a counted skip
    labels = tmp_path / "data" / "labels.csv"
    with labels.open("w", newline="") as f:
        csv.writer(f).writerows([["path", "label", "patient", "split"], *rows])
    run = tmp_path / "run"
    args = ["--bundle_root", str(run), "--dataset_dir", str(labels), *TINY]
    out = msi_bundle.cli(*args, "--class_names", "['benign', 'malignant']", "--positive_class", "benign",
                         "--max_epochs", "1")  # fmt: skip
    assert "skipped, no such file:          1" in out.stdout + out.stderr
    assert json.loads((run / "models" / "network.json").read_text())["positive_class"] == "benign"
    msi_bundle.cli(*args, config=["train.json", "evaluate.json"])
    report = run / "eval" / "test"
    tiles, metrics = _rows(report / "tile_scores.csv"), _metrics(report / "metrics.csv")
    assert {t["patient_id"] for t in tiles} == {f"case-{p}" for p in range(12, 16)}
    prob = np.array([float(t["p_ensemble"]) for t in tiles])  # of benign
    benign = np.array([t["class"] == "benign" for t in tiles])
    assert np.array_equal(benign, np.array([t["label"] == "1" for t in tiles]))
    patients = np.array([t["patient_id"] for t in tiles])
    ids = sorted(set(patients))
    patient_prob = np.array([prob[patients == p].mean() for p in ids])
    patient_label = np.array([benign[patients == p][0] for p in ids]).astype(int)
    assert metrics["ensemble_patient_auc"] == pytest.approx(_pair_auc(patient_label, patient_prob), abs=1e-6)
    predicted = prob > 0.5
    tp, fp, fn = np.sum(predicted & benign), np.sum(predicted & ~benign), np.sum(~predicted & benign)
    assert metrics["ensemble_f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn), abs=1e-5)
    assert (
        "Positive class (ROC curves, patient_auc, f1, the CSVs' probabilities): benign"
        in (report / "summary.md").read_text()
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--num_classes", "3"], "`num_classes` is 3 but `class_names` lists 2 classes (MSS, MSI)"),
        (["--class_names", "['benign', 'malignant']"], "the synthetic demo (no `dataset_dir`) has Kather's"),
        (["--positive_class", "MSIH_typo"], "Did you mean 'MSIH'?"),
    ],
)
def test_a_bad_class_config_is_refused_before_training(msi_bundle, tmp_path: Path, args, message) -> None:
    out = msi_bundle.cli("--bundle_root", str(tmp_path), *TINY, *args, check=False)
    log = out.stdout + out.stderr
    assert out.returncode != 0 and message in log, log[-2000:]
    assert "Epoch: 1/" not in log and not (tmp_path / "models").exists()
