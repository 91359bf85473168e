"""Teacher + two students segmenting generated 3D blobs stored as NIfTI: the engine is not tied to 2D tiles.

Writes ``--num-volumes`` random volumes (bright spheres in noise) as ``.nii.gz`` with nibabel, reads them back with
MONAI's ``LoadImaged``, trains a MONAI UNet teacher and two thinner UNet students with voxel-wise KD + ML
(``KDMLLoss`` with a Dice-CE supervised loss) and reports the mean Dice of the teacher, each student and the student
ensemble. TensorBoard event files go to ``<output-dir>/runs`` (``train/dice_ce/<network>``, ``val/dice/<network>``:
every network on one chart in the "custom scalars" dashboard).

    python examples/segment_3d_blobs.py --output-dir /tmp/blobs3d --epochs 10
"""

from __future__ import annotations

# first, before torch loads: makes torch's OpenMP threads wait passively (docs/threads.md)
import monai_kdml  # noqa: F401

# isort: split

import argparse
import json
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.data import DataLoader, Dataset
from monai.handlers import MeanDice, ValidationHandler, from_engine
from monai.losses import DiceCELoss
from monai.networks.nets import UNet
from monai.transforms import (
    AsDiscreted,
    Compose,
    EnsureChannelFirstd,
    LoadImaged,
    RandFlipd,
    ScaleIntensityd,
)

from monai_kdml.engines import KDMLEvaluator, KDMLTrainer
from monai_kdml.handlers import EpochSummary, TensorBoardCurves
from monai_kdml.keys import network_names, pred_key
from monai_kdml.losses import KDMLLoss


def write_blob_volumes(folder: Path, num: int, size: int, seed: int = 0) -> list[dict[str, str]]:
    """Write ``num`` image/label NIfTI pairs of 1-3 spheres each; return the datalist."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(size)] * 3, indexing="ij"), axis=-1)
    items = []
    for i in range(num):
        label = np.zeros((size,) * 3, dtype=np.uint8)
        for _ in range(rng.integers(1, 4)):
            radius = rng.uniform(size / 8, size / 4)
            centre = rng.uniform(radius, size - radius, size=3)
            label[np.linalg.norm(grid - centre, axis=-1) <= radius] = 1
        image = label * rng.uniform(0.8, 1.2) + rng.normal(0, 0.35, label.shape)
        paths = {"image": folder / f"vol{i:03d}.nii.gz", "label": folder / f"vol{i:03d}_seg.nii.gz"}
        nib.save(nib.Nifti1Image(image.astype(np.float32), np.eye(4)), paths["image"])
        nib.save(nib.Nifti1Image(label, np.eye(4)), paths["label"])
        items.append({k: str(v) for k, v in paths.items()})
    return items


def unet(channels: tuple[int, ...], seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return UNet(spatial_dims=3, in_channels=1, out_channels=2, channels=channels, strides=(2,) * (len(channels) - 1))


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", type=Path, required=True)
    parser.add_argument("--num-volumes", type=int, default=24)
    parser.add_argument("--size", type=int, default=32, help="edge of the cubic volumes, in voxels")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--mode", default="kdml", choices=["independent", "kd", "ml", "kdml"])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)

    datalist = write_blob_volumes(args.output_dir / "data", args.num_volumes, args.size)
    split = max(2, len(datalist) // 4)
    load = [LoadImaged(keys=["image", "label"], image_only=True), EnsureChannelFirstd(keys=["image", "label"])]
    train_tf = Compose([*load, ScaleIntensityd(keys="image"), RandFlipd(keys=["image", "label"], prob=0.5)])
    val_tf = Compose([*load, ScaleIntensityd(keys="image")])
    train_loader = DataLoader(Dataset(datalist[split:], train_tf), batch_size=2, shuffle=True)
    val_loader = DataLoader(Dataset(datalist[:split], val_tf), batch_size=2)

    teacher = unet((16, 32, 64), seed=0)
    students = [unet((4, 8, 16), seed=1), unet((4, 8, 16), seed=2)]
    names = network_names(len(students))
    # Dice per network: argmax + one-hot of every prediction key and of the label
    post = Compose(
        [
            AsDiscreted(keys=[pred_key(n) for n in names], argmax=True, to_onehot=2),
            AsDiscreted(keys="label", to_onehot=2),
        ]
    )
    metrics = {
        f"{n}_dice": MeanDice(include_background=False, output_transform=from_engine([pred_key(n), "label"]))
        for n in names
    }
    evaluator = KDMLEvaluator(
        device="cpu",
        val_data_loader=val_loader,
        teacher=teacher,
        students=students,
        postprocessing=post,
        key_val_metric={"ensemble_dice": metrics.pop("ensemble_dice")},
        additional_metrics=metrics,
    )
    trainer = KDMLTrainer(
        device="cpu",
        max_epochs=args.epochs,
        train_data_loader=train_loader,
        teacher=teacher,
        students=students,
        teacher_optimizer=torch.optim.Adam(teacher.parameters(), 3e-3),
        student_optimizers=[torch.optim.Adam(s.parameters(), 3e-3) for s in students],
        loss_function=KDMLLoss(temperature=2.0, supervised_loss=DiceCELoss(to_onehot_y=True, softmax=True)),
        mode=args.mode,
        train_handlers=[
            ValidationHandler(validator=evaluator, interval=max(1, args.epochs // 2)),
            EpochSummary(evaluator, names),  # per network: mean Dice-CE, KD and ML terms, and the Dice when validated
            TensorBoardCurves(log_dir=str(args.output_dir / "runs"), evaluator=evaluator, network_names=names),
        ],
    )
    trainer.run()
    if evaluator.state.epoch != trainer.state.epoch:  # the last epoch was not validated: score it, at its step
        evaluator.run(global_epoch=trainer.state.epoch)
    results = {name: float(value) for name, value in evaluator.state.metrics.items()}
    (args.output_dir / "dice.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
