"""A tiny but complete KDML run (teacher + students, validation, model selection, TrainingCheckpoint) for the checkpoint
tests: built in-process through the ``toy_run`` fixture, run as a script in subprocesses, forked by the kill driver.

Every random source is exercised, so an inexact resume shows: the augmentation draws from Python, NumPy and torch,
the teacher has dropout, the loader shuffles. The key metric is scripted per epoch (best at epoch 2 by default), so
model selection has a best epoch before any later interruption.

    python tests/core/toy_run.py --workdir /tmp/run --max-epochs 5 [--resume]
"""

from __future__ import annotations

import argparse
import logging
import random
import sys
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from ignite.engine import Events
from ignite.metrics import Metric
from monai.handlers import StatsHandler, ValidationHandler
from torch import nn
from torch.utils.data import DataLoader, Dataset

from monai_kdml.engines import KDMLEvaluator, KDMLTrainer
from monai_kdml.handlers import (
    BestModelSaver,
    EpochSeedHandler,
    LrScheduleHandlerGroup,
    ModelSelectionState,
    NonFiniteLossGuard,
    TrainingCheckpoint,
    resume_checkpoint,
)
from monai_kdml.losses import KDMLLoss
from monai_kdml.networks import StudentEnsemble

torch.set_num_threads(1)

SCORES = (0.5, 0.9, 0.6, 0.7, 0.8, 0.75, 0.85, 0.6)
"""The scripted key metric of epochs 1, 2, ...: best at epoch 2, every later epoch worse."""


class AugmentedBlobs(Dataset):
    """8x8 blob images (class 1 bright, class 0 dim) augmented with Python, NumPy and torch random draws."""

    def __init__(self, num: int = 48, seed: int = 0, augment: bool = True) -> None:
        g = torch.Generator().manual_seed(seed)
        self.images = torch.randn(num, 1, 8, 8, generator=g) * 0.5
        self.labels = torch.randint(0, 2, (num,), generator=g)
        for i, (r, c) in enumerate(torch.randint(0, 5, (num, 2), generator=g).tolist()):
            self.images[i, 0, r : r + 3, c : c + 3] += 2.0 if self.labels[i] == 1 else 0.5
        self.augment = augment
        self.broken = False  # every image NaN, to make the loss fail

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        image = self.images[i]
        if self.augment:
            image = image.flip(-1) if random.random() < 0.5 else image
            image = image * float(np.random.uniform(0.9, 1.1)) + 0.1 * torch.randn_like(image)
        if self.broken:
            image = torch.full_like(image, float("nan"))
        return {"image": image, "label": self.labels[i]}


class EpochScore(Metric):
    """A key metric scripted per epoch: ``scores[epoch - 1]``."""

    def __init__(self, scores: Sequence[float]) -> None:
        self.scores = list(scores)
        self.epoch = 0
        super().__init__()

    def reset(self) -> None:
        pass

    def update(self, output: Any) -> None:
        pass

    def started(self, engine: Any) -> None:
        self.epoch = engine.state.epoch
        super().started(engine)

    def compute(self) -> float:
        return self.scores[(self.epoch - 1) % len(self.scores)]


class Ballast:
    """A big constant tensor in the checkpoint, so that saving takes long enough to be killed in the middle."""

    def __init__(self, megabytes: float) -> None:
        self.tensor = torch.ones(int(megabytes * 2**18))

    def state_dict(self) -> dict:
        return {"x": self.tensor}

    def load_state_dict(self, state: dict) -> None:
        pass


def net(width: int, seed: int, dropout: float = 0.0) -> nn.Module:
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, width, 3, padding=1)]
    layers += [nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 2)]
    return nn.Sequential(*layers, nn.Dropout(dropout)) if dropout else nn.Sequential(*layers)


def build(
    workdir: str | Path,
    max_epochs: int = 4,
    resume: bool = False,
    resume_from: str | Path | None = None,
    num_students: int = 2,
    student_width: int = 4,
    seed: int = 0,
    scores: Sequence[float] = SCORES,
    ballast_mb: float = 0.0,
    signals: Sequence[str] = ("SIGTERM", "SIGINT"),
    iteration_interval: int = 0,
    n_saved: int = 1,
    before_checkpoint: Sequence[Any] = (),
    checkpoint_first: bool = False,
) -> SimpleNamespace:
    """Everything of one run, from fixed seeds; ``resume`` continues from the newest checkpoint in ``workdir/models``
    (``resume_from``: from that file).

    ``train_handlers`` are ``[StatsHandler, ValidationHandler, LR schedulers, EpochSeedHandler, *before_checkpoint,
    TrainingCheckpoint]``: the checkpoint handler comes after MONAI's StatsHandler (or first, ``checkpoint_first``).
    """
    ckpt_dir = Path(workdir) / "models"
    teacher = net(8, seed, dropout=0.2)
    students = [net(student_width, seed + 1 + k) for k in range(num_students)]
    teacher_opt = torch.optim.SGD(teacher.parameters(), lr=0.05, momentum=0.9)
    student_opts = [torch.optim.Adam(s.parameters(), lr=1e-2) for s in students]
    optimizers = [teacher_opt, *student_opts]
    schedulers = [torch.optim.lr_scheduler.StepLR(o, 1, 0.7) for o in optimizers]
    dataset = AugmentedBlobs(48, seed)
    ensemble = StudentEnsemble(students)
    evaluator = KDMLEvaluator(
        "cpu",
        DataLoader(AugmentedBlobs(16, seed + 100, augment=False), batch_size=8),
        teacher,
        students,
        ensemble=ensemble,
        key_val_metric={"score": EpochScore(scores)},
        val_handlers=[
            BestModelSaver(ckpt_dir, {"model": ensemble}, "model.pt"),
            BestModelSaver(ckpt_dir, {"teacher": teacher, "students": students}, "best_networks.pt"),
        ],
    )
    objects: dict[str, Any] = {
        "teacher": teacher,
        "students": students,
        "optimizers": optimizers,
        "lr_schedulers": schedulers,
        "model_selection": ModelSelectionState(evaluator),
    }
    if ballast_mb:
        objects["ballast"] = Ballast(ballast_mb)
    checkpoint = TrainingCheckpoint(
        ckpt_dir,
        objects,
        resume_from=resume_from if resume_from is not None else resume_checkpoint(ckpt_dir, resume),
        n_saved=n_saved,
        iteration_interval=iteration_interval,
        signals=signals,
    )
    logging.getLogger("toy.train").setLevel(logging.INFO)
    handlers = [
        StatsHandler(name="toy.train", iteration_log=False),
        ValidationHandler(validator=evaluator, interval=1, epoch_level=True),
        LrScheduleHandlerGroup(schedulers),
        EpochSeedHandler(seed=seed + 42, dataset=dataset),
        NonFiniteLossGuard(),
        *before_checkpoint,
    ]
    trainer = KDMLTrainer(
        device="cpu",
        max_epochs=max_epochs,
        train_data_loader=DataLoader(dataset, batch_size=8, shuffle=True),
        teacher=teacher,
        students=students,
        student_optimizers=student_opts,
        teacher_optimizer=teacher_opt,
        loss_function=KDMLLoss(temperature=2.0),
        train_handlers=[checkpoint, *handlers] if checkpoint_first else [*handlers, checkpoint],
    )
    return SimpleNamespace(
        trainer=trainer,
        evaluator=evaluator,
        checkpoint=checkpoint,
        teacher=teacher,
        students=students,
        optimizers=optimizers,
        dataset=dataset,
        ckpt_dir=ckpt_dir,
    )


def weights(networks: Sequence[nn.Module]) -> torch.Tensor:
    """All parameters of ``networks``, flattened into one vector."""
    return torch.cat([p.detach().flatten() for n in networks for p in n.parameters()])


def checkpoint_weights(path: str | Path) -> torch.Tensor:
    """The teacher's and students' parameters stored in a training checkpoint, flattened in :func:`weights` order."""
    state = torch.load(path, weights_only=True)
    nets = [state["teacher"], *state["students"]]
    return torch.cat([v.flatten() for s in nets for v in s.values()])  # no buffers: the same order


def train(workdir: str | Path, resume: bool = False, **kwargs: Any) -> SimpleNamespace:
    """Build and run; returns the run."""
    run = build(workdir, resume=resume, **kwargs)
    run.trainer.run()
    return run


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--max-epochs", type=int, default=4)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--ballast-mb", type=float, default=0.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(name)s %(levelname)s %(message)s")
    run = build(args.workdir, max_epochs=args.max_epochs, resume=args.resume, ballast_mb=args.ballast_mb)
    run.trainer.add_event_handler(
        Events.ITERATION_COMPLETED, lambda e: print(f"iteration {e.state.iteration}", flush=True)
    )
    run.trainer.run()


if __name__ == "__main__":
    main()
