"""Distil an ensemble of frozen teachers (e.g. the folds of a model-zoo bundle) into two students.

Trains three small teachers on generated blob images (a bright blob: class 1, a dim one: class 0), saves each as a
weight file, builds a :class:`~monai_kdml.networks.TeacherEnsemble` from the three files (its prediction, and the
KD target, is their mean class probability) and trains two students from it with KD + mutual learning. Validation
scores every member, the teacher ensemble, each student and the student ensemble.

    python examples/distil_teacher_ensemble.py --output-dir /tmp/kdml_teacher_ensemble
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
from monai.handlers import StatsHandler, ValidationHandler
from torch import nn
from torch.utils.data import DataLoader, Dataset

from monai_kdml.engines import KDMLEvaluator, KDMLTrainer
from monai_kdml.keys import network_names
from monai_kdml.losses import KDMLLoss, cross_entropy
from monai_kdml.metrics import classification_metrics
from monai_kdml.networks import TeacherEnsemble, build_network

NUM_TEACHERS = 3


class Blobs(Dataset):
    """One-channel ``size`` px images with a 4x4 blob, bright for class 1 and dim for class 0, in noise."""

    def __init__(self, num: int, size: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.randint(0, 2, (num,), generator=g)
        self.images = torch.randn(num, 1, size, size, generator=g) * 0.6
        corners = torch.randint(0, size - 4, (num, 2), generator=g)
        for i, (r, c) in enumerate(corners.tolist()):
            self.images[i, 0, r : r + 4, c : c + 4] += 1.5 if self.labels[i] == 1 else 0.5

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"image": self.images[i], "label": self.labels[i]}


def teacher_network() -> nn.Module:
    return build_network("resnet10_slim", spatial_dims=2, in_channels=1, num_classes=2)


def student_network() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
        nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(8, 2),
    )  # fmt: skip


def train_teacher(seed: int, loader: DataLoader, epochs: int, path: Path) -> None:
    """A plain PyTorch loop: stands in for a model you already trained elsewhere; saves only its weights."""
    torch.manual_seed(seed)
    net = teacher_network()
    optimizer = torch.optim.AdamW(net.parameters(), lr=3e-3)
    for _ in range(epochs):
        for batch in loader:
            optimizer.zero_grad()
            cross_entropy(net(batch["image"]), batch["label"]).backward()
            optimizer.step()
    torch.save(net.state_dict(), path)


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=5, help="distillation epochs")
    parser.add_argument("--teacher-epochs", type=int, default=4)
    parser.add_argument("--num-train", type=int, default=256)
    parser.add_argument("--num-val", type=int, default=128)
    parser.add_argument("--size", type=int, default=24)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    train_loader = DataLoader(Blobs(args.num_train, args.size, seed=0), batch_size=32, shuffle=True)
    val_loader = DataLoader(Blobs(args.num_val, args.size, seed=1), batch_size=64)

    # 1. three teachers trained with different seeds, each saved as a weight file (as model-zoo folds would be)
    files = [args.output_dir / f"teacher_{m}.pt" for m in range(NUM_TEACHERS)]
    for m, path in enumerate(files):
        train_teacher(seed=100 + m, loader=train_loader, epochs=args.teacher_epochs, path=path)

    # 2. the frozen teacher ensemble, built from the files (each checked strictly against its network)
    teacher = TeacherEnsemble([teacher_network() for _ in files], weights=files)
    students = [student_network() for _ in range(2)]

    # 3. validation: every member, the teacher ensemble, each student and the student ensemble
    metrics = classification_metrics(network_names(len(students), teacher_members=NUM_TEACHERS))
    evaluator = KDMLEvaluator(
        device="cpu",
        val_data_loader=val_loader,
        teacher=teacher,
        students=students,
        key_val_metric={"ensemble_auc": metrics.pop("ensemble_auc")},
        additional_metrics=metrics,
        val_handlers=[StatsHandler(iteration_log=False)],
    )

    # 4. distillation: the teacher is frozen (never updated), the KD target is the members' mean probability
    trainer = KDMLTrainer(
        device="cpu",
        max_epochs=args.epochs,
        train_data_loader=train_loader,
        teacher=teacher,
        students=students,
        student_optimizers=[torch.optim.AdamW(s.parameters(), lr=3e-3) for s in students],
        loss_function=KDMLLoss(temperature=2.0),
        teacher_mode="frozen",
        mode="kdml",
        train_handlers=[ValidationHandler(validator=evaluator, interval=args.epochs)],
    )
    trainer.run()
    results = {k: round(float(v), 4) for k, v in evaluator.state.metrics.items() if k.endswith(("_auc", "_acc"))}
    (args.output_dir / "metrics.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
