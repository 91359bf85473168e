"""Each loss against a direct evaluation of its formula; gradient isolation; bad input."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from monai_kdml.losses import KDLoss, KDMLLoss, MutualLearningLoss, cross_entropy, term_name


def kl_direct(p_target: torch.Tensor, p_student: torch.Tensor) -> torch.Tensor:
    """KL(p_target || p_student) per sample/position, summed over dim 1, written out term by term."""
    return (p_target * (torch.log(p_target) - torch.log(p_student))).sum(dim=1)


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.5])
@pytest.mark.parametrize("shape", [(5, 3), (2, 4, 3, 3), (2, 2, 2, 3, 2)])
def test_kd_loss_matches_formula(temperature: float, shape: tuple) -> None:
    g = torch.Generator().manual_seed(0)
    zs, zt = torch.randn(shape, generator=g, dtype=torch.float64), torch.randn(shape, generator=g, dtype=torch.float64)
    expected = temperature**2 * kl_direct(torch.softmax(zt / temperature, 1), torch.softmax(zs / temperature, 1)).mean()
    assert KDLoss(temperature)(zs, zt).item() == pytest.approx(expected.item(), rel=1e-5)


def test_kd_loss_zero_for_identical_logits_and_positive_otherwise() -> None:
    z = torch.randn(4, 3)
    assert KDLoss(3.0)(z, z.clone()).item() == pytest.approx(0.0, abs=1e-6)
    assert KDLoss(3.0)(z, z.flip(1)).item() > 0


def test_kd_loss_extreme_logits_stay_finite() -> None:
    zs = torch.tensor([[1e4, -1e4], [-3e4, 3e4]], requires_grad=True)
    zt = torch.tensor([[-1e4, 1e4], [-3e4, 3e4]])
    loss = KDLoss(1.0)(zs, zt)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(zs.grad).all()
    # first sample: teacher is certain of class 1, student of class 0: KL = log p_t1 - log p_s1 = 0 - (-2e4)
    assert loss.item() == pytest.approx(2e4 / 2, rel=1e-4)


def test_kd_loss_sends_no_gradient_to_teacher() -> None:
    zs, zt = torch.randn(3, 4, requires_grad=True), torch.randn(3, 4, requires_grad=True)
    KDLoss(2.0)(zs, zt).backward()
    assert zs.grad is not None and zt.grad is None


@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_mutual_learning_matches_formula(temperature: float) -> None:
    g = torch.Generator().manual_seed(1)
    logits = [torch.randn(6, 4, generator=g, dtype=torch.float64) for _ in range(3)]
    probs = [torch.softmax(z / temperature, 1) for z in logits]
    terms = MutualLearningLoss(temperature)(logits)
    for k in range(3):
        expected = temperature**2 / 2 * sum(kl_direct(probs[j], probs[k]).mean() for j in range(3) if j != k)
        assert terms[k].item() == pytest.approx(expected.item(), rel=1e-6)


def test_mutual_learning_term_k_moves_only_student_k() -> None:
    logits = [torch.randn(4, 3, requires_grad=True) for _ in range(3)]
    terms = MutualLearningLoss(2.0)(logits)
    terms[1].backward()
    assert logits[1].grad is not None and logits[1].grad.abs().sum() > 0
    assert logits[0].grad is None and logits[2].grad is None


def test_mutual_learning_needs_two_students() -> None:
    with pytest.raises(ValueError, match="at least 2 students"):
        MutualLearningLoss()([torch.randn(2, 3)])


@pytest.mark.parametrize(
    "target",
    [torch.tensor([0, 2, 1]), torch.tensor([[0], [2], [1]]), F.one_hot(torch.tensor([0, 2, 1]), 3).float()],
    ids=["index", "index_b1", "one_hot"],
)
def test_cross_entropy_accepts_target_layouts(target: torch.Tensor) -> None:
    z = torch.randn(3, 3)
    expected = -torch.log_softmax(z, 1)[torch.arange(3), torch.tensor([0, 2, 1])].mean()
    assert cross_entropy(z, target).item() == pytest.approx(expected.item(), rel=1e-6)


def test_cross_entropy_dense_targets() -> None:
    z = torch.randn(2, 3, 4, 4)
    y = torch.randint(0, 3, (2, 1, 4, 4))
    expected = -torch.log_softmax(z, 1).gather(1, y).mean()
    assert cross_entropy(z, y).item() == pytest.approx(expected.item(), rel=1e-6)
    assert cross_entropy(z, F.one_hot(y[:, 0], 3).movedim(-1, 1).float()).item() == pytest.approx(
        expected.item(), rel=1e-6
    )


def test_kdml_loss_combines_terms_with_weights() -> None:
    g = torch.Generator().manual_seed(2)
    students = [torch.randn(5, 2, generator=g) for _ in range(2)]
    teacher = torch.randn(5, 2, generator=g)
    y = torch.randint(0, 2, (5,), generator=g)
    loss = KDMLLoss(ce_weight=0.5, kd_weight=2.0, ml_weight=3.0, temperature=2.0)
    out = loss(students, teacher, y)
    ml = MutualLearningLoss(2.0)(students)
    for k, z in enumerate(students):
        ce, kd = F.cross_entropy(z, y), KDLoss(2.0)(z, teacher)
        assert out["students"]["ce"][k].item() == pytest.approx(ce.item(), rel=1e-6)
        assert out["students"]["kd"][k].item() == pytest.approx(kd.item(), rel=1e-6)
        assert out["students"]["ml"][k].item() == pytest.approx(ml[k].item(), rel=1e-6)
        assert out["students"]["loss"][k].item() == pytest.approx((0.5 * ce + 2 * kd + 3 * ml[k]).item(), rel=1e-6)
    assert out["loss"].item() == pytest.approx(sum(out["students"]["loss"]).item(), rel=1e-6)
    assert out["teacher"]["loss"].item() == pytest.approx(F.cross_entropy(teacher, y).item(), rel=1e-6)


def test_kdml_loss_drops_terms() -> None:
    students = [torch.randn(4, 2) for _ in range(2)]
    teacher, y = torch.randn(4, 2), torch.randint(0, 2, (4,))
    no_teacher = KDMLLoss()(students, None, y)
    assert "kd" not in no_teacher["students"] and "teacher" not in no_teacher
    assert "ml" not in KDMLLoss()(students, teacher, y, use_ml=False)["students"]
    assert "kd" not in KDMLLoss()(students, teacher, y, use_kd=False)["students"]
    # a zero weight keeps the term visible for logging but out of the total
    out = KDMLLoss(kd_weight=0.0, ml_weight=0.0)(students, teacher, y)
    assert "kd" in out["students"]
    assert out["loss"].item() == pytest.approx(sum(out["students"]["ce"]).item(), rel=1e-6)


def test_the_supervised_term_is_named_after_its_loss() -> None:
    from monai.losses import DiceCELoss, FocalLoss

    z = [torch.randn(2, 2, 4, 4) for _ in range(2)]
    y = torch.randint(0, 2, (2, 1, 4, 4))
    dice_ce = KDMLLoss(supervised_loss=DiceCELoss(to_onehot_y=True, softmax=True))
    out = dice_ce(z, torch.randn(2, 2, 4, 4), y)
    assert dice_ce.supervised_name == "dice_ce" and "ce" not in out["students"]
    assert set(out["students"]) == {"loss", "dice_ce", "kd", "ml"} and set(out["teacher"]) == {"loss", "dice_ce"}
    assert KDMLLoss().supervised_name == "ce" and term_name(FocalLoss()) == "focal"
    assert term_name(torch.nn.CrossEntropyLoss()) == "cross_entropy"
    named = KDMLLoss(supervised_name="nll")([torch.randn(3, 2)], None, torch.tensor([0, 1, 1]), use_ml=False)
    assert set(named["students"]) == {"loss", "nll"}
    with pytest.raises(ValueError, match="supervised_name"):
        KDMLLoss(supervised_name="kd")


def test_kdml_loss_binary_two_logits_and_segmentation() -> None:
    z = [torch.randn(2, 2, 5, 5, requires_grad=True) for _ in range(2)]
    out = KDMLLoss()(z, torch.randn(2, 2, 5, 5), torch.randint(0, 2, (2, 1, 5, 5)))
    out["loss"].backward()
    assert all(t.grad is not None for t in z)


def test_teacher_ensemble_term() -> None:
    students = [torch.randn(3, 4, dtype=torch.float64) for _ in range(2)]
    teacher = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 1, 2])
    out = KDMLLoss(temperature=2.0, teacher_ensemble_weight=0.5)(students, teacher, y)
    p_ens = sum(torch.softmax(z / 2.0, 1) for z in students) / 2
    expected = 4.0 * kl_direct(p_ens, torch.softmax(teacher.detach() / 2.0, 1)).mean()
    assert out["teacher"]["ens"].item() == pytest.approx(expected.item(), rel=1e-5)
    out["teacher"]["loss"].backward()
    assert teacher.grad is not None
    assert "ens" not in KDMLLoss()(students, teacher, y)["teacher"]


@pytest.mark.parametrize("kwargs", [{"temperature": 0.0}, {"temperature": -1.0}, {"kd_weight": -1.0}])
def test_bad_hyper_parameters(kwargs: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        KDMLLoss(**kwargs)


def test_shape_mismatch_is_named() -> None:
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(2, 4\)"):
        KDLoss()(torch.randn(2, 3), torch.randn(2, 4))


def test_temperature_scaling_keeps_gradient_scale() -> None:
    """T^2 scaling: the gradient norm w.r.t. logits stays of the same order as T grows (Hinton et al.)."""
    zs, zt = torch.randn(64, 5, requires_grad=True), torch.randn(64, 5)
    norms = []
    for t in (4.0, 8.0):
        zs.grad = None
        KDLoss(t)(zs, zt).backward()
        norms.append(zs.grad.norm().item())
    assert math.isclose(norms[0], norms[1], rel_tol=0.6)


# ---------------------------------------------------------------- teacher-aware KD (issue 17)
def _batch(seed: int = 3) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    students = [torch.randn(8, 3, generator=g, requires_grad=True) for _ in range(2)]
    return students, torch.randn(8, 3, generator=g), torch.randint(0, 3, (8,), generator=g)


def test_kd_gate_none_is_bit_for_bit_the_plain_loss() -> None:
    students, teacher, y = _batch()
    plain = KDMLLoss(temperature=2.0)(students, teacher, y)
    gated = KDMLLoss(temperature=2.0, kd_gate="none")(students, teacher, y)
    for k in range(2):
        assert torch.equal(plain["students"]["kd"][k], gated["students"]["kd"][k])
    assert torch.equal(plain["loss"], gated["loss"])
    g1 = torch.autograd.grad(plain["loss"], students)
    g2 = torch.autograd.grad(gated["loss"], students)
    assert all(torch.equal(a, b) for a, b in zip(g1, g2, strict=True))


def test_kd_gate_correct_distils_only_what_the_teacher_gets_right() -> None:
    students, teacher, y = _batch()
    right = teacher.argmax(1) == y
    assert 0 < int(right.sum()) < 8  # the batch has both kinds of samples
    t = 2.0
    kl = kl_direct(torch.softmax(teacher / t, 1), torch.softmax(students[0].detach() / t, 1))
    terms = KDMLLoss(temperature=t, kd_gate="correct")(students, teacher, y)
    assert terms["students"]["kd"][0].item() == pytest.approx((t**2 * (kl * right).sum() / 8).item(), rel=1e-5)
    # a sample the teacher gets wrong sends no KD gradient
    (grad,) = torch.autograd.grad(terms["students"]["kd"][0], students[0])
    assert torch.all(grad[~right] == 0) and torch.any(grad[right] != 0)


@pytest.mark.parametrize("layout", ["index", "channel", "onehot"])
def test_kd_gate_probability_weights_by_true_class_probability(layout: str) -> None:
    students, teacher, y = _batch(4)
    target = {"index": y, "channel": y[:, None], "onehot": F.one_hot(y, 3).float()}[layout]
    t = 1.5
    weight = torch.softmax(teacher, 1).gather(1, y[:, None]).squeeze(1)
    kl = kl_direct(torch.softmax(teacher / t, 1), torch.softmax(students[1].detach() / t, 1))
    terms = KDMLLoss(temperature=t, kd_gate="probability")(students, teacher, target)
    assert terms["students"]["kd"][1].item() == pytest.approx((t**2 * (kl * weight).mean()).item(), rel=1e-5)


def test_kd_gate_on_dense_logits_and_bad_name() -> None:
    g = torch.Generator().manual_seed(5)
    zs, zt = [torch.randn(2, 3, 4, 4, generator=g)], torch.randn(2, 3, 4, 4, generator=g)
    y = zt.argmax(1)  # the teacher is right everywhere: the gate changes nothing
    plain = KDMLLoss()(zs, zt, y, use_ml=False)["students"]["kd"][0]
    gated = KDMLLoss(kd_gate="correct")(zs, zt, y[:, None], use_ml=False)["students"]["kd"][0]
    assert gated.item() == pytest.approx(plain.item(), rel=1e-6)
    with pytest.raises(ValueError, match="kd_gate"):
        KDMLLoss(kd_gate="right")
