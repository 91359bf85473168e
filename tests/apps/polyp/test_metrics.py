"""Detection metrics on hand-built cases whose AP, recall and sensitivity at k FP/image follow from the definitions.

Conventions used for the expected values:
- COCO AP samples precision (made non-increasing in recall) at the 101 recall levels 0, 0.01, ..., 1, and counts 0
  for levels above the final recall.
- Sensitivity at f FP/image: the highest share of ground-truth boxes found at a score threshold whose false
  positives per image are at most f (the FROC curve only rises at thresholds that add a true positive).
"""

from __future__ import annotations

import logging
import math

import pytest
import torch
from ignite.engine import Engine
from monai.engines import Evaluator
from monai.handlers import MetricsSaver

from monai_kdml.apps.polyp import DetectionMetrics, DetectionOutput, detection_metrics
from monai_kdml.keys import network_names

GT_A = [[10.0, 10.0, 30.0, 30.0], [50.0, 50.0, 80.0, 70.0]]
GT_B = [[5.0, 40.0, 25.0, 60.0]]
FAR = [200.0, 200.0, 220.0, 220.0]  # overlaps nothing


def image(pred_boxes, pred_scores, gt_boxes, key="pred") -> dict:
    """One decollated sample as the evaluator publishes it."""
    return {
        key: {
            "box": torch.tensor(pred_boxes, dtype=torch.float32).reshape(-1, 4),
            "label": torch.zeros(len(pred_boxes), dtype=torch.long),
            "label_scores": torch.tensor(pred_scores, dtype=torch.float32),
        },
        "label": {
            "box": torch.tensor(gt_boxes, dtype=torch.float32).reshape(-1, 4),
            "label": torch.zeros(len(gt_boxes), dtype=torch.long),
        },
    }


def evaluate(samples: list[dict], batch_size: int = 2, **kwargs) -> dict[str, float]:
    """Run one epoch of an ignite Engine over the samples with the ensemble's metric attached."""
    metric = DetectionMetrics("ensemble", output_transform=DetectionOutput("pred"), **kwargs)
    engine = Engine(lambda e, batch: batch)
    metric.attach(engine, "ensemble_map")
    batches = [samples[i : i + batch_size] for i in range(0, len(samples), batch_size)]
    return engine.run(batches).metrics


def test_perfect_detections_score_one_everywhere():
    samples = [image(GT_A, [0.9, 0.8], GT_A), image(GT_B, [0.7], GT_B)]
    results = evaluate(samples)
    expected = ["map", "ap50", "ap75", "mar", "sens_0.5fp", "sens_1fp", "sens_2fp"]
    assert set(results) == {f"ensemble_{name}" for name in expected}
    assert all(value == pytest.approx(1.0) for value in results.values())


def test_no_detections_score_zero():
    results = evaluate([image([], [], GT_A), image([], [], GT_B)])
    assert all(value == 0.0 for value in results.values())


def test_one_true_and_one_false_positive_per_image():
    # 2 images x 2 ground-truth boxes; each image: one exact hit (0.9) and one miss elsewhere (0.5)
    samples = [image([GT_A[0], FAR], [0.9, 0.5], GT_A), image([GT_A[1], FAR], [0.9, 0.5], GT_A)]
    results = evaluate(samples)
    recall = 2 / 4
    assert results["ensemble_mar"] == pytest.approx(recall)  # the hits are exact, so every IoU threshold agrees
    # precision is 1 up to recall 0.5 (both hits rank first): recall levels 0, 0.01, ..., 0.5 -> 51 of 101
    assert results["ensemble_ap50"] == pytest.approx(51 / 101)
    assert results["ensemble_map"] == pytest.approx(51 / 101)
    # at threshold 0.5: 1 FP per image and 2 of 4 boxes found; at 0.9: 0 FP and still 2 of 4
    for fp_rate in ("0.5", "1", "2"):
        assert results[f"ensemble_sens_{fp_rate}fp"] == pytest.approx(recall)


def test_images_without_ground_truth_add_false_positives_per_image():
    # image 1: one box found (0.9); image 2: no ground truth, one false positive scored higher (0.95)
    samples = [image([GT_B[0]], [0.9], GT_B), image([FAR], [0.95], [])]
    results = evaluate(samples, froc_fps=(0.25, 0.5, 1.0))
    # ranked FP then TP: precision 1/2 at the only recall level reached (1), so AP = 0.5 at every IoU
    assert results["ensemble_ap50"] == pytest.approx(0.5) and results["ensemble_map"] == pytest.approx(0.5)
    assert results["ensemble_mar"] == pytest.approx(1.0)
    # any threshold that finds the box also keeps the FP: 1 FP over 2 images = 0.5 FP/image
    assert results["ensemble_sens_0.25fp"] == pytest.approx(0.0)
    assert results["ensemble_sens_0.5fp"] == pytest.approx(1.0)
    assert results["ensemble_sens_1fp"] == pytest.approx(1.0)


def test_matching_rule_iou_half_and_each_box_once():
    gt = [[0.0, 0.0, 10.0, 10.0]]
    half_width = [[0.0, 0.0, 5.0, 10.0]]  # IoU 0.5 exactly: a hit at IoU >= 0.5
    samples = [image(half_width, [0.8], gt), image([gt[0], gt[0]], [0.9, 0.6], gt)]  # duplicate: one TP, one FP
    results = evaluate(samples, froc_fps=(0.4, 0.5))
    # operating points: threshold 0.9 -> 1 of 2 boxes, 0 FP; 0.8 -> 2 of 2, 0 FP; 0.6 -> 2 of 2, 1 FP (0.5/image)
    assert results["ensemble_sens_0.4fp"] == pytest.approx(1.0)
    assert results["ensemble_ap50"] == pytest.approx(1.0)  # both hits rank above the duplicate
    # at IoU 0.75 the half-width box misses: ranked TP, FP, FP with 2 boxes -> precision 1 up to recall 0.5
    assert results["ensemble_ap75"] == pytest.approx(51 / 101)
    just_below = [[0.0, 0.0, 4.9, 10.0]]  # IoU 0.49: a false positive and a missed box
    missed = evaluate([image(just_below, [0.8], gt)])
    assert missed["ensemble_ap50"] == 0.0 and missed["ensemble_sens_2fp"] == 0.0


def test_mixed_batches_give_the_same_result_as_one_batch():
    samples = [
        image([GT_A[0], FAR], [0.9, 0.7], GT_A),
        image([], [], []),
        image([GT_B[0]], [0.4], GT_B),
        image([FAR, FAR], [0.3, 0.2], []),
    ]
    assert evaluate(samples, batch_size=1) == pytest.approx(evaluate(samples, batch_size=4))


def test_no_ground_truth_at_all_gives_nan_with_a_warning(caplog):
    caplog.set_level(logging.WARNING, logger="monai_kdml.apps.polyp.metrics")
    results = evaluate([image([FAR], [0.9], []), image([], [], [])])
    assert all(math.isnan(value) for value in results.values())
    assert "no ground-truth box" in caplog.text


def test_key_metric_and_metrics_saver_in_a_monai_evaluator(tmp_path):
    names = network_names(1)
    metrics = detection_metrics(names)
    assert list(metrics) == [f"{name}_map" for name in names]
    samples = []
    for _ in range(3):
        sample = image([GT_A[0], FAR], [0.9, 0.5], GT_A)
        for name in names[:-1]:  # teacher and student_0 predict nothing
            sample[f"pred_{name}"] = image([], [], [])["pred"]
        samples.append(sample)
    evaluator = Evaluator(
        device="cpu",
        val_data_loader=[samples[:2], samples[2:]],
        iteration_update=lambda engine, batch: batch,
        key_val_metric={"ensemble_map": metrics.pop("ensemble_map")},
        additional_metrics=metrics,
        val_handlers=[MetricsSaver(save_dir=str(tmp_path))],
        decollate=False,  # detection outputs are lists of per-image dicts already
    )
    evaluator.run()
    results = evaluator.state.metrics
    assert len(results) == 7 * len(names)
    assert evaluator.state.best_metric == results["ensemble_map"] == pytest.approx(51 / 101)
    assert results["teacher_map"] == 0.0 and results["student_0_sens_1fp"] == 0.0
    saved = dict(line.split(",") for line in (tmp_path / "metrics.csv").read_text().splitlines())
    assert set(saved) == set(results)


def test_bad_inputs_raise_clear_errors():
    metric = DetectionMetrics("teacher")
    with pytest.raises(ValueError, match=r"attach .* as 'teacher_map'"):
        metric.attach(Engine(lambda e, b: b), "teacher")
    with pytest.raises(ValueError, match=r"class indices in \[0, 1\)"):
        bad = image(GT_B, [0.9], GT_B)
        bad["label"]["label"] = torch.tensor([1])
        metric.update(DetectionOutput("pred")([bad]))
    with pytest.raises(ValueError, match="missing \\['label_scores'\\]"):
        DetectionOutput("pred")([{"pred": {"box": torch.zeros(0, 4), "label": torch.zeros(0)}, "label": {}}])
    with pytest.raises(ValueError, match=r"sample 0 'pred'.*min corner first"):
        DetectionOutput("pred")([image([[30.0, 10.0, 10.0, 30.0]], [0.9], GT_B)])
    with pytest.raises(ValueError, match="list of per-sample dicts"):
        DetectionOutput("pred")({"pred": {}})
