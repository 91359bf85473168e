"""Hostile and unusual inputs of issue 15, both apps: report folders of external cohorts, CSV injection, validation
splits that cannot select a model, test sets that overlap the training data, dangling links, EXIF orientation,
batches of one sample and command-line words for ``decode``."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.data import DataLoader, Dataset
from monai.engines import SupervisedEvaluator
from PIL import Image

from monai_kdml.apps.msi import (
    TilePredictionWriter,
    evaluation_split,
    prepare_msi_datalists,
    tile_classes,
    tile_datalist,
    tile_transforms,
)
from monai_kdml.apps.polyp.datalists import polyp_inference_datalist
from monai_kdml.apps.polyp.kvasir import kvasir_preflight
from monai_kdml.data.csv_cells import escape_cell
from monai_kdml.data.evaluation import external_report_name
from monai_kdml.networks import StudentEnsemble, build_network

BINARY = tile_classes(["benign", "malignant"])


def _tile(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(path)
    return path


def _folders(root: Path, patients: int = 2, tiles: int = 2, first: int = 0) -> Path:
    """``root/benign``, ``root/malignant``: ``patients`` TCGA patients of ``tiles`` tiles per class."""
    for c, name in enumerate(BINARY.names):
        for p in range(first, first + patients):
            for t in range(tiles):
                _tile(root / name / f"blk-{chr(65 + t) * 12}-TCGA-AA-{c * 100 + p:04d}-01Z-00-DX1.png", seed=p + t)
    return root


def _csv(root: Path, rows: list[tuple[int, int, str]]) -> Path:
    """Tiles ``tiles/<patient>_<n>.png`` listed in ``labels.csv``: one row per (patient, label, split) tuple."""
    lines = []
    for n, (patient, label, split) in enumerate(rows):
        name = f"tiles/{patient}_{n}.png"
        _tile(root / name, seed=n)
        lines.append([name, BINARY.names[label], f"patient-{patient:02d}", split])
    with (root / "labels.csv").open("w", newline="") as f:
        csv.writer(f).writerows([["path", "label", "patient", "split"], *lines])
    return root / "labels.csv"


# ------------------------------------------------------------------------------------- case 4: report folders


def test_external_cohorts_whose_folders_share_a_name_get_their_own_report_folder(tmp_path: Path) -> None:
    a, b = tmp_path / "siteA" / "test", tmp_path / "siteB" / "test"
    name_a, name_b = external_report_name(a), external_report_name(b)
    assert name_a != name_b
    assert name_a.startswith("external_siteA_test_") and name_b.startswith("external_siteB_test_")
    assert external_report_name(tmp_path / "siteA" / ".." / "siteA" / "test") == name_a  # stable: one per folder


def test_two_external_cohorts_named_test_are_scored_into_two_folders(tmp_path: Path) -> None:
    data = prepare_msi_datalists(
        _folders(tmp_path / "train", patients=4), tmp_path / "c", classes=BINARY, val_fraction=0.5
    )
    splits = [evaluation_split(data, _folders(tmp_path / s / "test", first=10)) for s in ("siteA", "siteB")]
    assert splits[0].name != splits[1].name and all(s.name.startswith("external_site") for s in splits)


# --------------------------------------------------------------------------- cases 8, 9: validation splits


def test_one_patient_per_class_is_refused_with_the_counts(tmp_path: Path) -> None:
    root = _folders(tmp_path / "data", patients=1, tiles=3)
    with pytest.raises(
        ValueError, match=r"the validation split is empty \(val_fraction 0.2; train: benign: 3 tiles of 1"
    ):
        prepare_msi_datalists(root, tmp_path / "c", classes=BINARY)


def test_a_validation_split_of_one_class_is_refused_before_training(tmp_path: Path) -> None:
    labels = _csv(tmp_path, [(0, 0, "train"), (1, 1, "train"), (2, 0, "val"), (3, 0, "val")])
    with pytest.raises(
        ValueError, match=r"has no malignant tile, so its AUC .* is undefined .*validation: benign: 2 tiles"
    ):
        prepare_msi_datalists(labels, tmp_path / "c", classes=BINARY, expected_size=None)


def test_a_validation_split_of_every_class_passes(tmp_path: Path) -> None:
    data = prepare_msi_datalists(_folders(tmp_path / "data", patients=2), tmp_path / "c", classes=BINARY)
    assert {t["label"] for t in data.val} == {0, 1}


# ------------------------------------------------------------------- case 10: overlap of training and test


def test_a_csv_patient_in_train_and_test_rows_is_refused_at_training(tmp_path: Path) -> None:
    rows = [(p, p % 2, "train") for p in range(6)] + [(6, 0, "test"), (0, 0, "test")]
    labels = _csv(tmp_path, rows)
    with pytest.raises(ValueError, match=r"its `test` rows\): 1 of its 2 patients also have training .*patient-00"):
        prepare_msi_datalists(labels, tmp_path / "c", classes=BINARY, expected_size=None)


def test_the_training_folder_as_test_dir_is_refused(tmp_path: Path) -> None:
    root = _folders(tmp_path / "data", patients=3)
    data = prepare_msi_datalists(root, tmp_path / "c", classes=BINARY)
    with pytest.raises(ValueError, match=r"`test_dir` .*data: 12 of its 12 files were used for training"):
        evaluation_split(data, test_dir=root)


def test_an_external_cohort_sharing_patient_ids_is_scored_with_a_counted_warning(tmp_path: Path, caplog) -> None:
    data = prepare_msi_datalists(_folders(tmp_path / "data", patients=3), tmp_path / "c", classes=BINARY)
    with caplog.at_level(logging.WARNING):
        split = evaluation_split(data, test_dir=_folders(tmp_path / "other", patients=3, tiles=1))
    assert len(split.items) == 6 and "6 patients also have training or validation tiles" in caplog.text


# --------------------------------------------------------------------------------- case 6: CSV injection

FORMULAS = ("=HYPERLINK(1)", "+SUM(A1)", "@cmd", "-2+3", "\tx")


def test_tile_and_patient_names_that_read_as_formulas_are_escaped_in_the_inference_csvs(tmp_path: Path) -> None:
    for n, name in enumerate((*FORMULAS, "plain")):
        _tile(tmp_path / "tiles" / f"{name}.png", seed=n)
    datalist = tile_datalist(tmp_path / "tiles")
    ensemble = StudentEnsemble([build_network("resnet10_slim") for _ in range(2)])
    loader = DataLoader(Dataset(datalist, tile_transforms(32, labels=False)), batch_size=4)
    evaluator = SupervisedEvaluator(device=torch.device("cpu"), val_data_loader=loader, network=ensemble)
    TilePredictionWriter(tmp_path / "out", ensemble).attach(evaluator)
    evaluator.run()
    with (tmp_path / "out" / "patients.csv").open(newline="") as f:
        patients = {row["patient_id"]: row for row in csv.DictReader(f)}
    assert set(patients) == {*(f"'{name}" for name in FORMULAS), "plain"}
    assert all(float(row["probability"]) >= 0 for row in patients.values())  # numbers stay numbers
    with (tmp_path / "out" / "tiles.csv").open(newline="") as f:
        assert {row["patient_id"] for row in csv.DictReader(f)} == set(patients)


def test_the_escaping_rule_keeps_numbers_and_plain_text() -> None:
    kept = ("-0.25", "1e-3", "-1e-3", "+3", "-inf", "-0.012 ± 0.004", "-", "TCGA-AA-3516", 3, -1.5)
    assert [escape_cell(v) for v in kept] == list(kept)
    formulas = ("-2+3", "-2+3+cmd|' /C calc'!A0", "=1", "@x", "\rx", "--")
    assert [escape_cell(v) for v in formulas] == [f"'{v}" for v in formulas]


# ------------------------------------------------------------------- cases 16, 17: batches of one sample

TINY = ["--demo_patients", "8", "--demo_tiles_per_patient", "4", "--image_size", "32", "--max_epochs", "1"]


def test_a_training_split_of_one_more_than_the_batch_size_trains_and_says_what_it_left_out(
    msi_bundle, tmp_path: Path
) -> None:
    """16 training tiles at batch size 5 left a last batch of one: BatchNorm stopped the run at the end of epoch 1."""
    out = msi_bundle.cli("--bundle_root", str(tmp_path), *TINY, "--batch_size", "5")
    log = out.stdout + out.stderr
    assert "16 training tiles, batch size 5: the last batch of each epoch would hold 1 sample" in log
    assert (tmp_path / "models" / "model.pt").is_file()


def test_batch_size_1_at_32_px_is_refused_before_training(msi_bundle, tmp_path: Path) -> None:
    out = msi_bundle.cli("--bundle_root", str(tmp_path), *TINY, "--batch_size", "1", check=False)
    log = out.stdout + out.stderr
    assert out.returncode != 0 and "`batch_size` 1: the teacher's BatchNorm layer" in log
    assert "sees a 1 x 1 map at `image_size` 32" in log and not (tmp_path / "models" / "model.pt").exists()


# ------------------------------------------------------------------------- case 12: dangling symlinks


def test_dangling_links_in_a_tile_folder_are_counted_and_named_at_inference(tmp_path: Path, caplog) -> None:
    for n in range(3):
        _tile(tmp_path / "tiles" / f"tile_{n}.png", seed=n)
    (tmp_path / "tiles" / "gone.png").symlink_to(tmp_path / "elsewhere" / "gone.png")
    with caplog.at_level(logging.WARNING):
        items = tile_datalist(tmp_path / "tiles")
    assert len(items) == 3
    assert "1 of 4 tiles in" in caplog.text and "gone.png" in caplog.text


def test_dangling_links_among_polyp_frames_are_counted_and_named_at_inference(tmp_path: Path, caplog) -> None:
    for n in range(2):
        _tile(tmp_path / "frames" / f"frame_{n}.jpg", seed=n)
    (tmp_path / "frames" / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    with caplog.at_level(logging.WARNING):
        items = polyp_inference_datalist(tmp_path / "frames")
    assert len(items) == 2 and "1 of 3 frames in" in caplog.text and "gone.jpg: no such file" in caplog.text


# ------------------------------------------------------------------------- case 13: EXIF orientation


def test_a_polyp_frame_with_an_exif_orientation_pairs_with_its_displayed_mask(tmp_path: Path) -> None:
    """The frame is stored 20 x 40 (h x w) with tag 6 (shown 40 x 20); its mask is drawn on what a viewer shows."""
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.full((20, 40, 3), 128, dtype=np.uint8)).save(tmp_path / "images" / "f0.jpg", exif=exif)
    mask = np.zeros((40, 20), dtype=np.uint8)
    mask[25:35, 5:15] = 255  # in the displayed frame: x 5..15, y 25..35
    Image.fromarray(mask).save(tmp_path / "masks" / "f0.png")
    frames, report = kvasir_preflight(tmp_path)
    assert report.exif_oriented == ["f0"] and not report.mask_size_mismatch
    assert [[round(v) for v in box] for box in frames[0]["box"]] == [[5, 25, 15, 35]]
    assert "exif oriented                  1   e.g. f0" in report.summary()


# ------------------------------------------------------------------------------ case 20: --decode true


@pytest.mark.parametrize(("word", "decoded"), [("true", 8), ("False", 0), ("null", 0)])
def test_decode_given_as_a_command_line_word(tmp_path: Path, word: str, decoded: int) -> None:
    data = prepare_msi_datalists(_folders(tmp_path / "d", patients=2), tmp_path / "c", classes=BINARY, decode=word)
    assert data.report.decoded == decoded  # PNG tiles: decoded only when asked


def test_a_bad_decode_value_names_the_key_and_the_words(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"`decode` must be true \(decode every tile\), false .* got 'yes'"):
        prepare_msi_datalists(_folders(tmp_path / "d", patients=2), tmp_path / "c", classes=BINARY, decode="yes")


def test_the_polyp_training_loader_drops_a_last_batch_of_one_too(polyp_bundle, tmp_path: Path) -> None:
    tiny = {"preset": "tiny", "image_size": 64, "demo_images": 16, "demo_image_size": 80}
    workflow = polyp_bundle.workflow("train.json", "train", run=False, bundle_root=str(tmp_path), **tiny)
    train = len(workflow.parser.get_parsed_content("data").train)
    for batch_size in (train - 1, train - 2):  # a remainder of 1, then of 2
        workflow.parser["batch_size"] = batch_size
        loader = workflow.parser.get_parsed_content("train#dataloader", instantiate=True, lazy=False)
        assert loader.drop_last is (batch_size == train - 1)
        assert len(loader) == 1 if batch_size == train - 1 else len(loader) == 2
