"""Networks, optimizers, batches and the hand-written steps every section compares the engines against."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from monai.data import MetaTensor, list_data_collate
from torch import nn

from monai_kdml.engines import KDMLTrainer
from monai_kdml.losses import KDMLLoss
from monai_kdml.networks import build_network, get_preset

__all__ = [
    "Networks",
    "adamw",
    "as_meta_batches",
    "build_networks",
    "build_one",
    "ce_step",
    "forward_all",
    "kdml_loss",
    "kdml_step",
    "kdml_trainer",
    "synthetic_batches",
]

LR = 1e-3
WEIGHT_DECAY = 1e-4


@dataclass
class Networks:
    """A teacher, its students and one AdamW optimizer each (same order as ``KDMLTrainer.trainable_optimizers``)."""

    teacher: nn.Module
    students: list[nn.Module]
    teacher_optimizer: torch.optim.Optimizer
    student_optimizers: list[torch.optim.Optimizer]

    @property
    def optimizers(self) -> list[torch.optim.Optimizer]:
        return [self.teacher_optimizer, *self.student_optimizers]

    @property
    def all(self) -> list[nn.Module]:
        return [self.teacher, *self.students]


def adamw(net: nn.Module) -> torch.optim.Optimizer:
    """The bundles' optimizer."""
    return torch.optim.AdamW(net.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)


def build_networks(
    preset: str, num_students: int, device: torch.device, seed: int = 0, channels_last: bool = False
) -> Networks:
    """The preset's teacher and ``num_students`` students, each from its own seed (same weights every run)."""
    pair = get_preset(preset)
    nets = []
    for k, name in enumerate([pair.teacher] + [pair.student] * num_students):
        torch.manual_seed(seed * 1000 + k)
        net = build_network(name).to(device)
        nets.append(net.to(memory_format=torch.channels_last) if channels_last else net)
    return Networks(nets[0], nets[1:], adamw(nets[0]), [adamw(s) for s in nets[1:]])


def build_one(preset: str, role: str, device: torch.device, seed: int = 0) -> tuple[nn.Module, torch.optim.Optimizer]:
    """Only the preset's ``"teacher"`` or one ``"student"`` (the weights :func:`build_networks` gives it) + AdamW."""
    pair = get_preset(preset)
    torch.manual_seed(seed * 1000 + (0 if role == "teacher" else 1))
    net = build_network(pair.teacher if role == "teacher" else pair.student).to(device)
    return net, adamw(net)


def synthetic_batches(
    count: int, batch: int, image_size: int, device: torch.device, seed: int = 0, channels_last: bool = False
) -> list[dict[str, torch.Tensor]]:
    """``count`` pre-loaded batches of ``(batch, 3, S, S)`` images in [0, 1] and binary labels, already on device."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        image = torch.rand(batch, 3, image_size, image_size, generator=g).to(device)
        if channels_last:
            image = image.contiguous(memory_format=torch.channels_last)
        out.append({"image": image, "label": torch.randint(0, 2, (batch,), generator=g).to(device)})
    return out


def as_meta_batches(batches: list[dict[str, torch.Tensor]]) -> list[dict[str, torch.Tensor]]:
    """The same batches as MONAI's pipeline delivers them: collated ``MetaTensor`` images and labels with metadata."""
    out = []
    for b in batches:
        items = [{"image": MetaTensor(img, meta={"filename_or_obj": f"tile_{i}.png"}), "label": MetaTensor(lab)}
                 for i, (img, lab) in enumerate(zip(b["image"], b["label"], strict=True))]  # fmt: skip
        out.append(list_data_collate(items))
    return out


def kdml_loss() -> KDMLLoss:
    """The bundles' loss settings (T = 2, every weight 1)."""
    return KDMLLoss(ce_weight=1.0, kd_weight=1.0, ml_weight=1.0, temperature=2.0)


def kdml_trainer(
    nets: Networks,
    data: Iterable,
    device: torch.device,
    epoch_length: int | None = None,
    decollate: bool = True,
    **kwargs: Any,
) -> KDMLTrainer:
    """A ``KDMLTrainer`` with its defaults: online teacher, ``kdml`` mode (``kd`` for one student), one epoch."""
    return KDMLTrainer(
        device=device,
        max_epochs=1,
        train_data_loader=data,
        teacher=nets.teacher,
        students=nets.students,
        student_optimizers=nets.student_optimizers,
        teacher_optimizer=nets.teacher_optimizer,
        loss_function=kdml_loss(),
        mode="kdml" if len(nets.students) > 1 else "kd",
        epoch_length=epoch_length,
        decollate=decollate,
        **kwargs,
    )


def kdml_step(nets: Networks, loss: KDMLLoss, image: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """What ``KDMLTrainer._iteration`` computes, by hand: zero grads, forwards, loss dict, one backward, the steps."""
    for opt in nets.optimizers:
        opt.zero_grad(set_to_none=False)  # the trainer's default (optim_set_to_none=False)
    nets.teacher.train()
    teacher_pred = nets.teacher(image)
    preds = []
    for student in nets.students:
        student.train()
        preds.append(student(image))
    terms = loss(preds, teacher_pred, label, use_kd=True, use_ml=len(preds) > 1)
    total = terms["loss"] + terms["teacher"]["loss"]
    total.backward()
    for opt in nets.optimizers:
        opt.step()
    return total.detach()


def ce_step(net: nn.Module, opt: torch.optim.Optimizer, image: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """One supervised step of one network alone (what ``SupervisedTrainer`` computes)."""
    opt.zero_grad(set_to_none=False)
    net.train()
    loss = F.cross_entropy(net(image), label)
    loss.backward()
    opt.step()
    return loss.detach()


@torch.no_grad()
def forward_all(networks: Sequence[nn.Module], image: torch.Tensor) -> list[torch.Tensor]:
    """Each network's eval-mode forward pass (the validation baseline)."""
    return [net(image) for net in networks]
