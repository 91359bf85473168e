"""What a run tells its user: progress with an ETA, ignite's run messages, the per-epoch table, the end-of-run
summary, grouped TensorBoard curves with a custom-scalars layout, and the follow-up commands."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from ignite.engine import Events
from monai.handlers import ValidationHandler
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.custom_scalar import layout_pb2

from monai_kdml.commands import bundle_command
from monai_kdml.engines import KDMLEvaluator, KDMLTrainer
from monai_kdml.handlers import (
    EngineLogFilter,
    EpochSummary,
    LrScheduleHandlerGroup,
    ProgressHandler,
    RunSummary,
    TensorBoardCurves,
    WarmupHandler,
    split_loss_key,
    split_metric_key,
    tag_layout,
    total_loss,
)
from monai_kdml.keys import network_names
from monai_kdml.loop_progress import Progress, format_duration
from monai_kdml.losses import KDMLLoss
from monai_kdml.metrics import classification_metrics

NAMES = network_names(2)


def run(toy, tmp_path: Path, max_epochs: int = 2, extra: list | None = None, val_interval: int = 1) -> dict:
    """A toy teacher + 2 students run with every feedback handler attached, as the bundles list them."""
    teacher, students = toy.tiny_net(8, seed=0), [toy.tiny_net(4, seed=1), toy.tiny_net(4, seed=2)]
    loss = KDMLLoss(temperature=2.0)
    metrics = classification_metrics(NAMES)
    evaluator = KDMLEvaluator(
        "cpu", toy.loader(32, 8), teacher, students,
        key_val_metric={"ensemble_auc": metrics.pop("ensemble_auc")}, additional_metrics=metrics,
        val_handlers=[ProgressHandler("validate {epoch}", "batch", interval=3600, bar=False, report_first=False)],
    )  # fmt: skip
    optimizers = [torch.optim.Adam(n.parameters(), 1e-2) for n in (teacher, *students)]
    schedulers = [torch.optim.lr_scheduler.StepLR(o, 1, 0.5) for o in optimizers]
    summary = RunSummary(
        {"model": tmp_path / "model.pt", "missing": tmp_path / "nope.pt", "logs": tmp_path / "tb"},
        {"evaluate": "python -m monai.bundle run --config_file x.json"},
        evaluator=evaluator,
        title="Training",
    )
    trainer = KDMLTrainer(
        device="cpu", max_epochs=max_epochs, train_data_loader=toy.loader(48, 8), teacher=teacher,
        students=students, teacher_optimizer=optimizers[0], student_optimizers=optimizers[1:], loss_function=loss,
        train_handlers=[
            ValidationHandler(validator=evaluator, interval=val_interval, epoch_level=True),
            LrScheduleHandlerGroup(schedulers),
            WarmupHandler(loss, "kd_weight", warmup_steps=1),
            summary,  # listed early: it must still come after the model file below is written
            ProgressHandler("train {epoch}/{max_epochs}", interval=0, output_transform=total_loss, run_eta=True,
                            bar=False),
            EpochSummary(evaluator, NAMES),
            TensorBoardCurves(log_dir=str(tmp_path / "tb"), evaluator=evaluator, network_names=NAMES,
                              schedule_target=loss, schedule_attributes=["kd_weight", "ml_weight"]),
            *(extra or []),
        ],
    )  # fmt: skip
    trainer.add_event_handler(Events.COMPLETED, lambda _: torch.save({}, tmp_path / "model.pt"))
    trainer.run()
    return {"trainer": trainer, "evaluator": evaluator, "summary": summary}


@pytest.fixture(scope="module")
def logged(toy, module_tmp: Callable[[str], Path]) -> dict:
    """One run, its log records (INFO and up) and its folder."""
    tmp_path = module_tmp("feedback")
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = records.append  # type: ignore[method-assign]
    root = logging.getLogger()
    root.addHandler(handler)
    level = root.level
    root.setLevel(logging.INFO)
    try:
        objects = run(toy, tmp_path)
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    return {**objects, "messages": [r.getMessage() for r in records], "dir": tmp_path}


def test_progress_lines_give_the_rate_and_an_eta(logged: dict) -> None:
    lines = [m for m in logged["messages"] if m.startswith("train ")]
    assert lines[0].startswith("train 1/2: 1/6 (17 %), ") and "ETA" in lines[0] and "loss " in lines[0]
    assert any("run ETA" in m for m in lines)  # the remaining epochs are part of the estimate
    assert not any(m.startswith("validate") for m in logged["messages"])  # short validations stay silent


def test_fresh_run_says_starting_and_validation_lines_are_quiet(logged: dict) -> None:
    messages = logged["messages"]
    assert "Engine run starting with max_epochs=2." in messages
    assert not any("resuming from iteration 0" in m for m in messages)
    # the evaluator's routine lines are replaced by the epoch table; the trainer keeps its own
    assert sum(m.startswith("Engine run finished") for m in messages) == 1
    assert not any(m.startswith("Got new best metric") for m in messages)


def test_engine_log_filter_rewrites_only_a_start_at_iteration_zero() -> None:
    def record(msg: str) -> logging.LogRecord:
        return logging.LogRecord("ignite", logging.INFO, __file__, 1, msg, None, None)

    fresh = record("Engine run resuming from iteration 0, epoch 0 until 14 epochs")
    assert EngineLogFilter().filter(fresh) and fresh.getMessage() == "Engine run starting with max_epochs=14."
    resumed = record("Engine run resuming from iteration 120, epoch 5 until 14 epochs")
    assert EngineLogFilter().filter(resumed) and resumed.getMessage().startswith(
        "Engine run resuming from iteration 120"
    )
    assert not EngineLogFilter(quiet=True).filter(record("Epoch[3] Complete. Time taken: 00:00:01.000"))
    assert EngineLogFilter(quiet=True).filter(record("Saved model.pt"))


def test_epoch_summary_is_one_compact_table_per_epoch(logged: dict) -> None:
    tables = [m for m in logged["messages"] if m.startswith("Epoch ") and "network" in m]
    assert len(tables) == 2
    lines = tables[-1].splitlines()
    assert lines[0].startswith("Epoch 2/2 in ") and "ensemble_auc" in lines[0]
    header = lines[1].split()
    assert header[:5] == ["network", "loss", "ce", "kd", "ml"] and "|" in header and "auc" in header
    rows = {line.split()[0]: line.split() for line in lines[2:6]}
    assert list(rows) == NAMES
    assert (
        rows["teacher"][3] == "-" and rows["ensemble"][1] == "-"
    )  # no KD term for the teacher, no loss for the ensemble
    assert lines[6].split()[0] == "disagreement"
    assert max(len(line) for line in lines) < 120  # was one 1,259-character line


def test_epoch_summary_means_the_epochs_losses() -> None:
    summary = EpochSummary()
    summary._epoch_started(None)  # type: ignore[arg-type]
    for value in (1.0, 3.0):
        summary._sums = {k: summary._sums.get(k, 0) + v for k, v in {"ce_student_0": value, "loss": value}.items()}
        summary._count += 1
    assert summary.losses() == {"student_0": {"ce": 2.0}}


def test_run_summary_lists_outputs_that_exist_and_what_to_run_next(logged: dict) -> None:
    text = next(m for m in logged["messages"] if m.startswith("Training finished in"))
    evaluator = logged["evaluator"]
    assert f"best ensemble_auc {evaluator.state.best_metric:.3f} at epoch {evaluator.state.best_metric_epoch}" in text
    assert str(logged["dir"] / "model.pt") in text  # written by a COMPLETED handler attached after the summary
    assert "nope.pt" not in text and "Outputs:" in text
    assert "Next:\n  evaluate  python -m monai.bundle run --config_file x.json" in text
    assert logged["messages"][-2] == text and logged["messages"][-1].startswith("Engine run finished")


def test_tensorboard_curves_are_grouped_monotone_and_laid_out(logged: dict) -> None:
    (events,) = (logged["dir"] / "tb").glob("events.out.tfevents.*")
    acc = EventAccumulator(str(events), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    expected = {"train/loss/total", "train/loss/teacher", "train/ce/student_1", "train/kd/student_0",
                "train/ml/student_1", "val/auc/teacher", "val/f1/ensemble", "val/disagreement",
                "lr/teacher", "lr/student_1", "warmup/kd_weight", "warmup/ml_weight"}  # fmt: skip
    assert expected <= tags
    assert not any(tag.startswith(("ce_", "loss_", "ensemble_")) for tag in tags)  # no flat tags
    for tag in tags:
        steps = [e.step for e in acc.Scalars(tag)]
        assert steps == sorted(steps) and len(set(steps)) == len(steps), tag
    assert [e.step for e in acc.Scalars("val/auc/ensemble")] == [1, 2]
    assert [round(e.value, 4) for e in acc.Scalars("lr/teacher")] == [0.01, 0.005]  # the rate each epoch used
    assert [e.value for e in acc.Scalars("warmup/kd_weight")] == [0.0, 1.0]
    layout = layout_pb2.Layout()
    layout.ParseFromString(acc.Tensors("custom_scalars__config__")[-1].tensor_proto.string_val[0])
    charts = {c.title: {ch.title: list(ch.multiline.tag) for ch in c.chart} for c in layout.category}
    assert charts["validation (per epoch)"]["auc"] == ["^val/auc/.*"]
    assert charts["training (per iteration)"]["kd"] == ["^train/kd/.*"]
    assert set(charts["schedules"]) == {"learning rate", "warm-up"}


def test_tag_layout_and_name_splitting() -> None:
    layout = tag_layout(["train/kd_cls/student_0", "val/disagreement", "lr/teacher"])
    assert layout["training (per iteration)"]["kd_cls"] == ["Multiline", ["^train/kd_cls/.*"]]
    assert layout["validation (per epoch)"]["disagreement"] == ["Multiline", ["^val/disagreement$"]]
    assert split_loss_key("kd_cls_student_0") == ("kd_cls", "student_0")
    assert split_loss_key("loss") is None and split_loss_key("pred_teacher") is None
    assert split_metric_key("student_1_patient_auc") == ("student_1", "patient_auc")
    assert split_metric_key("wbf_sens_1fp", ["wbf"]) == ("wbf", "sens_1fp")
    assert split_metric_key("disagreement") == (None, "disagreement")


def test_progress_without_a_terminal_logs_every_interval(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("test.progress")
    with caplog.at_level(logging.INFO, "test.progress"), Progress(10, "demo tiles", "tile", logger, 3600) as p:
        for _ in range(10):
            p.update()
    assert [r.getMessage().split(",")[0] for r in caplog.records] == ["demo tiles: 1/10 (10 %)"]
    assert (
        format_duration(5) == "5.0 s" and format_duration(185) == "3 min 05 s" and format_duration(7500) == "2 h 05 min"
    )


def test_bundle_command_repeats_the_users_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    argv = ["/env/monai/bundle/__main__.py", "run", "--config_file", "bundles/polyp/train.json",
            "--bundle_root", "/runs/a b", "--dataset_dir=/data/kvasir", "--resume", "true"]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    evaluate = bundle_command(["train.json", "evaluate.json"])
    assert evaluate == (
        "python -m monai.bundle run --config_file \"['bundles/polyp/train.json','bundles/polyp/evaluate.json']\" "
        "--bundle_root '/runs/a b' --dataset_dir /data/kvasir"
    )  # --resume is not repeated
    infer = bundle_command("inference.json", keep=["bundle_root"], add={"dataset_dir": "<folder of frames>"})
    assert infer.endswith("inference.json --bundle_root '/runs/a b' --dataset_dir <folder of frames>")
    export = bundle_command("inference.json", "ckpt_export network_def", keep=[], meta_file=True)
    assert export.startswith("python -m monai.bundle ckpt_export network_def --config_file bundles/polyp/inference.")
    assert "--meta_file bundles/polyp/metadata.json" in export
    monkeypatch.setattr(sys, "argv", ["pytest"])
    assert bundle_command("inference.json", default_dir="bundles/msi").endswith("bundles/msi/inference.json")
