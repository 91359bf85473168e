"""The polyp bundle end to end at tiny sizes (train, resume, evaluate, inference, export, DDP), its data factory and
its detection handlers; a smoke run on real Kvasir-SEG frames when ``../shared/data/kvasir-seg`` exists."""

from __future__ import annotations

import csv
import inspect
import json
import logging
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from monai.bundle import ckpt_export, verify_metadata
from PIL import Image

from monai_kdml.apps.polyp import (
    FrameLayout,
    RetinaNetHeadEnsemble,
    detection_collate,
    get_preset,
    make_polyp_demo,
    polyp_inference_transforms,
    preset_from_dict,
)
from monai_kdml.apps.polyp.datalists import polyp_inference_datalist, prepare_polyp_datalists
from monai_kdml.apps.polyp.handlers import (
    DetectionPredictionWriter,
    DetectionSummaryWriter,
    FuseDetectionsd,
    decollate_detections,
)
from monai_kdml.data.evaluation import external_report_name
from monai_kdml.keys import network_names

METRICS = ("map", "ap50", "ap75", "mar", "sens_0.5fp", "sens_1fp", "sens_2fp")
TINY = {"preset": "tiny", "image_size": 64, "demo_images": 16, "demo_image_size": 80, "batch_size": 4}

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def trained(polyp_bundle, module_tmp) -> Path:
    """One tiny kdml training run of the demo bundle (1 epoch) in a temporary bundle_root."""
    root = module_tmp("polyp_bundle")
    workflow = polyp_bundle.workflow("train.json", "train", bundle_root=str(root), max_epochs=1, **TINY)
    assert workflow.parser.get_parsed_content("train#trainer").state.epoch == 1
    return root


def test_train_writes_checkpoints_metrics_and_tensorboard(trained: Path, caplog) -> None:
    models = trained / "models"
    assert {"model.pt", "best_networks.pt", "checkpoint_final.pt"} <= {p.name for p in models.iterdir()}
    history = read_csv(trained / "eval" / "metrics_history.csv")
    assert [row["epoch"] for row in history] == ["1"]
    assert {f"{n}_{m}" for n in network_names(2) for m in METRICS} <= set(history[0])
    # model.pt is the flat state_dict of the deployable ensemble of the two students
    state = torch.load(models / "model.pt", weights_only=True)
    ensemble = RetinaNetHeadEnsemble(get_preset("tiny").build_students(2))
    ensemble.load_state_dict(state)
    best = torch.load(models / "best_networks.pt", weights_only=True)
    assert set(best) == {"teacher", "students"} and len(best["students"]) == 2
    full = torch.load(models / "checkpoint_final.pt", weights_only=True)
    assert {"teacher", "students", "optimizers", "lr_schedulers", "trainer"} <= set(full)

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags: dict[str, list[str]] = {"images": [], "scalars": []}
    for events in (trained / "eval").glob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events), size_guidance={"images": 0, "scalars": 0})
        acc.Reload()
        for kind in tags:
            tags[kind] += acc.Tags()[kind]
    assert {"val_boxes/ensemble/0", "val_boxes/teacher/0"} <= set(tags["images"])
    grouped = {"train/kd_cls/student_0", "train/ml_box/student_1", "train/loss/teacher", "val/map/ensemble"}
    assert grouped | {"val/sens_1fp/student_1", "lr/student_0", "warmup/kd_weight"} <= set(tags["scalars"])
    assert not any(tag.startswith(("loss_", "ensemble_", "kd_")) for tag in tags["scalars"])  # no flat tags


def test_training_resumes_from_the_last_checkpoint(polyp_bundle, trained: Path, tmp_path: Path) -> None:
    import shutil

    root = tmp_path / "resumed"
    shutil.copytree(trained, root)
    workflow = polyp_bundle.workflow("train.json", "train", bundle_root=str(root), max_epochs=2, resume=True, **TINY)
    state = workflow.parser.get_parsed_content("train#trainer").state
    per_epoch = len(workflow.parser.get_parsed_content("train#dataloader"))
    assert (state.epoch, state.iteration) == (2, 2 * per_epoch)  # continued, not restarted
    assert [row["epoch"] for row in read_csv(root / "eval" / "metrics_history.csv")] == ["1", "2"]


def test_frozen_teacher_is_loaded_and_never_updated(polyp_bundle, trained: Path, tmp_path: Path) -> None:
    ckpt = trained / "models" / "best_networks.pt"
    override = {"bundle_root": str(tmp_path), "teacher_mode": "frozen", "teacher_weights": str(ckpt), "mode": "kd"}
    workflow = polyp_bundle.workflow("train.json", "train", max_epochs=1, **{**TINY, **override})
    teacher = workflow.parser.get_parsed_content("teacher").state_dict()
    saved = torch.load(ckpt, weights_only=True)["teacher"]
    assert all(torch.equal(teacher[k].cpu(), saved[k]) for k in saved)  # BatchNorm statistics included
    assert len(workflow.parser.get_parsed_content("optimizers")) == 2  # the students' only


def test_evaluate_reports_every_network_and_wbf_on_the_test_split(polyp_bundle, trained: Path, caplog) -> None:
    caplog.set_level(logging.INFO)
    workflow = polyp_bundle.workflow(["train.json", "evaluate.json"], "infer", bundle_root=str(trained), **TINY)
    summary = caplog.text[caplog.text.index("Evaluation finished in") :]  # the last lines: where the report is
    assert re.search(rf"summary table +{trained}/eval/test/summary.md", summary)
    assert "predict a folder of frames" in summary
    metrics = workflow.parser.get_parsed_content("validate#evaluator").state.metrics
    names = [*network_names(2), "wbf"]
    assert {f"{n}_{m}" for n in names for m in METRICS} <= set(metrics)
    rows = read_csv(trained / "eval" / "test" / "summary.csv")
    assert [row["network"] for row in rows] == names
    sizes = workflow.parser.get_parsed_content("compression")
    assert rows[0]["params_M"] == f"{sizes['teacher_params'] / 1e6:.3f}" and sizes["param_ratio"] > 1
    for row in rows:
        for metric in METRICS:
            value = metrics[f"{row['network']}_{metric}"]
            assert row[metric] == ("-" if np.isnan(value) else f"{value:.4f}")
    markdown = (trained / "eval" / "test" / "summary.md").read_text()
    assert "SYNTHETIC DEMO" in markdown and "| wbf |" in markdown
    assert len(workflow.parser.get_parsed_content("data").test) == 2


def test_inference_writes_boxes_in_original_pixels_and_overlays(
    polyp_bundle, trained: Path, tmp_path: Path, caplog
) -> None:
    caplog.set_level(logging.INFO)
    frames = tmp_path / "frames"
    frames.mkdir()
    demo = next((trained / ".cache").glob("polyp_demo_*")) / "images"
    for src in sorted(demo.iterdir())[:3]:
        (frames / src.name).write_bytes(src.read_bytes())
    (frames / "broken.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "pred"
    override = {"bundle_root": str(trained), "dataset_dir": str(frames), "output_dir": str(out), "overlay": True}
    polyp_bundle.workflow("inference.json", "infer", output_score_thresh=0.0, **override)  # nothing repeated
    assert "1 of 4 frames" in caplog.text and "broken" in caplog.text
    assert re.search(rf"detections of every frame +{out}/predictions.json", caplog.text)  # the run's last lines
    combined = json.loads((out / "predictions.json").read_text())
    assert len(combined) == 3
    for name, entry in combined.items():
        assert json.loads((out / "frames" / f"{name}.json").read_text()) == entry
        with Image.open(entry["image"]) as img:
            assert (entry["width"], entry["height"]) == img.size
        with Image.open(out / "frames" / f"{name}_overlay.png") as overlay:
            assert overlay.size == (entry["width"], entry["height"])
        for box in entry["bbox"]:
            assert (
                0 <= box["xmin"] <= box["xmax"] <= entry["width"] and 0 <= box["ymin"] <= box["ymax"] <= entry["height"]
            )
            assert box["label"] == "polyp" and 0 <= box["score"] <= 1


@pytest.mark.filterwarnings("ignore")
def test_exported_torchscript_gives_the_ensemble_head_outputs(polyp_bundle, trained: Path, tmp_path: Path) -> None:
    target = tmp_path / "model.ts"
    ckpt_export(
        "network_def",
        filepath=str(target),
        ckpt_file=str(trained / "models" / "model.pt"),
        meta_file=str(polyp_bundle.dir / "metadata.json"),
        config_file=str(polyp_bundle.dir / "inference.json"),
        bundle_root=str(trained),  # the record there says which detector and how many students: nothing repeated
    )
    scripted = torch.jit.load(str(target))
    eager = RetinaNetHeadEnsemble(get_preset("tiny").build_students(2)).eval()
    eager.load_state_dict(torch.load(trained / "models" / "model.pt", weights_only=True))
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        want, got = eager(x), scripted.eval()(x)
    for key in ("classification", "box_regression"):
        assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(want[key], got[key], strict=True))


def test_metadata_verifies_offline_against_the_kept_schema(polyp_bundle) -> None:
    verify_metadata(
        meta_file=str(polyp_bundle.dir / "metadata.json"),
        filepath=str(polyp_bundle.dir.parent / "schema/meta_schema_20240725.json"),
    )


def test_two_process_gloo_training(polyp_bundle, tmp_path: Path) -> None:
    args = [f"--{k}={v}" for k, v in {**TINY, "max_epochs": 1, "bundle_root": str(tmp_path)}.items()]
    result = polyp_bundle.cli(*args, config=["train.json", "multi_gpu_train.json"], torchrun=2, timeout=240)
    # 12 training frames, 2 ranks, batch 4: 2 iterations per rank; only rank 0 logs them and writes files
    log = result.stderr + result.stdout
    assert "Epoch: 1/1, Iter: 2/2" in log
    assert (tmp_path / "models" / "model.pt").is_file()
    # rank 0 alone: one table per epoch (losses and detection metrics per network), one end-of-run summary
    assert log.count("  network      loss     cls     box  kd_cls") == 1 and log.count("Training finished in") == 1
    assert re.search(rf"deployed model \(student ensemble\) +{tmp_path}/models/model.pt", log)
    evaluate = next(line for line in log.splitlines() if "evaluate on the test split" in line)
    assert f"--bundle_root {tmp_path}" in evaluate and "--demo_images 16" in evaluate and "multi_gpu" not in evaluate
    assert len({p.name.split(".")[-2] for p in (tmp_path / "eval").glob("events.out.tfevents.*")}) == 1  # one pid
    assert [row["epoch"] for row in read_csv(tmp_path / "eval" / "metrics_history.csv")] == ["1"]


def test_real_kvasir_smoke_run(polyp_bundle, kvasir: Path, tmp_path: Path) -> None:
    workflow = polyp_bundle.workflow(
        "train.json", "train", bundle_root=str(tmp_path), dataset_dir=str(kvasir), max_images=12, max_epochs=1, **TINY
    )
    data = workflow.parser.get_parsed_content("data")
    assert not data.is_demo and data.report.images_found >= 800
    assert [len(data.train), len(data.val), len(data.test)] == [10, 1, 1]
    assert all(item["box"] for item in data.train)  # every Kvasir-SEG frame shows a polyp
    assert (tmp_path / "models" / "model.pt").is_file()


CLI_TINY = [f"--{k}={v}" for k, v in TINY.items()]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--kd_weight", "-5"], "`kd_weight` must be a finite number >= 0"),
        (["--max_epoch", "1"], "`--max_epoch` is not a key"),
        (["--image_size", "70"], "`image_size` must be a positive multiple of 16"),
        (["--image_size", "0"], "`image_size` must be a positive multiple of 16"),
        (["--key_metric", "ensemble_mAP"], "Did you mean ensemble_map?"),
        (["--dataset_dir", ""], "`dataset_dir` is ''"),
        (["--amp_dtype", "float8"], "`amp_dtype` must be one of ['auto', 'bfloat16', 'float16']"),
        (["--compile", "1"], "`compile` must be true or false"),
    ],
)
def test_bad_override_is_refused_before_training(polyp_bundle, tmp_path: Path, args, message) -> None:
    out = polyp_bundle.cli(f"--bundle_root={tmp_path}", *CLI_TINY, *args, check=False)
    log = out.stdout + out.stderr
    assert out.returncode != 0 and message in log, log[-2000:]
    assert "Epoch: 1/" not in log


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--kd_cls_normalizer", "all"], "`kd_cls_normalizer` must be 'disagreement' or 'sampled', got 'all'"),
        (["--box_kd", "maybe"], "`box_kd` must be true or false, got 'maybe'"),
    ],
)
def test_a_bad_value_is_refused_before_the_teacher_stage(polyp_bundle, tmp_path: Path, args, message) -> None:
    """The detection loss is built in the preflight: its options are checked before stage 1 trains the teacher."""
    out = polyp_bundle.cli(f"--bundle_root={tmp_path / 'run'}", *CLI_TINY, *args, check=False, bundle_defaults=True)
    log = out.stdout + out.stderr
    assert out.returncode != 0 and f"monai-kdml: ValueError: {message}" in log, log[-2000:]
    assert "Teacher stage 1" not in log and not (tmp_path / "run").exists()


def test_record_describes_the_trained_detector_and_contradictions_are_refused(polyp_bundle, trained: Path) -> None:
    record = json.loads((trained / "models" / "network.json").read_text())
    assert record["preset"] == "tiny" and record["num_students"] == 2 and record["image_size"] == 64
    assert preset_from_dict(record["detector"]) == get_preset("tiny")
    with pytest.raises(RuntimeError) as error:  # MONAI wraps what an expression raises
        polyp_bundle.workflow(["train.json", "evaluate.json"], "infer", bundle_root=str(trained), num_students=3)
    assert "`num_students`: trained with 2, configured 3" in str(error.value.__cause__)
    with pytest.raises(RuntimeError) as error:
        polyp_bundle.workflow("train.json", "train", bundle_root=str(trained), max_epochs=1, **TINY)
    assert isinstance(error.value.__cause__, FileExistsError) and "--resume true" in str(error.value.__cause__)


def test_external_cohort_in_the_generic_layout_is_scored_whole(polyp_bundle, trained: Path, tmp_path: Path) -> None:
    cohort = make_polyp_demo(tmp_path / "cvc", 5, image_size=64, seed=99)  # frames + masks; boxes from the masks
    polyp_bundle.workflow(
        ["train.json", "evaluate.json"], "infer", bundle_root=str(trained), test_dir=str(cohort),
        test_boxes_file=None, **TINY,
    )  # fmt: skip
    report = trained / "eval" / external_report_name(tmp_path / "cvc")
    markdown = (report / "summary.md").read_text()
    assert "EXTERNAL cohort" in markdown and "5 frames of 5 read, 0 skipped" in markdown
    assert [row["network"] for row in read_csv(report / "summary.csv")][-1] == "wbf"


def test_factory_defaults_equal_the_bundle_demo_settings(polyp_bundle) -> None:
    config = json.loads((polyp_bundle.dir / "train.json").read_text())
    defaults = inspect.signature(prepare_polyp_datalists).parameters
    for key in (
        "demo_images",
        "demo_image_size",
        "val_fraction",
        "test_fraction",
        "seed",
        "max_images",
        "max_image_pixels",
    ):
        assert defaults[key].default == config[key], key
    layout = FrameLayout()
    for key in ("images_dir", "masks_dir", "boxes_file", "min_box_size", "keep_empty"):
        assert getattr(layout, key) == config[key], key
    assert list(layout.classes) == config["classes"]


def test_prepare_polyp_datalists_demo_split_and_subset(tmp_path: Path, caplog) -> None:
    data = prepare_polyp_datalists(
        None, tmp_path, val_fraction=0.2, test_fraction=0.2, demo_images=10, demo_image_size=64
    )
    assert data.is_demo and "SYNTHETIC" in caplog.text
    assert [len(data.train), len(data.val), len(data.test)] == [6, 2, 2]
    ids = [{item["id"] for item in part} for part in (data.train, data.val, data.test)]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    again = prepare_polyp_datalists(
        None, tmp_path, val_fraction=0.2, test_fraction=0.2, demo_images=10, demo_image_size=64
    )
    assert again.test == data.test  # seeded
    subset = prepare_polyp_datalists(data.root, tmp_path, max_images=5)
    assert len(subset.train + subset.val + subset.test) == 5 and not subset.is_demo
    with pytest.raises(ValueError, match="max_images"):
        prepare_polyp_datalists(data.root, tmp_path, max_images=2)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        prepare_polyp_datalists(tmp_path / "missing", tmp_path)


def test_inference_datalist_reads_kvasir_roots_and_rejects_empty_folders(tmp_path: Path) -> None:
    data = prepare_polyp_datalists(None, tmp_path, demo_images=4, demo_image_size=64)
    items = polyp_inference_datalist(data.root)  # a Kvasir-style root: read through images/
    assert [item["id"] for item in items] == [f"demo_{i:04d}" for i in range(4)]
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no frame"):
        polyp_inference_datalist(tmp_path / "empty")
    with pytest.raises(ValueError, match="cache_dir"):
        polyp_inference_datalist(None)


def _detections(boxes: list[list[float]], scores: list[float]) -> dict[str, torch.Tensor]:
    return {
        "box": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "label": torch.zeros(len(boxes), dtype=torch.long),
        "label_scores": torch.tensor(scores, dtype=torch.float32),
    }


def test_decollate_keeps_each_images_boxes_whole_even_when_empty() -> None:
    batch = {
        "image": torch.rand(2, 3, 8, 8),
        "pred": [_detections([[0, 0, 4, 4], [1, 1, 5, 5]], [0.9, 0.8]), _detections([], [])],
        "loss": torch.tensor(1.5),
        "id": ("a", "b"),
    }
    samples = decollate_detections(batch)
    assert len(samples) == 2 and samples[1]["id"] == "b" and samples[0]["loss"] == 1.5
    assert samples[0]["pred"]["box"].shape == (2, 4) and samples[1]["pred"]["box"].shape == (0, 4)
    assert samples[0]["image"].shape == (3, 8, 8)
    assert decollate_detections(samples) is samples
    with pytest.raises(ValueError, match="`pred` holds 1 items for 2 images"):
        decollate_detections({"image": torch.rand(2, 3, 4, 4), "pred": [{}]})


def test_fuse_detectionsd_adds_the_wbf_of_the_students_per_image() -> None:
    data = {
        "pred_student_0": [_detections([[0, 0, 10, 10]], [0.9]), _detections([], [])],
        "pred_student_1": [_detections([[2, 0, 12, 10]], [0.3]), _detections([], [])],
    }
    out = FuseDetectionsd(["pred_student_0", "pred_student_1"], output_key="pred_wbf", iou_threshold=0.5)(data)
    fused = out["pred_wbf"]
    # one cluster: coordinates weighted by score, score = mean * min(2, K) / K with K = 2
    want = (0.9 * torch.tensor([0.0, 0, 10, 10]) + 0.3 * torch.tensor([2.0, 0, 12, 10])) / 1.2
    assert torch.allclose(fused[0]["box"][0], want) and fused[0]["label_scores"].tolist() == pytest.approx([0.6])
    assert fused[1]["box"].shape == (0, 4)


def test_prediction_writer_maps_boxes_back_to_original_pixels(tmp_path: Path) -> None:
    frame = tmp_path / "frame.png"
    Image.fromarray(np.full((60, 120, 3), 128, np.uint8)).save(frame)  # W = 120, H = 60: scale 120 / 40 = 3
    sample = polyp_inference_transforms(40)({"image": str(frame), "id": "frame"})
    batch = decollate_detections(detection_collate([sample]))
    output = [{"pred": _detections([[4, 2, 20, 10], [0, 0, 2, 2]], [0.8, 0.1])}]
    writer = DetectionPredictionWriter(tmp_path / "out", score_thresh=0.5)
    engine = SimpleNamespace(state=SimpleNamespace(batch=batch, output=output))
    writer(engine)
    writer.write_all()
    entry = json.loads((tmp_path / "out" / "frames" / "frame.json").read_text())
    assert (entry["width"], entry["height"]) == (120, 60) and len(entry["bbox"]) == 1  # 0.1 < score_thresh
    box = entry["bbox"][0]
    assert [box[k] for k in ("xmin", "ymin", "xmax", "ymax")] == pytest.approx([12, 6, 60, 30])
    assert json.loads((tmp_path / "out" / "predictions.json").read_text()) == {"frame": entry}


def test_summary_writer_tables_networks_by_metric_and_size(tmp_path: Path) -> None:
    writer = DetectionSummaryWriter(tmp_path, ["teacher", "ensemble"], metrics=["map", "ap50"], title="T")
    metrics = {"teacher_map": 0.25, "teacher_ap50": float("nan"), "ensemble_map": 0.5}
    writer(SimpleNamespace(state=SimpleNamespace(metrics=metrics)))
    assert read_csv(tmp_path / "summary.csv") == [
        {"network": "teacher", "map": "0.2500", "ap50": "-"},
        {"network": "ensemble", "map": "0.5000", "ap50": "-"},
    ]
    assert (tmp_path / "summary.md").read_text().splitlines()[2:5] == [
        "| network | map | ap50 |",
        "|---|---|---|",
        "| teacher | 0.2500 | - |",
    ]
    sizes = {"teacher_params": 2e6, "teacher_macs": 3e9, "ensemble_params": 5e5, "ensemble_macs": 1.5e9}
    with_sizes = DetectionSummaryWriter(tmp_path, ["teacher", "wbf"], metrics=["map"], compression=sizes)
    assert with_sizes.table(metrics) == [
        ["network", "map", "params_M", "GMACs"],
        ["teacher", "0.2500", "2.000", "3.000"],
        ["wbf", "-", "0.500", "1.500"],  # fuses the ensemble's students: their size
    ]


def test_fast_path_options_train_the_detector(polyp_bundle, tmp_path: Path) -> None:
    """channels_last RetinaNets train and validate (same code path as on a GPU, where it pays); ``amp_dtype``
    is accepted on a CPU, where amp stays off."""
    workflow = polyp_bundle.workflow(
        "train.json", "train", bundle_root=str(tmp_path), max_epochs=1, channels_last=True, amp=True,
        amp_dtype="bfloat16", **TINY,
    )  # fmt: skip
    trainer = workflow.parser.get_parsed_content("train#trainer")
    assert trainer.state.epoch == 1 and trainer.channels_last and not trainer.use_amp
    conv = next(m for m in trainer.students[0].modules() if isinstance(m, torch.nn.Conv2d) and m.in_channels > 1)
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert (tmp_path / "models" / "model.pt").is_file()
