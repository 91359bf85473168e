"""Student ensemble (averaged heads, weighted box fusion), RetinaNetInferer, and one end-to-end KD/ML step."""

from __future__ import annotations

import io

import pytest
import torch
from monai.apps.detection.networks.retinanet_detector import RetinaNetDetector

from monai_kdml.apps.polyp import (
    DetectionKDMLLoss,
    DetectorSpec,
    RetinaNetGTLoss,
    RetinaNetHeadEnsemble,
    RetinaNetInferer,
    average_head_outputs,
    build_retinanet,
    fuse_detections,
    get_preset,
    weighted_box_fusion,
)

SPEC = DetectorSpec(base_anchor_shapes=((8, 8), (16, 16)))


def _students(num: int = 2, spec: DetectorSpec = SPEC) -> list[torch.nn.Module]:
    torch.manual_seed(0)
    return [build_retinanet(spec, "resnet10", fpn_channels=8, widen_factor=0.125).eval() for _ in range(num)]


def test_average_head_outputs_is_the_level_wise_mean():
    a = {"c": [torch.tensor([1.0, 3.0]), torch.tensor([[2.0]])], "b": [torch.tensor([0.0, -2.0])]}
    b = {"c": [torch.tensor([3.0, 5.0]), torch.tensor([[4.0]])], "b": [torch.tensor([1.0, 2.0])]}
    out = average_head_outputs([a, b])
    assert torch.equal(out["c"][0], torch.tensor([2.0, 4.0])) and torch.equal(out["c"][1], torch.tensor([[3.0]]))
    assert torch.equal(out["b"][0], torch.tensor([0.5, 0.0]))
    with pytest.raises(ValueError, match="at least one"):
        average_head_outputs([])


def test_ensemble_exposes_detector_attributes_and_averages_students():
    students = _students(3)
    ensemble = RetinaNetHeadEnsemble(students).eval()
    for attr in ("spatial_dims", "num_classes", "cls_key", "box_reg_key", "num_anchors"):
        assert getattr(ensemble, attr) == getattr(students[0], attr)
    assert ensemble.size_divisible == tuple(students[0].size_divisible)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        out, per_student = ensemble(x), [s(x) for s in students]
    for key in (ensemble.cls_key, ensemble.box_reg_key):
        for level, got in enumerate(out[key]):
            want = sum(p[key][level] for p in per_student) / 3
            assert torch.allclose(got, want, atol=1e-6)


def test_ensemble_rejects_misaligned_or_missing_students():
    other = build_retinanet(DetectorSpec(base_anchor_shapes=((8, 8),)), "resnet10", 8, 0.125)
    with pytest.raises(ValueError, match="num_anchors"):
        RetinaNetHeadEnsemble([*_students(1), other])
    with pytest.raises(ValueError, match="at least one"):
        RetinaNetHeadEnsemble([])


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # TorchScript warns in recent torch, still works
def test_ensemble_scripts_round_trips_and_plugs_into_retinanet_detector():
    ensemble = RetinaNetHeadEnsemble(_students(2)).eval()
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(ensemble), buffer)
    buffer.seek(0)
    loaded = torch.jit.load(buffer)
    assert (loaded.num_anchors, loaded.cls_key, loaded.size_divisible) == (2, "classification", (16, 16))
    x = torch.rand(1, 3, 32, 48)
    with torch.no_grad():
        eager, scripted = ensemble(x), loaded(x)
    assert all(
        torch.allclose(a, b, atol=1e-6)
        for a, b in zip(eager["box_regression"], scripted["box_regression"], strict=True)
    )
    detector = RetinaNetDetector(network=loaded, anchor_generator=SPEC.anchor_generator()).eval()
    detector.set_box_selector_parameters(score_thresh=0.0, detections_per_img=7)
    with torch.no_grad():
        result = detector(x)
    assert result[0]["boxes"].shape == (7, 4)


def test_weighted_box_fusion_averages_overlapping_boxes_by_score():
    boxes = [torch.tensor([[0.0, 0.0, 10.0, 10.0], [50.0, 50.0, 60.0, 60.0]]), torch.tensor([[1.0, 1.0, 11.0, 11.0]])]
    scores = [torch.tensor([0.9, 0.4]), torch.tensor([0.6])]
    labels = [torch.tensor([0, 0]), torch.tensor([0])]
    fused_boxes, fused_scores, fused_labels = weighted_box_fusion(boxes, scores, labels, iou_threshold=0.5)
    # cluster {0.9 @ [0,0,10,10], 0.6 @ [1,1,11,11]}: coordinates weighted by score, score mean * min(2, K=2) / 2
    want_box = (0.9 * torch.tensor([0.0, 0.0, 10.0, 10.0]) + 0.6 * torch.tensor([1.0, 1.0, 11.0, 11.0])) / 1.5
    assert torch.allclose(fused_boxes[0], want_box)
    assert fused_scores.tolist() == pytest.approx([0.75, 0.4 * 1 / 2])
    assert torch.equal(fused_boxes[1], torch.tensor([50.0, 50.0, 60.0, 60.0])) and fused_labels.tolist() == [0, 0]


def test_weighted_box_fusion_keeps_labels_apart_skips_low_scores_and_handles_nothing():
    boxes = [torch.tensor([[0.0, 0.0, 10.0, 10.0]]), torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]])]
    scores, labels = [torch.tensor([0.8]), torch.tensor([0.8, 0.01])], [torch.tensor([0]), torch.tensor([1, 1])]
    _, fused_scores, fused_labels = weighted_box_fusion(boxes, scores, labels, skip_score=0.05)
    assert sorted(fused_labels.tolist()) == [0, 1] and fused_scores.tolist() == pytest.approx([0.4, 0.4])
    empty = weighted_box_fusion([torch.zeros(0, 4)] * 2, [torch.zeros(0)] * 2, [torch.zeros(0, dtype=torch.long)] * 2)
    assert [t.shape[0] for t in empty] == [0, 0, 0] and empty[0].shape == (0, 4)
    with pytest.raises(ValueError, match="from >= 1 model"):
        weighted_box_fusion([], [], [])


def test_fuse_detections_works_image_by_image():
    det = {"box": torch.tensor([[0.0, 0.0, 4.0, 4.0]]), "label": torch.tensor([0]), "label_scores": torch.tensor([0.5])}
    none = {"box": torch.zeros(0, 4), "label": torch.zeros(0, dtype=torch.long), "label_scores": torch.zeros(0)}
    fused = fuse_detections([[det, none], [det, none]])
    assert fused[0]["label_scores"].tolist() == pytest.approx([0.5]) and fused[1]["box"].shape == (0, 4)
    with pytest.raises(ValueError, match="one result per image"):
        fuse_detections([[det], [det, det]])


def test_inferer_returns_capped_thresholded_boxes_and_restores_mode():
    ensemble = RetinaNetHeadEnsemble(_students(2)).train()
    inferer = RetinaNetInferer(SPEC.anchor_generator(), score_thresh=0.0, detections_per_img=5)
    x = torch.rand(2, 3, 30, 30)  # padded to 32 inside the detector; boxes are clipped to 30
    result = inferer(x, ensemble)
    assert len(result) == 2 and set(result[0]) == {"box", "label", "label_scores"}
    assert result[0]["box"].shape == (5, 4) and result[0]["box"].max() <= 30
    assert ensemble.training  # the caller's mode is back
    assert inferer.detector(ensemble) is inferer.detector(ensemble)  # built once per network
    strict = RetinaNetInferer(SPEC.anchor_generator(), score_thresh=0.5)
    scores = torch.cat([r["label_scores"] for r in strict(x, ensemble)])
    assert (scores >= 0.5).all()  # random heads sit at the 0.01 prior: nothing passes
    with pytest.raises(ValueError, match="score_thresh"):
        RetinaNetInferer(SPEC.anchor_generator(), score_thresh=1.5)


def test_end_to_end_kdml_step_then_ensemble_inference():
    torch.manual_seed(0)
    preset = get_preset("tiny")
    teacher, students = preset.build_teacher(), preset.build_students(2)
    networks = [teacher, *students]
    optimizers = [torch.optim.SGD(n.parameters(), lr=0.01) for n in networks]
    loss = DetectionKDMLLoss(RetinaNetGTLoss(preset.spec))
    images = torch.rand(2, 3, 64, 64)
    targets = [
        {"box": torch.tensor([[8.0, 10.0, 40.0, 44.0]]), "label": torch.tensor([0])},
        {"box": torch.tensor([[30.0, 4.0, 60.0, 28.0], [2.0, 40.0, 20.0, 62.0]]), "label": torch.tensor([0, 0])},
    ]
    before = [n.classification_head.cls_logits.weight.detach().clone() for n in networks]
    out = loss([s(images) for s in students], teacher(images), targets)
    (out["loss"] + out["teacher"]["loss"]).backward()
    for optimizer in optimizers:
        optimizer.step()
    values = [v for terms in out["students"].values() for v in terms] + list(out["teacher"].values())
    assert all(torch.isfinite(v) for v in values)
    for network, old in zip(networks, before, strict=True):
        grads = [p.grad for p in network.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
        assert not torch.equal(network.classification_head.cls_logits.weight, old)
    detections = RetinaNetInferer(preset.anchor_generator(), score_thresh=0.0)(images, RetinaNetHeadEnsemble(students))
    assert len(detections) == 2 and all(d["box"].shape[0] > 0 and d["box"].shape[1] == 4 for d in detections)
