"""Any labelled tile layout: class names from the config, class folders by those names, CSV label tables."""

from __future__ import annotations

import csv
import logging
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from monai_kdml.apps.msi import (
    KATHER_CLASS_NAMES,
    PatientAUC,
    PatientScoreOutput,
    check_num_classes,
    evaluation_split,
    prepare_msi_datalists,
    read_label_csv,
    tile_classes,
    tile_datalist,
)
from monai_kdml.apps.msi.kather import DatasetLayoutError, kather_datalist, split_by_patient
from monai_kdml.apps.msi.tiles import TileCheckError, check_tiles

THREE = tile_classes(["normal", "adenoma", "carcinoma"])
BINARY = tile_classes(["benign", "malignant"])


def _tile(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(path)
    return path


def _folders(root: Path, classes: tuple[str, ...], patients: int = 2, tiles: int = 2) -> Path:
    """``root/<class>/`` for each class, ``patients`` TCGA patients of ``tiles`` tiles each, distinct per class."""
    for c, name in enumerate(classes):
        for p in range(patients):
            for t in range(tiles):
                _tile(root / name / f"blk-{chr(65 + t) * 12}-TCGA-AA-{c * 100 + p:04d}-01Z-00-DX1.png", seed=c * 99 + t)
    return root


def _csv(path: Path, rows: list[list[str]], header: tuple[str, ...] = ("path", "label", "patient", "split")) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


# ------------------------------------------------------------------------------------------------ class names


def test_default_classes_are_kathers_and_the_config_form_round_trips():
    kather = tile_classes()
    assert kather.names == ("MSS", "MSI") and kather.positive == 1 and kather.positive_name == "MSI"
    assert [kather.label_of(n) for n in ("MSIMUT", "msih", "MSS", "nonMSIH", "MSI")] == [1, 1, 0, 0, 1]
    assert kather.config() == KATHER_CLASS_NAMES and tile_classes(kather.config()) == kather
    assert THREE.config() == ["normal", "adenoma", "carcinoma"] and THREE.num_classes == 3
    assert THREE.positive_name == "carcinoma" and THREE.title == "normal / adenoma / carcinoma"  # the last by default


@pytest.mark.parametrize(("positive", "index"), [("benign", 0), ("MALIGNANT", 1), (0, 0), ("1", 1), ("tumour", 1)])
def test_positive_class_by_name_alias_or_index(positive, index):
    classes = tile_classes(["benign", ["malignant", "tumour"]], positive)
    assert classes.positive == index
    assert classes.title == ("benign vs malignant" if index == 0 else "malignant vs benign")


@pytest.mark.parametrize(
    ("names", "positive", "message"),
    [
        (["benign"], None, "at least two classes"),
        ({"benign": 0, "malignant": 1}, None, "at least two classes"),
        ("benign,malignant", None, "at least two classes"),
        (["benign", ["malignant", "MSI"], ["msi"]], None, "'msi' is given to class 1 (malignant) and to class 2"),
        (["benign", "1"], None, "looks like a class index"),
        (["benign", "a/b"], None, "cannot be a class folder name"),
        (["benign", 3], None, "`class_names`[1] must be a class name or a list"),
        (["benign", "malignant"], "malign", "Did you mean 'malignant'?"),
        (["benign", "malignant"], 2, "`positive_class` is 2"),
        (["benign", "malignant"], True, "`positive_class` is True"),
    ],
)
def test_bad_class_names_and_positive_class_name_the_key(names, positive, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        tile_classes(names, positive)


def test_a_num_classes_that_contradicts_the_class_names_names_both():
    check_num_classes(THREE, 3)
    with pytest.raises(ValueError, match=r"`num_classes` is 2 but `class_names` lists 3 classes \(normal, adenoma"):
        check_num_classes(THREE, 2)


# ------------------------------------------------------------------------------------------------ class folders


def test_class_folders_named_in_the_config_single_and_split_layouts(tmp_path: Path):
    names = ("normal", "adenoma", "carcinoma")
    single = _folders(tmp_path / "single", names)
    items = kather_datalist(single, classes=THREE)
    assert Counter(i["label"] for i in items) == {0: 4, 1: 4, 2: 4}
    assert all(Path(i["image"]).parent.name == names[i["label"]] for i in items)
    _folders(tmp_path / "kather" / "TISSUE_TRAIN", names)
    _folders(tmp_path / "kather" / "TISSUE_TEST", ("Normal", "ADENOMA", "carcinoma"), patients=1)  # any case
    assert len(kather_datalist(tmp_path / "kather", "train", classes=THREE)) == 12
    test = kather_datalist(tmp_path / "kather", "test", classes=THREE)
    assert Counter(i["label"] for i in test) == {0: 2, 1: 2, 2: 2}


def test_aliases_read_two_namings_of_one_class(tmp_path: Path):
    _folders(tmp_path, ("benign", "tumour"))
    classes = tile_classes(["benign", ["malignant", "tumour", "cancer"]])
    assert {i["label"] for i in kather_datalist(tmp_path, classes=classes) if "tumour" in i["image"]} == {1}


def test_class_folder_errors_name_the_folder_and_the_classes(tmp_path: Path):
    _folders(tmp_path / "a", ("normal", "adenoma", "carcinom"))
    with pytest.raises(DatasetLayoutError, match="missing the carcinoma class folder") as err:
        kather_datalist(tmp_path / "a", classes=THREE)
    message = str(err.value)
    assert "other folders there: carcinom" in message
    assert (
        "If 'carcinom' is the carcinoma class, rename it or give it as an alias: ['carcinoma', 'carcinom']" in message
    )
    _folders(tmp_path / "b", ("normal", "adenoma", "carcinoma", "stroma"))
    with pytest.raises(DatasetLayoutError, match="folder 'stroma' is not a class of `class_names`"):
        kather_datalist(tmp_path / "b", classes=THREE)
    _folders(tmp_path / "c", ("benign", "malignant"))
    with pytest.raises(DatasetLayoutError, match="name them in `class_names`") as err:
        kather_datalist(tmp_path / "c")  # Kather's classes by default: the hint says how to name these
    assert "--class_names \"['benign', 'malignant']\"" in str(err.value)
    _folders(tmp_path / "d", ("normal", "adenoma"))
    (tmp_path / "d" / "carcinoma").mkdir()
    with pytest.raises(DatasetLayoutError, match="carcinoma holds no image tiles"):
        kather_datalist(tmp_path / "d", classes=THREE)
    (tmp_path / "d" / "carcinoma" / "__MACOSX").mkdir()  # archive debris inside a class folder is not a class
    (tmp_path / "e" / "__MACOSX").mkdir(parents=True)
    _folders(tmp_path / "e", ("normal", "adenoma", "carcinoma"))
    assert len(kather_datalist(tmp_path / "e", classes=THREE)) == 12


def test_messages_use_the_configured_class_names(tmp_path: Path, caplog):
    items = [
        {"image": str(_tile(tmp_path / f"{c}_{i}.png")), "label": c, "patient": f"P{c}"}
        for c in (0, 1, 2)
        for i in (0, 1)
    ]
    with caplog.at_level(logging.WARNING):
        split_by_patient(items, val_fraction=0.5, class_names=THREE.names)
    assert "Only one normal patient" in caplog.text and "MSS" not in caplog.text
    (tmp_path / "2_0.png").write_bytes(b"broken")
    (tmp_path / "2_1.png").write_bytes(b"broken")
    with pytest.raises(TileCheckError, match=r"every tile of class \['carcinoma'\] is unusable"):
        check_tiles(items, expected_size=None, max_bad_fraction=None, class_names=THREE.names)


# ------------------------------------------------------------------------------------------------ CSV label tables


def test_csv_paths_labels_patients_and_splits(tmp_path: Path):
    absolute = _tile(tmp_path / "elsewhere" / "x.png")
    rows = [
        ["tiles/a.png", "benign", "P1", "train"],
        ["tiles/b.png", "MALIGNANT", "", "train"],  # no patient cell: from the file name (its stem here)
        ["./tiles/sub/../c.png", "1", "P2", "VAL"],
        [str(absolute), "0", "P3", "test"],
        ["tiles/a.png", "benign", "P1", "train"],  # an identical duplicate is read once
        [],
    ]
    table = read_label_csv(_csv(tmp_path / "data" / "labels.csv", rows), BINARY)
    folder = tmp_path / "data" / "tiles"
    assert table["train"] == [
        {"image": str(folder / "a.png"), "label": 0, "patient": "P1"},
        {"image": str(folder / "b.png"), "label": 1, "patient": "b"},
    ]
    assert table["val"] == [{"image": str(folder / "c.png"), "label": 1, "patient": "P2"}]
    assert table["test"] == [{"image": str(absolute), "label": 0, "patient": "P3"}]


def test_csv_without_split_or_patient_columns_other_delimiters_and_a_bom(tmp_path: Path):
    path = tmp_path / "labels.csv"
    path.write_text("\ufeffImage;Class;notes\nblk-AAAAAAAAAAAA-TCGA-AA-0001-01Z-00-DX1.png;MSIMUT;x\nb.png;MSS;y\n")
    table = read_label_csv(path)
    assert [(Path(i["image"]).name, i["label"], i["patient"]) for i in table["train"]] == [
        ("blk-AAAAAAAAAAAA-TCGA-AA-0001-01Z-00-DX1.png", 1, "TCGA-AA-0001"),
        ("b.png", 0, "b"),
    ]
    assert table["val"] == table["test"] == []
    inference = read_label_csv(_csv(tmp_path / "paths.csv", [["a.png"]], header=("path",)), labels=False)
    assert inference["train"] == [{"image": str(tmp_path / "a.png"), "patient": "a"}]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "is empty"),
        ("path,label\n", "has a header but no rows"),
        ("file,label\na.png,benign\n", r"no `path` column; the header is \['file', 'label'\]"),
        ("path,label\na.png,benign\nb.png,malign\n", r"row 3: label 'malign' is not a class of `class_names` \(benign"),
        ("path,label\na.png,2\n", r"nor a class index in \[0, 2\)"),
        ("path,label,split\na.png,benign,validation\n", "row 2: split 'validation' must be one of train, val, test"),
        ("path,label\n../a.png,benign\n", "row 2: path '../a.png' leads outside the CSV's folder"),
        ("path,label\n,benign\n", "row 2: empty path"),
        ("path,label\na.png,benign\na.png,malignant\n", "rows 2 and 3 list"),
        ("path,label\na.png,benign\n", "no row of class malignant"),
        ("path,image,label\na.png,a.png,benign\n", "several path columns"),
    ],
)
def test_bad_csvs_name_the_file_the_row_and_the_valid_values(tmp_path: Path, content: str, message: str):
    path = tmp_path / "labels.csv"
    path.write_text(content)
    with pytest.raises(ValueError, match=message) as err:
        read_label_csv(path, BINARY)
    assert str(path) in str(err.value)
    if "malign'" in message:
        assert "Did you mean 'malignant'?" in str(err.value)


def test_missing_csv_file(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_label_csv(tmp_path / "nope.csv")


def _csv_data_set(root: Path, patients: int = 8, tiles: int = 3, split: dict[int, str] | None = None) -> Path:
    """Tiles ``tiles/tile_<n>.png`` (no patient id in any name) of ``patients`` patients listed in a CSV."""
    rows = []
    for p in range(patients):
        for t in range(tiles):
            name = f"tiles/tile_{p * tiles + t:03d}.png"
            _tile(root / name, seed=p * 10 + t)
            rows.append([name, BINARY.names[p % 2], f"patient-{p:02d}", (split or {}).get(p, "train")])
    return _csv(root / "labels.csv", rows)


def test_csv_training_split_uses_the_csv_patients_and_counts_missing_or_broken_files(tmp_path: Path):
    labels = _csv_data_set(tmp_path, patients=20, split={18: "test", 19: "test"})
    with labels.open("a", newline="") as f:
        csv.writer(f).writerow(["tiles/gone.png", "benign", "patient-00", "train"])
    (tmp_path / "tiles" / "tile_001.png").write_bytes(b"not a png")
    data = prepare_msi_datalists(labels, tmp_path / "cache", classes=BINARY, expected_size=None, with_test=True)
    assert (data.report.total, data.report.missing, data.report.not_image, data.report.kept) == (55, 1, 1, 53)
    assert "skipped, no such file:          1" in data.report.summary()
    train_patients, val_patients = {t["patient"] for t in data.train}, {t["patient"] for t in data.val}
    assert not train_patients & val_patients and len(train_patients | val_patients) == 18  # 3 tiles per patient
    assert {t["patient"] for t in data.test} == {"patient-18", "patient-19"} and data.classes == BINARY


def test_csv_val_rows_are_the_validation_split_and_must_not_share_patients(tmp_path: Path):
    labels = _csv_data_set(tmp_path, split={6: "val", 7: "val"})
    data = prepare_msi_datalists(labels, tmp_path / "cache", classes=BINARY, expected_size=None)
    assert {t["patient"] for t in data.val} == {"patient-06", "patient-07"} and len(data.train) == 18
    _tile(tmp_path / "tiles" / "extra.png")
    with labels.open("a", newline="") as f:
        csv.writer(f).writerow(["tiles/extra.png", "benign", "patient-06", "train"])
    with pytest.raises(ValueError, match=r"1 patients have both `train` and `val` rows \(e.g. patient-06\)"):
        prepare_msi_datalists(labels, tmp_path / "cache", classes=BINARY, expected_size=None)


def test_csv_refusals_cohort_demo_and_a_class_without_training_tiles(tmp_path: Path):
    labels = _csv_data_set(tmp_path, patients=4, split={1: "test", 3: "test"})  # every malignant row is a test row
    with pytest.raises(ValueError, match="no training tile of class malignant"):
        prepare_msi_datalists(labels, tmp_path / "cache", classes=BINARY, expected_size=None)
    with pytest.raises(ValueError, match="`cohort` \\('CRC'\\) selects <COHORT>_TRAIN folders"):
        prepare_msi_datalists(labels, tmp_path / "cache", classes=BINARY, cohort="CRC")
    with pytest.raises(ValueError, match="the synthetic demo \\(no `dataset_dir`\\) has Kather's MSI/MSS classes"):
        prepare_msi_datalists(None, tmp_path / "cache", classes=BINARY)


def test_external_cohort_and_inference_read_csvs_and_class_folders_by_the_trained_names(tmp_path: Path):
    labels = _csv_data_set(tmp_path / "csv", patients=4)
    data = prepare_msi_datalists(labels, tmp_path / "cache", classes=BINARY, expected_size=None, val_fraction=0.5)
    external = evaluation_split(data, test_dir=_csv_data_set(tmp_path / "ext", patients=2, split={0: "test"}))
    assert len(external.items) == 6 and "6 tiles of 6 read, 0 skipped (0 missing" in external.title
    folder = evaluation_split(data, test_dir=_folders(tmp_path / "folders", ("benign", "malignant")))
    assert Counter(t["label"] for t in folder.items) == {0: 4, 1: 4}
    tiles = tile_datalist(labels)
    assert len(tiles) == 12 and tiles[0]["patient"] == "patient-00" and "label" not in tiles[0]


def test_patient_auc_of_a_csv_groups_tiles_by_the_csv_patient_ids(tmp_path: Path):
    """File names carry no patient id: the CSV's ids make the AUC a patient-level one (not a per-tile one)."""
    labels = _csv_data_set(tmp_path, patients=6, tiles=4)
    items = read_label_csv(labels, BINARY)["train"]
    rng = np.random.default_rng(1)
    logits = torch.tensor(rng.normal(size=(len(items), 2)), dtype=torch.float32)
    output = [
        {"pred_ensemble": z, "label": torch.tensor([i["label"]]), "patient": i["patient"]}
        for z, i in zip(logits, items, strict=True)
    ]
    metric = PatientAUC()
    metric.update(PatientScoreOutput("pred_ensemble", 2, positive_class=1)(output))
    probs = torch.softmax(logits.double(), 1)[:, 1].numpy()
    patients = np.array([i["patient"] for i in items])
    labels_arr = np.array([i["label"] for i in items])
    ids = sorted(set(patients))
    mean = np.array([probs[patients == p].mean() for p in ids])
    truth = np.array([labels_arr[patients == p][0] for p in ids])
    pos, neg = mean[truth == 1], mean[truth == 0]
    want = float(((pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])).mean())
    assert metric.compute() == pytest.approx(want)
    per_tile = (probs[labels_arr == 1][:, None] > probs[labels_arr == 0][None, :]).mean()
    assert want != pytest.approx(per_tile)  # 6 patients, not 24 "patients" named by file stems
