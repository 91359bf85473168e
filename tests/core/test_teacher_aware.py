"""Teacher-aware KD schedules (issue 17): the iteration-level ramp and the teacher-standing gate, on real Ignite
engines and a real KDMLTrainer."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from ignite.engine import Engine, Events
from torch.utils.data import DataLoader

from monai_kdml.engines import KDMLTrainer
from monai_kdml.handlers import RampHandler, TeacherStandingGate, WarmupHandler, check_gate_metric, teacher_margin
from monai_kdml.handlers.schedules import ramp_fraction
from monai_kdml.losses import KDMLLoss


def _record(engine: Engine, loss: KDMLLoss) -> list[float]:
    seen: list[float] = []
    engine.add_event_handler(Events.ITERATION_STARTED, lambda _: seen.append(loss.kd_weight))
    return seen


@pytest.mark.parametrize("shape", ["linear", "cosine", "sigmoid"])
def test_ramp_over_epochs_at_iteration_level(shape: str) -> None:
    loss = KDMLLoss(kd_weight=2.0)
    engine = Engine(lambda e, b: None)
    RampHandler(loss, "kd_weight", epochs=1.5, shape=shape).attach(engine)
    seen = _record(engine, loss)
    engine.run(range(4), max_epochs=3)  # 4 iterations per epoch: span 6 iterations
    expected = [2.0 * ramp_fraction(i / 6, shape) for i in range(12)]
    assert seen == pytest.approx(expected)
    assert seen[0] == pytest.approx(0.0 if shape != "sigmoid" else 2.0 * math.exp(-5))
    assert seen[6:] == [2.0] * 6 and all(a <= b for a, b in itertools.pairwise(seen))


def test_ramp_cosine_midpoint_and_bad_arguments() -> None:
    assert ramp_fraction(0.5, "cosine") == pytest.approx(0.5)
    assert ramp_fraction(0.25, "cosine") == pytest.approx((1 - math.cos(math.pi / 4)) / 2)
    with pytest.raises(ValueError, match="exactly one"):
        RampHandler(KDMLLoss(), "kd_weight")
    with pytest.raises(ValueError, match="shape"):
        RampHandler(KDMLLoss(), "kd_weight", steps=3, shape="cubic")


def test_ramp_resumes_on_the_same_schedule() -> None:
    loss = KDMLLoss()
    engine = Engine(lambda e, b: None)
    RampHandler(loss, "kd_weight", steps=10).attach(engine)
    seen = _record(engine, loss)
    engine.load_state_dict({"iteration": 4, "epoch_length": 2, "max_epochs": 4})  # as a resumed run restores it
    engine.run(range(2))
    assert seen == pytest.approx([0.4, 0.5, 0.6, 0.7])


def _trainer(toy, handlers_of, max_epochs: int = 2) -> tuple[KDMLTrainer, KDMLLoss]:
    torch.manual_seed(0)
    loss = KDMLLoss(temperature=2.0)
    teacher, students = toy.tiny_net(8, seed=0), [toy.tiny_net(4, seed=1), toy.tiny_net(4, seed=2)]
    trainer = KDMLTrainer(
        device="cpu",
        max_epochs=max_epochs,
        train_data_loader=DataLoader(toy.BlobDataset(16), batch_size=8, shuffle=False),
        teacher=teacher,
        students=students,
        student_optimizers=[torch.optim.SGD(s.parameters(), lr=0.05) for s in students],
        teacher_optimizer=torch.optim.SGD(teacher.parameters(), lr=0.05),
        loss_function=loss,
        train_handlers=handlers_of(loss),
    )
    return trainer, loss


def _weights(trainer: KDMLTrainer) -> list[torch.Tensor]:
    return [p.detach().clone() for net in [trainer.teacher, *trainer.students] for p in net.parameters()]


def test_a_finished_ramp_is_bit_for_bit_todays_protocol(toy) -> None:
    """Off means off: a span-0 ramp (and a 0-epoch warm-up) gives exactly the weights of today's run."""
    today, _ = _trainer(toy, lambda loss: [WarmupHandler(loss, "kd_weight", warmup_steps=0)])
    ramped, _ = _trainer(toy, lambda loss: [RampHandler(loss, "kd_weight", steps=0)])
    today.run()
    ramped.run()
    assert all(torch.equal(a, b) for a, b in zip(_weights(today), _weights(ramped), strict=True))


def test_teacher_margin_reads_every_cohort() -> None:
    metrics = {"teacher_auc": 0.8, "kd/student_0_auc": 0.7, "kdml/student_1_auc": 0.75, "kd/ensemble_auc": 0.9,
               "student_0_patient_auc": 0.99}  # fmt: skip
    assert teacher_margin(metrics, "auc") == pytest.approx(0.05)
    assert math.isnan(teacher_margin({"teacher_auc": 0.8}, "auc"))


def test_teacher_standing_gate_follows_the_validation_margin(toy) -> None:
    evaluator = Engine(lambda e, b: None)
    margins = iter([-0.02, 0.03, 0.10, 0.01])

    @evaluator.on(Events.EPOCH_COMPLETED)
    def _metrics(engine: Engine) -> None:  # stands in for the metric handlers of a KDMLEvaluator
        m = next(margins)
        engine.state.metrics = {"teacher_auc": 0.7 + m, "student_0_auc": 0.7, "student_1_auc": 0.6}

    gates: list[TeacherStandingGate] = []

    def handlers(loss: KDMLLoss) -> list:
        gates.append(TeacherStandingGate(loss, "kd_weight", evaluator, metric="auc", threshold=0.0, span=0.05))
        return [gates[0]]

    trainer, loss = _trainer(toy, handlers, max_epochs=4)
    seen = _record(trainer, loss)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda _: evaluator.run(range(1)))
    trainer.run()
    # 2 iterations per epoch; epoch 1 before any validation: 0; then the gate of the previous epoch's margin
    assert seen == pytest.approx([0.0, 0.0, 0.0, 0.0, 0.6, 0.6, 1.0, 1.0])
    assert gates[0].margins == pytest.approx([-0.02, 0.03, 0.10, 0.01]) and loss.kd_weight == pytest.approx(0.2)
    assert gates[0].state_dict() == {"value": pytest.approx(0.2)}


def test_the_gate_value_survives_a_resume_through_the_trainers_state() -> None:
    """A resumed run starts with the gate of the last validation, not with ``start_value``."""
    evaluator = Engine(lambda e, b: None)

    @evaluator.on(Events.EPOCH_COMPLETED)
    def _metrics(engine: Engine) -> None:
        engine.state.metrics = {"teacher_auc": 0.73, "student_0_auc": 0.7}  # margin 0.03 of span 0.05: 0.6

    first, loss = Engine(lambda e, b: None), KDMLLoss()
    TeacherStandingGate(loss, "kd_weight", evaluator, metric="auc", span=0.05).attach(first)
    first.add_event_handler(Events.EPOCH_COMPLETED, lambda _: evaluator.run(range(1)))
    first.run(range(2), max_epochs=2)
    saved = first.state_dict()  # what the training checkpoint holds for the trainer
    assert saved["teacher_gate_kd_weight"] == pytest.approx(0.6)

    resumed, loss = Engine(lambda e, b: None), KDMLLoss()
    TeacherStandingGate(loss, "kd_weight", Engine(lambda e, b: None), metric="auc", span=0.05).attach(resumed)
    resumed.load_state_dict({**saved, "max_epochs": 3})
    seen = _record(resumed, loss)
    resumed.run(range(2))
    assert seen == pytest.approx([0.6, 0.6])


def test_a_gate_metric_the_validation_does_not_compute_is_an_error_not_a_shut_gate() -> None:
    """A missing margin keeps the gate's value, so a misspelt metric would keep KD off for the whole run, quietly."""
    metrics = {"teacher_0_auc": 0.7, "teacher_auc": 0.7, "teacher_patient_auc": 0.8, "student_0_auc": 0.6}
    assert check_gate_metric("auc", metrics) == "auc"
    with pytest.raises(
        ValueError, match=r"`teacher_gate_metric` is 'AUC': .* no `teacher_AUC`. Valid: \['auc', 'patient_auc'\]\.$"
    ):
        check_gate_metric("AUC", metrics)
    evaluator = Engine(lambda e, b: None)
    evaluator.add_event_handler(Events.EPOCH_COMPLETED, lambda e: setattr(e.state, "metrics", metrics))
    trainer = Engine(lambda e, b: None)
    TeacherStandingGate(KDMLLoss(), "kd_weight", evaluator, metric="map", span=0.05).attach(trainer)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda _: evaluator.run(range(1)))
    with pytest.raises(ValueError, match="`metric` is 'map': the validation computes no `teacher_map`"):
        trainer.run(range(2), max_epochs=2)


def test_teacher_standing_gate_step_and_bad_span() -> None:
    gate = TeacherStandingGate(KDMLLoss(kd_weight=1.5), "kd_weight", Engine(lambda e, b: None), "auc", threshold=0.01)
    assert [gate.gate(m) for m in (-0.1, 0.01, 0.02)] == [0.0, 0.0, 1.5]
    with pytest.raises(ValueError, match="span"):
        TeacherStandingGate(KDMLLoss(), "kd_weight", Engine(lambda e, b: None), "auc", span=-1)
