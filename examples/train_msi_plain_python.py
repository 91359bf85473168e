"""KD + mutual learning in a plain Python pipeline: no bundle, just the trainer, the evaluator and TensorBoard.

For people with their own pipelines: every piece below is an ordinary MONAI/Ignite object you can swap. It trains a
teacher and two students on the MSI demo tiles (or on Kather tiles with ``--dataset-dir``), validates the teacher,
each student and the student ensemble every epoch, writes TensorBoard event files and saves the ensemble.

    python examples/train_msi_plain_python.py --output-dir /tmp/kdml_plain --epochs 5
    tensorboard --logdir /tmp/kdml_plain/runs
"""

from __future__ import annotations

# first, before torch loads: makes torch's OpenMP threads wait passively (docs/threads.md)
import monai_kdml  # noqa: F401

# isort: split

import argparse
import json
import logging
from pathlib import Path

import torch
from monai.data import CacheDataset, DataLoader
from monai.handlers import CheckpointSaver, ValidationHandler

from monai_kdml.apps.msi import patient_auc_metrics, prepare_msi_datalists, tile_transforms
from monai_kdml.engines import KDMLEvaluator, KDMLTrainer
from monai_kdml.handlers import (
    EpochSeedHandler,
    EpochSummary,
    ProgressHandler,
    TensorBoardCurves,
    WarmupHandler,
    total_loss,
)
from monai_kdml.keys import network_names
from monai_kdml.losses import KDMLLoss
from monai_kdml.metrics import classification_metrics
from monai_kdml.networks import StudentEnsemble, build_network


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", type=Path, required=True)
    parser.add_argument("--dataset-dir", type=Path, default=None, help="Kather root; default: the demo tiles")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--num-students", type=int, default=2)
    parser.add_argument("--demo-patients", type=int, default=24)
    parser.add_argument("--demo-tiles-per-patient", type=int, default=12)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    torch.manual_seed(0)

    # 1. data: demo or real tiles, checked and split by patient before anything is built
    data = prepare_msi_datalists(
        args.dataset_dir,
        cache_dir=args.output_dir / "cache",
        demo_patients=args.demo_patients,
        demo_tiles_per_patient=args.demo_tiles_per_patient,
    )
    train_ds = CacheDataset(data.train, tile_transforms(args.image_size, train=True), progress=False)
    train_loader = DataLoader(train_ds, batch_size=16, shuffle=True)
    val_ds = CacheDataset(data.val, tile_transforms(args.image_size), progress=False)
    val_loader = DataLoader(val_ds, batch_size=32)

    # 2. networks: a ResNet18 teacher and slim ResNet10 students; the ensemble is what gets deployed
    teacher = build_network("resnet18")
    students = [build_network("resnet10_slim") for _ in range(args.num_students)]
    ensemble = StudentEnsemble(students)
    loss = KDMLLoss(temperature=2.0)

    # 3. validation: AUC, accuracy, balanced accuracy, F1, patient AUC for every network, plus disagreement
    names = network_names(len(students))
    metrics = {**classification_metrics(names), **patient_auc_metrics(names)}
    runs = str(args.output_dir / "runs")
    evaluator = KDMLEvaluator(
        device="cpu",
        val_data_loader=val_loader,
        teacher=teacher,
        students=students,
        ensemble=ensemble,
        batch_keys=["patient"],  # the datalist's patient ids reach the patient-level metrics
        key_val_metric={"ensemble_auc": metrics.pop("ensemble_auc")},
        additional_metrics=metrics,
        val_handlers=[
            CheckpointSaver(
                str(args.output_dir), {"model": ensemble}, save_key_metric=True, key_metric_filename="model.pt"
            ),
        ],
    )

    # 4. training: one batch, one forward per network; progress with an ETA, one table per epoch (each network's
    #    losses and metrics), TensorBoard curves grouped by quantity (train/kd/<network>, val/auc/<network>, lr/...)
    trainer = KDMLTrainer(
        device="cpu",
        max_epochs=args.epochs,
        train_data_loader=train_loader,
        teacher=teacher,
        students=students,
        teacher_optimizer=torch.optim.AdamW(teacher.parameters(), lr=2e-3),
        student_optimizers=[torch.optim.AdamW(s.parameters(), lr=2e-3) for s in students],
        loss_function=loss,
        mode="kdml",
        train_handlers=[
            ValidationHandler(validator=evaluator, interval=1),
            EpochSeedHandler(seed=0, dataset=train_ds),
            WarmupHandler(loss, "kd_weight", warmup_steps=1),
            WarmupHandler(loss, "ml_weight", warmup_steps=1),
            ProgressHandler("train {epoch}/{max_epochs}", output_transform=total_loss, run_eta=True),
            EpochSummary(evaluator, names),
            TensorBoardCurves(
                log_dir=runs,
                evaluator=evaluator,
                network_names=names,
                schedule_target=loss,
                schedule_attributes=["kd_weight", "ml_weight"],
            ),
        ],
    )
    trainer.run()
    results = {name: float(value) for name, value in evaluator.state.metrics.items()}
    (args.output_dir / "metrics.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
