"""How hard is the MSI demo set? Train a tiny CNN for a short while and report tile- and patient-level AUC.

Usage (from the repository root)::

    python benchmarks/msi_demo_difficulty.py [--patients 80] [--tiles 8] [--size 64] [--epochs 30] [--seed 0]

Generates a demo set with :func:`monai_kdml.apps.msi.demo.make_msi_demo` (40 % of the patients held out in
``CRC_DX_TEST``) in a temporary folder, trains a 3-block CNN on ``CRC_DX_TRAIN`` (tiles downsized to ``--size`` px,
flips and 90-degree rotations) for ``--epochs`` epochs (at most ``--seconds``), and evaluates on the held-out
patients: tile AUC, and patient AUC of the mean tile probability. The generator aims at a tile AUC clearly above
chance but far from perfect (~0.7-0.9).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import defaultdict

import numpy as np
import torch
from monai.metrics import compute_roc_auc
from PIL import Image
from torch import nn

from monai_kdml.apps.msi.demo import make_msi_demo
from monai_kdml.apps.msi.kather import kather_datalist

__all__ = ["main"]


def _load(datalist: list[dict], size: int) -> tuple[torch.Tensor, torch.Tensor]:
    images = [
        np.asarray(Image.open(d["image"]).convert("RGB").resize((size, size), Image.Resampling.BOX)) for d in datalist
    ]
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0
    return (x - 0.5) / 0.25, torch.tensor([d["label"] for d in datalist], dtype=torch.float32)


def _tiny_cnn() -> nn.Module:
    def block(cin: int, cout: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(), nn.MaxPool2d(2))

    return nn.Sequential(
        block(3, 16), block(16, 32), block(32, 64), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 1)
    )


def _augment(x: torch.Tensor) -> torch.Tensor:
    if torch.rand(()) < 0.5:
        x = x.flip(-1)
    return torch.rot90(x, int(torch.randint(4, ())), (-2, -1))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=80)
    parser.add_argument("--tiles", type=int, default=8, help="tiles per patient")
    parser.add_argument("--size", type=int, default=64, help="CNN input size (tiles are generated at 224 px)")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seconds", type=float, default=120.0, help="training wall-time cap")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        root = make_msi_demo(
            tmp, num_patients=args.patients, tiles_per_patient=args.tiles, seed=args.seed, test_fraction=0.4
        )
        generation = time.perf_counter() - start
        train, test = kather_datalist(root, "train"), kather_datalist(root, "test")
        x_train, y_train = _load(train, args.size)
        x_test, y_test = _load(test, args.size)
    total = len(train) + len(test)
    print(f"generated {total} tiles in {generation:.1f} s ({generation / total * 1e3:.0f} ms/tile)")
    net = _tiny_cnn()
    opt = torch.optim.AdamW(net.parameters(), 2e-3, weight_decay=1e-4)
    loss_fn, epochs, start = nn.BCEWithLogitsLoss(), 0, time.perf_counter()
    while epochs < args.epochs and time.perf_counter() - start < args.seconds:
        net.train()
        for idx in torch.randperm(len(x_train)).split(32):
            opt.zero_grad()
            loss_fn(net(_augment(x_train[idx])).squeeze(1), y_train[idx]).backward()
            opt.step()
        epochs += 1
    net.eval()
    with torch.no_grad():
        prob = torch.sigmoid(net(x_test).squeeze(1))
        train_prob = torch.sigmoid(net(x_train).squeeze(1))
    per_patient: dict[str, list[float]] = defaultdict(list)
    labels = {}
    for item, p in zip(test, prob.tolist(), strict=True):
        per_patient[item["patient"]].append(p)
        labels[item["patient"]] = item["label"]
    patients = sorted(per_patient)
    patient_auc = compute_roc_auc(
        torch.tensor([np.mean(per_patient[p]) for p in patients]), torch.tensor([labels[p] for p in patients])
    )
    print(
        f"{len(train)} train / {len(test)} test tiles ({len(patients)} test patients), {args.size} px, "
        f"{epochs} epochs in {time.perf_counter() - start:.0f} s\n"
        f"train tile AUC {compute_roc_auc(train_prob, y_train):.3f} | "
        f"test tile AUC {compute_roc_auc(prob, y_test):.3f} | test patient AUC {patient_auc:.3f}"
    )


if __name__ == "__main__":
    main()
