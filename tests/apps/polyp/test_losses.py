"""Detection GT / KD / ML losses: formulas, masks, gradient isolation, switches and empty targets."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from monai.data import MetaTensor

from monai_kdml.apps.polyp.losses import (
    DetectionKDMLLoss,
    RetinaNetGTLoss,
    box_distillation,
    distillation_anchor_mask,
    sigmoid_distillation,
    sigmoid_kl_div,
    teacher_bounded_mask,
)
from monai_kdml.apps.polyp.networks import DetectorSpec, build_retinanet

SPEC = DetectorSpec(base_anchor_shapes=((8, 8), (16, 16)))  # strides 4, 8, 16; 2 anchors per location
CLS, BOX = "classification", "box_regression"


def _sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


def _bernoulli_kl(p_t: float, p_s: float) -> float:
    return p_t * math.log(p_t / p_s) + (1 - p_t) * math.log((1 - p_t) / (1 - p_s))


def _head_output(batch: int = 2, size: int = 32, seed: int = 0) -> dict[str, list[torch.Tensor]]:
    """Leaf head-output tensors laid out by SPEC (1 class, 2 anchors), logits near the RetinaNet prior."""
    gen = torch.Generator().manual_seed(seed)
    cls, box = [], []
    for s in SPEC.strides:
        shape = (batch, SPEC.num_anchors, size // s, size // s)
        cls.append((torch.randn(shape, generator=gen) - 3.0).requires_grad_())
        box.append(
            (0.1 * torch.randn((batch, 4 * SPEC.num_anchors, size // s, size // s), generator=gen)).requires_grad_()
        )
    return {CLS: cls, BOX: box}


def _leaves(output: dict) -> list[torch.Tensor]:
    return list(output[CLS]) + list(output[BOX])


TARGETS = [
    {"box": torch.tensor([[4.0, 6.0, 20.0, 22.0]]), "label": torch.tensor([0])},
    {"box": torch.tensor([[10.0, 2.0, 30.0, 14.0], [0.0, 16.0, 12.0, 32.0]]), "label": torch.tensor([0, 0])},
]
EMPTY = [{"box": torch.zeros(0, 4), "label": torch.zeros(0, dtype=torch.long)} for _ in range(2)]


def test_sigmoid_kl_div_matches_bernoulli_kl():
    z_s, z_t, temperature = [0.5, -1.0, 3.0], [2.0, -3.0, 3.0], 2.0
    got = sigmoid_kl_div(torch.tensor(z_s), torch.tensor(z_t), temperature)
    want = [_bernoulli_kl(_sigmoid(t / temperature), _sigmoid(s / temperature)) for s, t in zip(z_s, z_t, strict=True)]
    assert torch.allclose(got, torch.tensor(want), atol=1e-6)
    assert got[2] == pytest.approx(0.0, abs=1e-7)


def test_sigmoid_kl_div_is_finite_for_extreme_logits():
    got = sigmoid_kl_div(torch.tensor([-80.0, 80.0]), torch.tensor([80.0, -80.0]))
    assert torch.isfinite(got).all() and (got > 50).all()


def test_sigmoid_distillation_matches_its_formula():
    z_s = torch.tensor([[[0.3], [-2.0]], [[1.0], [-4.0]]])  # (B=2, A=2, C=1)
    z_t = torch.tensor([[[2.0], [-1.0]], [[-1.0], [-4.5]]])
    temperature, gamma = 2.0, 2.0
    weighted, weights = 0.0, 0.0
    for s, t in zip(z_s.flatten().tolist(), z_t.flatten().tolist(), strict=True):
        p_s, p_t = _sigmoid(s / temperature), _sigmoid(t / temperature)
        weighted += abs(p_t - p_s) ** gamma * _bernoulli_kl(p_t, p_s)
        weights += abs(p_t - p_s) ** gamma
    assert weights < 1.0  # so a floor N = 3 is the normaliser, and N = 0.01 lets sum(w) take over
    for floor, norm in ((3.0, 3.0), (0.01, weights)):
        got = sigmoid_distillation(z_s, z_t, temperature, gamma, floor)
        assert got.item() == pytest.approx(weighted * temperature**2 / norm, rel=1e-5)
    # gamma = 0: w = 1, normalised by max(N, 4 elements)
    plain = sum(
        _bernoulli_kl(_sigmoid(t / 2), _sigmoid(s / 2)) for s, t in zip(z_s.flatten(), z_t.flatten(), strict=True)
    )
    assert sigmoid_distillation(z_s, z_t, temperature, 0.0, 3.0).item() == pytest.approx(4 * float(plain) / 4, rel=1e-5)


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def test_focal_weight_keeps_easy_negatives_from_drowning_one_disagreement():
    # one anchor where the teacher sees an object the student misses, 5000 easy negatives that nearly agree
    z_t = torch.tensor([_logit(0.9)] + [_logit(0.01)] * 5000)
    for gamma, check in ((0.0, lambda share: share > 0.9), (2.0, lambda share: share < 0.02)):
        z_s = torch.tensor([_logit(0.1)] + [_logit(0.02)] * 5000, requires_grad=True)
        sigmoid_distillation(z_s, z_t, 1.0, gamma, 1.0).backward()
        share = z_s.grad[1:].abs().sum() / z_s.grad.abs().sum()  # of the gradient, going to the easy negatives
        assert check(float(share)), (gamma, float(share))


@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_broad_disagreement_cannot_push_a_shared_offset_harder_than_t(temperature):
    # 20000 anchors where the student fires and the target does not, one positive: a sum / N would give 20000
    z_s = torch.full((20000, 1), _logit(0.6), requires_grad=True)
    bias = torch.zeros((), requires_grad=True)  # an offset shared by every anchor, like the cls conv's bias
    loss = sigmoid_distillation(z_s + bias, torch.full((20000, 1), _logit(0.01)), temperature, 2.0, 1.0)
    (grad,) = torch.autograd.grad(loss, bias)
    assert 0 < float(grad) <= temperature


def test_distillation_gradient_reaches_only_the_student():
    z_s, z_t = torch.randn(2, 5, 1, requires_grad=True), torch.randn(2, 5, 1, requires_grad=True)
    sigmoid_distillation(z_s, z_t, 2.0, 2.0).backward()
    assert z_t.grad is None and z_s.grad is not None and z_s.grad.abs().sum() > 0


def test_anchor_mask_is_positive_or_confident_target():
    positive = torch.tensor([[True, False, False, False]])
    logits = torch.tensor([[[-5.0], [1.0], [-0.5], [0.2]]])  # sigmoid: 0.007, 0.73, 0.38, 0.55
    assert distillation_anchor_mask(positive, logits, 0.5).tolist() == [[True, True, False, True]]
    assert distillation_anchor_mask(positive, logits, 1.0).tolist() == [[True, False, False, False]]


def test_box_distillation_matches_smooth_l1_on_masked_anchors():
    d_s = torch.tensor([[[0.0, 0.05, 1.0, -0.5], [9.0, 9.0, 9.0, 9.0]]], requires_grad=True)
    d_t = torch.tensor([[[0.02, 0.0, 0.0, 0.5], [0.0, 0.0, 0.0, 0.0]]], requires_grad=True)
    mask, beta = torch.tensor([[True, False]]), 0.1

    def smooth_l1(x: float) -> float:
        return 0.5 * x * x / beta if abs(x) < beta else abs(x) - 0.5 * beta

    want = sum(smooth_l1(s - t) for s, t in zip(d_s[0, 0].tolist(), d_t[0, 0].tolist(), strict=True)) / 4
    got = box_distillation(d_s, d_t, mask, beta)
    assert got.item() == pytest.approx(want, rel=1e-6)
    got.backward()
    assert d_t.grad is None and d_s.grad[0, 1].abs().sum() == 0 and d_s.grad[0, 0].abs().sum() > 0


def test_box_distillation_with_no_anchor_is_a_zero_that_keeps_the_graph():
    d_s = torch.randn(1, 3, 4, requires_grad=True)
    got = box_distillation(d_s, torch.randn(1, 3, 4), torch.zeros(1, 3, dtype=torch.bool))
    assert got.item() == 0.0 and got.requires_grad
    got.backward()
    assert torch.equal(d_s.grad, torch.zeros_like(d_s))


def test_gt_match_anchors_boxes_and_caches_anchors_per_image_size():
    gt = RetinaNetGTLoss(SPEC)
    out = _head_output()
    match = gt.match(out, TARGETS)
    num_anchors = SPEC.num_anchors * sum((32 // s) ** 2 for s in SPEC.strides)
    assert match.positive.shape == (2, num_anchors)
    assert set(match.matched_idxs[1][match.matched_idxs[1] >= 0].tolist()) == {0, 1}  # both boxes of image 1 matched
    assert match.normalizer == float(match.positive.sum())
    assert gt.anchors(out[CLS]) is match.anchors[0]  # cached
    bigger = _head_output(size=64)
    assert gt.anchors(bigger[CLS]).shape[0] == 4 * num_anchors
    assert torch.equal(gt.match(out, EMPTY).matched_idxs[0], torch.full((num_anchors,), -1))
    assert gt.match(out, EMPTY).normalizer == 2.0  # at least one per image


def test_gt_loss_rejects_outputs_that_do_not_fit_the_spec():
    gt = RetinaNetGTLoss(SPEC)
    out = _head_output()
    with pytest.raises(ValueError, match="strides"):
        gt.match({CLS: out[CLS][:2], BOX: out[BOX][:2]}, TARGETS)
    with pytest.raises(ValueError, match="strides"):
        gt.match({CLS: [out[CLS][0], out[CLS][0], out[CLS][2]], BOX: out[BOX]}, TARGETS)
    with pytest.raises(ValueError, match="`box_regression`"):
        gt.flatten({CLS: out[CLS]})
    three_anchors = [torch.zeros(2, 3, m.shape[2], m.shape[3]) for m in out[CLS]]  # 3 anchors x 1 class
    with pytest.raises(ValueError, match=r"`classification` has \[3\] channels; the spec needs 2 anchors"):
        gt.flatten({CLS: three_anchors, BOX: out[BOX]})


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        ({"box": torch.zeros(1, 4)}, r"targets\[1\] needs"),
        ({"box": torch.zeros(1, 6), "label": torch.tensor([0])}, r"targets\[1\]: expected"),
        ({"box": torch.zeros(2, 4), "label": torch.tensor([0])}, r"targets\[1\]: expected"),
        ({"box": torch.zeros(1, 4), "label": torch.tensor([0.0])}, r"targets\[1\]: `label` must be integers"),
        ({"box": torch.zeros(1, 4), "label": torch.tensor([1])}, r"targets\[1\]: `label` must be integers in \[0, 1\)"),
    ],
)
def test_gt_loss_rejects_bad_targets_naming_the_image(bad, match):
    with pytest.raises(ValueError, match=match):
        RetinaNetGTLoss(SPEC).match(_head_output(), [TARGETS[0], bad])


def test_gt_loss_checks_batch_size_accepts_flat_empty_boxes_and_leaves_targets_alone():
    gt = RetinaNetGTLoss(SPEC)
    with pytest.raises(ValueError, match="3 entries for a batch of 2"):
        gt.match(_head_output(), [*TARGETS, TARGETS[0]])
    flat_empty = {"box": torch.zeros(0, dtype=torch.float64), "label": torch.zeros(0, dtype=torch.int32)}
    match = gt.match(_head_output(), [TARGETS[0], flat_empty])
    assert match.targets[1]["box"].shape == (0, 4) and match.targets[1]["box"].dtype == torch.float32
    assert flat_empty["box"].shape == (0,) and flat_empty["label"].dtype == torch.int32  # caller's dict unchanged
    as_lists = {"box": MetaTensor(torch.tensor([[4.0, 6.0, 20.0, 22.0]])), "label": [0]}
    match = gt.match(_head_output(), [TARGETS[0], as_lists])
    assert type(match.targets[1]["box"]) is torch.Tensor and match.targets[1]["label"].dtype == torch.int64
    assert match.positive[1].any()


def test_gt_loss_trains_a_detector_towards_its_box():
    torch.manual_seed(0)
    net = build_retinanet(SPEC, "resnet10", fpn_channels=8, widen_factor=0.25)
    gt = RetinaNetGTLoss(SPEC)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    images, targets = torch.rand(2, 3, 32, 32), TARGETS
    losses = []
    for _ in range(8):
        terms = gt(net(images), targets)
        loss = terms["cls"] + terms["box"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses) and losses[-1] < 0.7 * losses[0]


def test_gt_box_loss_without_any_box_is_a_zero_in_the_graph():
    gt = RetinaNetGTLoss(SPEC)
    out = _head_output()
    terms = gt(out, EMPTY)
    assert terms["box"].item() == 0.0 and terms["box"].requires_grad
    assert terms["cls"].item() > 0
    torch.autograd.grad(terms["cls"] + terms["box"], _leaves(out))  # no "unused" or device error


def _kdml(num_students: int = 3, targets=TARGETS, **kwargs) -> tuple[DetectionKDMLLoss, list[dict], dict, dict]:
    torch.manual_seed(0)
    loss = DetectionKDMLLoss(RetinaNetGTLoss(SPEC), **kwargs)
    students = [_head_output(seed=k + 1) for k in range(num_students)]
    teacher = _head_output(seed=0)
    with torch.no_grad():  # make the teacher confident somewhere, so teacher-confident boxes are distilled too
        teacher[CLS][0][0, 0, 1, 1] = 3.0
    return loss, students, teacher, loss(students, teacher, targets)


def test_kdml_output_structure_and_totals_follow_the_weights():
    loss, students, teacher, _ = _kdml()
    loss.gt_weight, loss.kd_weight, loss.ml_weight = 0.5, 2.0, 3.0  # as a warm-up handler would
    out = loss(students, teacher, TARGETS)
    terms = out["students"]
    assert set(terms) == {"loss", "cls", "box", "kd_cls", "kd_box", "ml_cls", "ml_box"}
    assert all(len(v) == 3 for v in terms.values())
    for k in range(3):
        want = 0.5 * (terms["cls"][k] + terms["box"][k]) + 2.0 * (terms["kd_cls"][k] + terms["kd_box"][k])
        want = want + 3.0 * (terms["ml_cls"][k] + terms["ml_box"][k])
        assert torch.allclose(terms["loss"][k], want)
    assert torch.allclose(out["loss"], sum(terms["loss"]))
    assert set(out["teacher"]) == {"loss", "cls", "box"}
    assert torch.allclose(out["teacher"]["loss"], 0.5 * (out["teacher"]["cls"] + out["teacher"]["box"]))


def test_kdml_terms_are_the_pure_functions_on_flattened_outputs():
    loss, students, teacher, out = _kdml(temperature=2.0, gamma=1.0, box_threshold=0.9)
    gt = loss.gt_loss
    match = gt.match(teacher, TARGETS)
    norm = sum(max(1, int((m >= 0).sum())) for m in match.matched_idxs)
    (t_cls, t_box), flat = gt.flatten(teacher), [gt.flatten(s) for s in students]
    assert match.positive.any() and (torch.sigmoid(t_cls).amax(-1) > 0.9).sum() == 1
    for k, (s_cls, s_box) in enumerate(flat):
        kd_cls = sigmoid_distillation(s_cls, t_cls, 2.0, 1.0, norm)
        kd_box = box_distillation(s_box, t_box, distillation_anchor_mask(match.positive, t_cls, 0.9))
        assert torch.allclose(out["students"]["kd_cls"][k], kd_cls)
        assert torch.allclose(out["students"]["kd_box"][k], kd_box)
        peers = [j for j in range(3) if j != k]
        ml_cls = sum(sigmoid_distillation(s_cls, flat[j][0], 2.0, 1.0, norm) for j in peers) / 2
        ml_box = (
            sum(
                box_distillation(s_box, flat[j][1], distillation_anchor_mask(match.positive, flat[j][0], 0.9))
                for j in peers
            )
            / 2
        )
        assert torch.allclose(out["students"]["ml_cls"][k], ml_cls)
        assert torch.allclose(out["students"]["ml_box"][k], ml_box)


def test_kd_sends_no_gradient_to_the_teacher_and_ml_none_to_peers():
    _, students, teacher, out = _kdml()
    terms = out["students"]
    kd = terms["kd_cls"][0] + terms["kd_box"][0]
    assert all(g is None for g in torch.autograd.grad(kd, _leaves(teacher), allow_unused=True, retain_graph=True))
    ml = terms["ml_cls"][0] + terms["ml_box"][0]
    for j in (1, 2):
        grads = torch.autograd.grad(ml, _leaves(students[j]), allow_unused=True, retain_graph=True)
        assert all(g is None for g in grads)
    own = torch.autograd.grad(ml, _leaves(students[0]), allow_unused=True, retain_graph=True)
    assert any(g is not None and g.abs().sum() > 0 for g in own)
    # one backward of the total equals each student's own backward (targets are detached)
    for k in range(3):
        together = torch.autograd.grad(out["loss"], _leaves(students[k]), retain_graph=True)
        alone = torch.autograd.grad(terms["loss"][k], _leaves(students[k]), retain_graph=True)
        assert all(torch.allclose(a, b) for a, b in zip(together, alone, strict=True))


def test_kdml_switches_drop_their_terms():
    loss, students, teacher, _ = _kdml()
    assert set(loss(students, teacher, TARGETS, use_kd=False)["students"]) == {"loss", "cls", "box", "ml_cls", "ml_box"}
    out = loss(students, None, TARGETS)
    assert "teacher" not in out and "kd_cls" not in out["students"]
    out = loss(students[:1], teacher, TARGETS, use_ml=False)
    assert set(out["students"]) == {"loss", "cls", "box", "kd_cls", "kd_box"}
    assert torch.allclose(out["loss"], out["students"]["loss"][0])
    with pytest.raises(ValueError, match="at least 2 students"):
        loss(students[:1], teacher, TARGETS)
    with pytest.raises(ValueError, match="at least one student"):
        loss([], teacher, TARGETS, use_ml=False)


def test_kdml_rejects_bad_settings():
    with pytest.raises(ValueError, match="temperature"):
        DetectionKDMLLoss(RetinaNetGTLoss(SPEC), temperature=0.0)


@pytest.mark.parametrize("targets", [EMPTY, [TARGETS[0], EMPTY[1]]], ids=["all-empty", "one-empty"])
def test_kdml_handles_images_without_boxes(targets):
    _, students, teacher, out = _kdml(targets=targets)
    values = [v for terms in out["students"].values() for v in terms] + list(out["teacher"].values())
    assert all(torch.isfinite(v) for v in values)
    (out["loss"] + out["teacher"]["loss"]).backward()
    for network in [teacher, *students]:
        assert all(t.grad is not None and torch.isfinite(t.grad).all() for t in _leaves(network))


def test_everything_runs_with_torchvision_unimportable():
    script = textwrap.dedent(
        """
        import sys
        sys.modules["torchvision"] = None  # any import of torchvision now fails
        import torch
        from monai_kdml.apps.polyp import DetectionKDMLLoss, RetinaNetGTLoss, RetinaNetHeadEnsemble, RetinaNetInferer
        from monai_kdml.apps.polyp import get_preset
        preset = get_preset("tiny")
        teacher, students = preset.build_teacher(), preset.build_students(2)
        images = torch.rand(2, 3, 32, 32)
        targets = [{"box": torch.tensor([[2.0, 3.0, 20.0, 25.0]]), "label": torch.tensor([0])}] * 2
        out = DetectionKDMLLoss(RetinaNetGTLoss(preset.spec))([s(images) for s in students], teacher(images), targets)
        (out["loss"] + out["teacher"]["loss"]).backward()
        dets = RetinaNetInferer(preset.anchor_generator(), score_thresh=0.0)(images, RetinaNetHeadEnsemble(students))
        assert len(dets) == 2 and dets[0]["box"].shape[1] == 4
        print("ok")
        """
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith("ok")


# ---------------------------------------------------------------- teacher-aware box KD (issue 17)
def test_box_kd_options_off_are_bit_for_bit_the_default():
    loss, students, teacher, _ = _kdml()
    torch.manual_seed(0)  # the hard-negative sampler of the GT classification loss draws at random
    out = loss(students, teacher, TARGETS)
    torch.manual_seed(0)
    explicit = DetectionKDMLLoss(RetinaNetGTLoss(SPEC), box_kd=True, box_bound_margin=None)(students, teacher, TARGETS)
    for name, values in out["students"].items():
        assert all(torch.equal(a, b) for a, b in zip(values, explicit["students"][name], strict=True)), name
    assert torch.equal(out["loss"], explicit["loss"])


def test_box_kd_switch_drops_only_the_kd_box_term():
    loss, students, teacher, _ = _kdml()
    torch.manual_seed(0)
    out = loss(students, teacher, TARGETS)
    loss.box_kd = False
    torch.manual_seed(0)
    off = loss(students, teacher, TARGETS)
    assert set(off["students"]) == {"loss", "cls", "box", "kd_cls", "ml_cls", "ml_box"}
    for k in range(3):
        assert torch.allclose(off["students"]["loss"][k], out["students"]["loss"][k] - out["students"]["kd_box"][k])


def test_gt_deltas_are_the_targets_of_monais_box_loss():
    gt = RetinaNetGTLoss(SPEC)
    output = _head_output(seed=1)
    match = gt.match(output, TARGETS)
    deltas = gt.gt_deltas(match)
    _, box = gt.flatten(output)
    for i in range(2):
        _, want = gt.template.get_box_train_sample_per_image(
            box[i], match.targets[i], match.anchors[i], match.matched_idxs[i]
        )
        assert torch.allclose(deltas[i][match.positive[i]], want)
        assert torch.all(deltas[i][~match.positive[i]] == 0)


def test_teacher_bounded_box_kd_distils_only_where_the_teacher_is_closer_to_the_gt():
    gt = RetinaNetGTLoss(SPEC)
    students, teacher = [_head_output(seed=1), _head_output(seed=2)], _head_output(seed=0)
    match = gt.match(teacher, TARGETS)
    target = gt.gt_deltas(match)
    with torch.no_grad():  # the teacher is exactly right on the first half of the positive anchors, far off elsewhere
        t_box = gt.flatten(teacher)[1]
        pos = match.positive.nonzero()
        good = torch.zeros_like(match.positive)
        good[pos[: len(pos) // 2, 0], pos[: len(pos) // 2, 1]] = True
        wanted = torch.where(good[..., None], target, target + 5.0)
    s_box = gt.flatten(students[0])[1]
    mask = teacher_bounded_mask(match.positive, s_box, wanted, target, 0.1, 1.0 / 9)
    assert bool(mask.any()) and torch.all(mask <= good) and not torch.equal(mask, match.positive)
    assert not bool(teacher_bounded_mask(match.positive, s_box, wanted, target, 1e6, 1.0 / 9).any())
    # inside the loss: kd_box is box_distillation on the bounded mask of the real teacher; a teacher identical to the
    # student is never closer to the GT, so nothing is distilled (an exact zero)
    out = DetectionKDMLLoss(gt, box_bound_margin=0.0)(students, teacher, TARGETS, use_ml=False)
    real = teacher_bounded_mask(match.positive, s_box, t_box, target, 0.0, 1.0 / 9)
    assert bool(real.any()) and not torch.equal(real, match.positive)
    assert torch.allclose(out["students"]["kd_box"][0], box_distillation(s_box, t_box, real))
    same = DetectionKDMLLoss(gt, box_bound_margin=0.0)(students[:1], students[0], TARGETS, use_ml=False)
    assert same["students"]["kd_box"][0].item() == 0.0


def test_bad_box_bound_margin_is_refused():
    with pytest.raises(ValueError, match="box_bound_margin"):
        DetectionKDMLLoss(RetinaNetGTLoss(SPEC), box_bound_margin=-0.5)


def test_kd_cls_sampled_normalizer_divides_by_the_gt_losss_sample_count():
    gt = RetinaNetGTLoss(SPEC, batch_size_per_image=32)
    students, teacher = [_head_output(seed=1)], _head_output(seed=0)
    torch.manual_seed(0)
    default = DetectionKDMLLoss(gt)(students, teacher, TARGETS, use_ml=False)
    torch.manual_seed(0)
    sampled = DetectionKDMLLoss(gt, kd_cls_normalizer="sampled")(students, teacher, TARGETS, use_ml=False)
    match = gt.match(teacher, TARGETS)
    (s_cls, _), (t_cls, _) = gt.flatten(students[0]), gt.flatten(teacher)
    assert match.sampled == 64.0  # 32 anchors x 2 images
    want = sigmoid_distillation(s_cls, t_cls, 1.0, 2.0, normalizer=64.0)
    assert torch.allclose(sampled["students"]["kd_cls"][0], want)
    assert not torch.allclose(sampled["students"]["kd_cls"][0], default["students"]["kd_cls"][0])
    for name in ("cls", "box", "kd_box"):
        assert torch.equal(sampled["students"][name][0], default["students"][name][0])
    with pytest.raises(ValueError, match="kd_cls_normalizer"):
        DetectionKDMLLoss(gt, kd_cls_normalizer="all")


def test_the_magnitude_measurement_reports_both_normalisers():
    from monai_kdml.experiments.magnitudes import measure_detection_terms

    rows = measure_detection_terms("tiny", image_size=64, batch=2, steps=1, report_at=(0, 1))
    assert [r["step"] for r in rows] == [0, 1]
    for row in rows:
        assert {"cls", "box", "kd_cls", "kd_box", "ml_cls", "ml_box", "kd_cls_sampled", "teacher_cls"} <= set(row)
        assert row["kd_cls/cls"] == pytest.approx(row["kd_cls"] / row["cls"])
        assert all(math.isfinite(v) and v >= 0 for k, v in row.items() if k != "step")
