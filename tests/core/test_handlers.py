"""Standard MONAI/Ignite handlers on KDMLTrainer, resume, the non-finite guard and warm-up schedules."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from ignite.engine import Events
from monai.handlers import (
    CheckpointLoader,
    CheckpointSaver,
    EarlyStopHandler,
    LrScheduleHandler,
    StatsHandler,
    TensorBoardStatsHandler,
    ValidationHandler,
)
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.data import DataLoader

from monai_kdml.engines import KDMLEvaluator, KDMLTrainer
from monai_kdml.handlers import EpochSeedHandler, NonFiniteLossError, NonFiniteLossGuard, WarmupHandler, loss_terms
from monai_kdml.losses import KDMLLoss


def build(toy, max_epochs: int, dataset: torch.utils.data.Dataset | None = None, handlers: list | None = None) -> dict:
    """Everything a run needs, from fixed seeds, so two builds start identical.

    Lists of networks, optimizers and schedulers checkpoint as they are: ignite's ``Checkpoint`` walks containers.
    """
    teacher = toy.tiny_net(8, seed=0)
    students = [toy.tiny_net(4, seed=1), toy.tiny_net(4, seed=2)]
    teacher_opt = torch.optim.SGD(teacher.parameters(), lr=0.05, momentum=0.9)
    student_opts = [torch.optim.Adam(s.parameters(), lr=1e-2) for s in students]
    schedulers = [torch.optim.lr_scheduler.StepLR(o, 1, 0.5) for o in [teacher_opt, *student_opts]]
    dataset = dataset if dataset is not None else toy.BlobDataset(48)
    trainer = KDMLTrainer(
        device="cpu",
        max_epochs=max_epochs,
        train_data_loader=DataLoader(dataset, batch_size=8, shuffle=True),
        teacher=teacher,
        students=students,
        student_optimizers=student_opts,
        teacher_optimizer=teacher_opt,
        loss_function=KDMLLoss(temperature=2.0),
        train_handlers=[*(handlers or []), *(LrScheduleHandler(s, print_lr=False) for s in schedulers)],
    )
    EpochSeedHandler(seed=42).attach(trainer)
    objects = {
        "trainer": trainer,
        "teacher": teacher,
        "students": students,
        "teacher_optimizer": teacher_opt,
        "student_optimizers": student_opts,
        "lr_schedulers": schedulers,
    }
    return objects


def flat(objects: dict) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for n in (objects["teacher"], *objects["students"]) for p in n.parameters()])


def test_interrupted_run_resumes_to_identical_weights(toy, tmp_path: Path) -> None:
    reference = build(toy, max_epochs=4)
    reference["trainer"].run()

    first = build(toy, max_epochs=2)
    save = {k: v for k, v in first.items()}
    CheckpointSaver(str(tmp_path), save, save_interval=1, n_saved=1, epoch_level=True).attach(first["trainer"])
    first["trainer"].run()
    ckpt = tmp_path / "checkpoint_epoch=2.pt"
    assert ckpt.is_file()

    resumed = build(toy, max_epochs=4)
    CheckpointLoader(str(ckpt), {k: v for k, v in resumed.items()}).attach(resumed["trainer"])
    resumed["trainer"].run()
    assert resumed["trainer"].state.epoch == 4
    assert torch.equal(flat(resumed), flat(reference))
    lrs = [g["lr"] for g in resumed["teacher_optimizer"].param_groups]
    assert lrs == [g["lr"] for g in reference["teacher_optimizer"].param_groups]


class NanAt(torch.utils.data.Dataset):
    """``base`` with a NaN image at one index once armed, to break the loss mid-run."""

    def __init__(self, base: torch.utils.data.Dataset, bad_index: int) -> None:
        self.base = base
        self.bad_index = bad_index
        self.armed = False

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> dict:
        item = self.base[i]
        if self.armed and i == self.bad_index:
            item = {**item, "image": torch.full_like(item["image"], float("nan"))}
        return item


def test_non_finite_loss_stops_before_step_and_keeps_checkpoint(toy, tmp_path: Path) -> None:
    dataset = NanAt(toy.BlobDataset(48), bad_index=5)
    objects = build(toy, max_epochs=3, dataset=dataset, handlers=[NonFiniteLossGuard()])
    trainer = objects["trainer"]
    saver = CheckpointSaver(str(tmp_path), dict(objects), save_interval=1, n_saved=2, epoch_level=True, save_final=True)
    saver.attach(trainer)
    trainer.add_event_handler(Events.EPOCH_COMPLETED(once=1), lambda _: setattr(dataset, "armed", True))
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at iteration \d+ \(epoch 2\).*student_0=nan"):
        trainer.run()
    assert torch.isfinite(flat(objects)).all()  # no optimizer step happened with the NaN loss
    good = torch.load(tmp_path / "checkpoint_epoch=1.pt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in good["teacher"].values())


def test_warmup_ramps_weights_per_epoch(toy) -> None:
    objects = build(toy, max_epochs=4)
    trainer = objects["trainer"]
    loss = trainer.loss_function
    WarmupHandler(loss, "kd_weight", warmup_steps=2, start_value=0.0, end_value=1.0).attach(trainer)
    WarmupHandler(loss, "temperature", warmup_steps=2, start_value=4.0, end_value=2.0).attach(trainer)
    seen: list[tuple[float, float]] = []
    trainer.add_event_handler(
        Events.EPOCH_COMPLETED, lambda e: seen.append((e.loss_function.kd_weight, e.loss_function.temperature))
    )
    trainer.run()
    assert seen == [(0.0, 4.0), (0.5, 3.0), (1.0, 2.0), (1.0, 2.0)]


def test_warmup_rejects_unknown_attribute() -> None:
    with pytest.raises(ValueError, match="kd_wieght"):
        WarmupHandler(KDMLLoss(), "kd_wieght", warmup_steps=2)


def test_stats_tensorboard_validation_and_early_stop(toy, tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    objects = build(toy, max_epochs=6)
    trainer = objects["trainer"]
    evaluator = KDMLEvaluator(
        "cpu", DataLoader(toy.BlobDataset(32, seed=3), batch_size=16), objects["teacher"], list(objects["students"])
    )
    from ignite.metrics import Accuracy

    def ensemble_accuracy_output(output: list) -> tuple:
        return torch.stack([o["pred"] for o in output]), torch.stack([torch.as_tensor(o["label"]) for o in output])

    Accuracy(output_transform=ensemble_accuracy_output).attach(evaluator, "ensemble_acc")
    evaluator.state.key_metric_name = "ensemble_acc"
    # stop as soon as the ensemble accuracy does not improve for 1 validation (patience=1)
    EarlyStopHandler(
        patience=1, score_function=lambda e: e.state.metrics["ensemble_acc"], trainer=trainer, min_delta=1.0
    ).attach(evaluator)
    ValidationHandler(validator=evaluator, interval=1, epoch_level=True).attach(trainer)
    TensorBoardStatsHandler(log_dir=str(tmp_path), output_transform=loss_terms).attach(trainer)
    TensorBoardStatsHandler(
        log_dir=str(tmp_path), output_transform=lambda x: None, global_epoch_transform=lambda _: trainer.state.epoch
    ).attach(evaluator)
    StatsHandler(output_transform=loss_terms, name="kdml.test", iteration_log=True, epoch_log=False).attach(trainer)
    logging.getLogger("kdml.test").setLevel(logging.INFO)
    trainer.run()
    assert trainer.state.epoch == 2  # min_delta=1.0 can never be met: stopped after patience
    logged = "".join(capfd.readouterr())
    assert "loss_student_1" in logged and "kd_student_0" in logged
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    for tag in (
        "loss",
        "loss_teacher",
        "loss_student_0",
        "loss_student_1",
        "kd_student_1",
        "ml_student_0",
        "ensemble_acc",
    ):
        assert tag in tags, tag
    assert len(events.Scalars("loss_teacher")) == trainer.state.iteration
