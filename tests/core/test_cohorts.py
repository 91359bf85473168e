"""Cohort runs: every mode's students in one run, each cohort bit for bit its single-mode run; per-student views."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from monai_kdml.data import BatchAugment
from monai_kdml.engines import KDMLEvaluator, KDMLTrainer
from monai_kdml.handlers import loss_terms
from monai_kdml.keys import network_names
from monai_kdml.losses import KDMLLoss
from monai_kdml.metrics import classification_metrics
from monai_kdml.networks import build_cohorts

MODES = ["independent", "kd", "ml", "kdml"]
K = 2


def adam(net: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.Adam(net.parameters(), lr=1e-2)


def initial(toy) -> tuple[nn.Module, list[nn.Module]]:
    """The same initial teacher and K students for every run of a test."""
    return toy.tiny_net(8, seed=0), [toy.tiny_net(4, seed=1 + k) for k in range(K)]


def train(toy, teacher, students, mode: str, cohorts=None, max_epochs: int = 2, loss=None, **kwargs) -> KDMLTrainer:
    """Train deep copies of ``teacher`` and ``students`` (repeated per cohort); the loader shuffles from seed 0."""
    teacher = copy.deepcopy(teacher)
    students = [copy.deepcopy(s) for _ in (cohorts or [mode]) for s in students]
    trainer = KDMLTrainer(
        device="cpu",
        max_epochs=max_epochs,
        train_data_loader=toy.loader(32, 8, shuffle=True),
        teacher=teacher,
        students=students,
        student_optimizers=[adam(s) for s in students],
        teacher_optimizer=adam(teacher),
        loss_function=loss or KDMLLoss(temperature=2.0),
        mode=mode,
        cohorts=cohorts,
        decollate=False,
        **kwargs,
    )
    torch.manual_seed(0)  # shuffling and views draw from here: the same draws in every run
    trainer.run()
    return trainer


def weights(net: nn.Module) -> list[torch.Tensor]:
    return [t.detach().clone() for t in net.state_dict().values()]


def same(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(weights(a), weights(b), strict=True))


@pytest.mark.parametrize("views", [False, True], ids=["same-batch", "per-student-views"])
def test_each_cohort_equals_its_single_mode_run_bit_for_bit(toy, views: bool) -> None:
    teacher, students = initial(toy)
    transform = {"student_transform": BatchAugment(rotate90_prob=0.5)} if views else {}
    cohort_run = train(toy, teacher, students, "kdml", cohorts=MODES, **transform)
    for c, mode in enumerate(MODES):
        single = train(toy, teacher, students, mode, **transform)
        assert same(single.teacher, cohort_run.teacher), mode
        for k in range(K):
            assert same(single.students[k], cohort_run.students[c * K + k]), (mode, k)
    # the cohorts did train differently (the check above is not vacuous)
    assert not same(cohort_run.students[0], cohort_run.students[3 * K])


def test_teacher_follows_the_mode_cohort_when_it_learns_from_the_students(toy) -> None:
    """With teacher_ensemble_weight > 0 the teacher learns from the `mode` cohort's ensemble: that cohort (and the
    teacher) equal the single-mode run of `mode`; another cohort then differs from its own single-mode run."""
    teacher, students = initial(toy)

    def loss() -> KDMLLoss:
        return KDMLLoss(temperature=2.0, teacher_ensemble_weight=1.0)

    cohort_run = train(toy, teacher, students, "ml", cohorts=["kd", "ml"], loss=loss())
    single_ml = train(toy, teacher, students, "ml", loss=loss())
    assert same(single_ml.teacher, cohort_run.teacher)
    assert all(same(single_ml.students[k], cohort_run.students[K + k]) for k in range(K))
    single_kd = train(toy, teacher, students, "kd", loss=loss())
    assert not same(single_kd.students[0], cohort_run.students[0])


def test_cohort_outputs_are_prefixed(toy) -> None:
    teacher, students = initial(toy)
    trainer = train(toy, teacher, students, "kdml", cohorts=["independent", "kdml"], max_epochs=1)
    out = trainer.state.output
    assert "pred" not in out and {"kdml/pred", "independent/pred", "pred_teacher"} <= set(out)
    assert {"independent/pred_student_0", "kdml/pred_student_1", "kdml/kd_student_0", "kdml/ml_student_1"} <= set(out)
    assert "independent/kd_student_0" not in out and "independent/ml_student_0" not in out
    parts = out["independent/loss"] + out["kdml/loss"] + out["loss_teacher"]
    assert out["loss"].item() == pytest.approx(parts.item(), rel=1e-6)
    logged = loss_terms(out)
    assert {"loss", "loss_teacher", "kdml/loss", "kdml/loss_student_0", "kdml/ml_student_1"} <= set(logged)
    assert not any("pred" in key for key in logged)


class TestCohortErrors:
    def make(self, toy, cohorts, mode="kdml", num_students=4) -> KDMLTrainer:
        students = [toy.tiny_net(4) for _ in range(num_students)]
        teacher = toy.tiny_net(8)
        return KDMLTrainer(
            device="cpu",
            max_epochs=1,
            train_data_loader=toy.loader(8, 8),
            teacher=teacher,
            students=students,
            student_optimizers=[adam(s) for s in students],
            teacher_optimizer=adam(teacher),
            loss_function=KDMLLoss(),
            mode=mode,
            cohorts=cohorts,
        )

    def test_mode_must_be_a_cohort(self, toy) -> None:
        with pytest.raises(ValueError, match=r"`mode`='kdml' must be one of `cohorts`"):
            self.make(toy, ["independent", "kd"])

    def test_uneven_split(self, toy) -> None:
        with pytest.raises(ValueError, match="do not split into 3 cohorts"):
            self.make(toy, ["independent", "kd", "kdml"])

    def test_repeated_or_unknown_cohort(self, toy) -> None:
        with pytest.raises(ValueError, match="names a mode twice"):
            self.make(toy, ["kdml", "kdml"])
        with pytest.raises(ValueError, match="`cohorts`"):
            self.make(toy, ["kdml", "kdlm"])

    def test_mutual_learning_needs_two_per_cohort(self, toy) -> None:
        with pytest.raises(ValueError, match="K >= 2 students per cohort"):
            self.make(toy, ["independent", "kd", "ml", "kdml"])

    def test_single_string_is_refused(self, toy) -> None:
        with pytest.raises(ValueError, match="non-empty list of modes"):
            self.make(toy, "kdml")


def test_evaluator_scores_every_cohort_running_each_network_once(toy) -> None:
    cohorts = ["independent", "kdml"]
    teacher, students = toy.tiny_net(8, seed=0), [toy.tiny_net(4, seed=k) for k in range(2 * K)]
    calls: dict[int, int] = {}
    for net in (teacher, *students):
        net.register_forward_hook(lambda m, _i, _o: calls.__setitem__(id(m), calls.get(id(m), 0) + 1))
    names = network_names(K, cohorts=cohorts)
    assert names == [
        "teacher", "independent/student_0", "independent/student_1", "independent/ensemble",
        "kdml/student_0", "kdml/student_1", "kdml/ensemble",
    ]  # fmt: skip
    metrics = classification_metrics(names)
    evaluator = KDMLEvaluator(
        "cpu",
        toy.loader(16, 8),
        teacher,
        students,
        cohorts=cohorts,
        key_val_metric={"kdml/ensemble_auc": metrics.pop("kdml/ensemble_auc")},
        additional_metrics=metrics,
    )
    evaluator.run()
    assert set(calls.values()) == {2} and len(calls) == 1 + 2 * K  # each network once per batch, 2 batches
    got = evaluator.state.metrics
    for name in names:
        assert 0.0 <= got[f"{name}_auc"] <= 1.0, name
    assert "independent/disagreement" in got and "kdml/disagreement" in got and "disagreement" not in got
    # a cohort's ensemble is the mean probability of its own students only
    x = next(iter(toy.loader(16, 8)))["image"]
    with torch.no_grad():
        probs = [s.eval()(x).softmax(1) for s in students[K:]]
        expected = torch.log(sum(probs) / K)
        assert torch.allclose(evaluator.combines[1]([s(x) for s in students[K:]]), expected, atol=1e-5)


def test_evaluator_needs_one_ensemble_per_cohort(toy) -> None:
    students = [toy.tiny_net(4) for _ in range(4)]
    with pytest.raises(ValueError, match="1 networks for 2 cohorts"):
        KDMLEvaluator("cpu", toy.loader(8, 8), toy.tiny_net(8), students, ensemble=nn.Identity(), cohorts=["kd", "ml"])


class TestBatchAugment:
    def test_views_differ_and_keep_shape(self) -> None:
        torch.manual_seed(0)
        x = torch.rand(16, 3, 8, 8)
        a, b = BatchAugment()(x), BatchAugment()(x)
        assert a.shape == x.shape and a.dtype == x.dtype and not torch.equal(a, b)
        assert torch.equal(x, x.clone())  # the input is not changed in place

    def test_same_seed_same_view(self) -> None:
        x = torch.rand(4, 3, 8, 8)
        torch.manual_seed(3)
        a = BatchAugment(gamma=(0.7, 1.5))(x)
        torch.manual_seed(3)
        assert torch.equal(a, BatchAugment(gamma=(0.7, 1.5))(x))

    def test_geometric_only_permutes_pixels_of_each_sample(self) -> None:
        x = torch.rand(8, 1, 6, 6)
        view = BatchAugment(flip_prob=0.5, rotate90_prob=1.0, intensity_prob=0.0)(x)
        for i in range(8):
            assert torch.equal(view[i].flatten().sort().values, x[i].flatten().sort().values)
            candidates = [torch.rot90(f, k, dims=(1, 2)) for f in (x[i], x[i].flip(1)) for k in range(4)]
            assert any(torch.equal(view[i], c) for c in candidates)

    def test_photometric_only_keeps_positions(self) -> None:
        x = torch.rand(8, 3, 6, 6)
        view = BatchAugment(flip_prob=0.0, rotate90_prob=0.0, intensity_prob=1.0, scale=0.2, shift=0.1)(x)
        for i in range(8):  # an affine map per sample: x' = a x + b, same a and b at every position
            a = (view[i, 0, 0, 1] - view[i, 0, 0, 0]) / (x[i, 0, 0, 1] - x[i, 0, 0, 0])
            b = view[i, 0, 0, 0] - a * x[i, 0, 0, 0]
            assert torch.allclose(view[i], a * x[i] + b, atol=1e-5)
            assert 0.8 - 1e-6 <= a <= 1.2 + 1e-6

    def test_errors(self) -> None:
        with pytest.raises(ValueError, match="flip_prob"):
            BatchAugment(flip_prob=1.5)
        with pytest.raises(ValueError, match="gamma"):
            BatchAugment(gamma=(0.0, 1.0))
        with pytest.raises(ValueError, match="square"):
            BatchAugment(rotate90_prob=1.0)(torch.rand(2, 1, 4, 6))


def test_student_transform_gives_each_student_position_its_own_view(toy) -> None:
    teacher, students = initial(toy)
    seen: dict[str, list[torch.Tensor]] = {}
    trainer = KDMLTrainer(
        device="cpu",
        max_epochs=1,
        train_data_loader=toy.loader(8, 8),
        teacher=teacher,
        students=[copy.deepcopy(s) for _ in range(2) for s in students],
        student_optimizers=[adam(s) for _ in range(2) for s in students],
        teacher_optimizer=adam(teacher),
        loss_function=KDMLLoss(),
        cohorts=["kd", "kdml"],
        student_transform=BatchAugment(flip_prob=0.5, rotate90_prob=1.0),
    )
    for name, net in [("teacher", trainer.teacher)] + [(f"s{i}", s) for i, s in enumerate(trainer.students)]:
        net.register_forward_pre_hook(lambda _m, args, n=name: seen.setdefault(n, []).append(args[0].clone()))
    trainer.run()
    batch = next(iter(toy.loader(8, 8)))["image"]
    assert torch.equal(seen["teacher"][0], batch)  # the teacher sees the batch as prepared
    assert not torch.equal(seen["s0"][0], seen["s1"][0])  # students 0 and 1 see different views ...
    assert torch.equal(seen["s0"][0], seen["s2"][0]) and torch.equal(seen["s1"][0], seen["s3"][0])  # ... per cohort


class TestStudentCohorts:
    """The one cohort object: built once, checked once, handed as it is to the trainer, evaluator and savers."""

    def test_build_copies_the_initial_students_per_cohort(self, toy) -> None:
        students = build_cohorts(lambda: [toy.tiny_net(4, seed=k) for k in range(K)], "kd", ["independent", "kd"])
        assert students.names == ["independent", "kd"] and students.size == K and len(students) == 2 * K
        assert list(students) == students.groups["independent"] + students.groups["kd"]
        assert students.deployed == students.groups["kd"] and students.deployed_name == "kd"
        assert students.members() == students.groups
        for a, b in zip(students.groups["independent"], students.groups["kd"], strict=True):
            assert a is not b and same(a, b)  # own parameters, same initial weights
        single = build_cohorts(lambda: [toy.tiny_net(4) for _ in range(K)], "kdml")
        assert single.names == [None] and single.deployed_name is None and single.members() == {}

    def test_rules_are_checked_with_the_config_key(self, toy) -> None:
        with pytest.raises(ValueError, match="`num_students` must be >= 2"):
            build_cohorts(lambda: [toy.tiny_net(4)], "ml")
        with pytest.raises(ValueError, match=r"`mode`='kdml' must be one of `cohorts`"):
            build_cohorts(lambda: [toy.tiny_net(4) for _ in range(K)], "kdml", ["independent", "kd"])
        with pytest.raises(ValueError, match="K >= 1"):
            build_cohorts(lambda: [], "kd")

    def test_map_and_tree_walkers_keep_a_list(self, toy) -> None:
        students = build_cohorts(lambda: [toy.tiny_net(4) for _ in range(K)], "kd", ["independent", "kd"])
        wrapped = students.map(lambda s: nn.Sequential(s))
        assert wrapped.names == students.names and wrapped.mode == students.mode
        assert all(w[0] is s for w, s in zip(wrapped, students, strict=True))
        rebuilt = type(students)(s for s in students)  # what ignite's _tree_map does with a list
        assert list(rebuilt) == list(students)

    def test_trainer_and_evaluator_take_the_object(self, toy) -> None:
        """The same object, without `cohorts`/`mode` on the engines, trains as the flat list with them does."""
        teacher, initial_students = initial(toy)
        reference = train(toy, teacher, initial_students, "kd", cohorts=["independent", "kd"], max_epochs=1)
        teacher = copy.deepcopy(teacher)
        students = build_cohorts(lambda: [copy.deepcopy(s) for s in initial_students], "kd", ["independent", "kd"])
        trainer = KDMLTrainer(
            device="cpu", max_epochs=1, train_data_loader=toy.loader(32, 8, shuffle=True), teacher=teacher,
            students=students, student_optimizers=[adam(s) for s in students], teacher_optimizer=adam(teacher),
            loss_function=KDMLLoss(temperature=2.0), decollate=False,
        )  # fmt: skip
        torch.manual_seed(0)
        trainer.run()
        assert trainer.mode == "kd" and [c.name for c in trainer.cohorts] == ["independent", "kd"]
        assert all(same(a, b) for a, b in zip(trainer.students, reference.students, strict=True))
        with pytest.raises(ValueError, match="give `mode` and `cohorts` to it"):
            KDMLTrainer("cpu", 1, toy.loader(8, 8), teacher, students, [adam(s) for s in students], KDMLLoss(),
                        teacher_optimizer=adam(teacher), mode="kdml")  # fmt: skip
        evaluator = KDMLEvaluator("cpu", toy.loader(8, 8), teacher, students, decollate=False)
        evaluator.run()
        assert {"independent/pred", "kd/pred", "kd/pred_student_1"} <= set(evaluator.state.output)
