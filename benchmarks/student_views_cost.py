"""What per-student random views cost: training iterations of the MSI demo networks with and without
``student_transform`` (the bundles' ``--student_views true``), and the views alone.

One online teacher (ResNet18) and one cohort of K students (quarter-width ResNet10) per mode, on random 64 px batches
of 32 tiles (the demo run's shapes), CPU, one thread. Configurations are interleaved and repeated, and the median
time per iteration is reported, so a shared machine's load affects both alike.

    python benchmarks/student_views_cost.py [--iterations 6] [--repeats 3] [--cohorts 4] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from monai_kdml.data import BatchAugment
from monai_kdml.engines import KDMLTrainer
from monai_kdml.losses import KDMLLoss
from monai_kdml.networks import build_cohorts, build_network

MODES = ["independent", "kd", "ml", "kdml"]


def trainer(views: bool, num_cohorts: int, batches: list[dict]) -> KDMLTrainer:
    torch.manual_seed(0)
    teacher = build_network("resnet18", spatial_dims=2, in_channels=3, num_classes=2)
    cohorts = MODES[-num_cohorts:]
    students = build_cohorts(lambda: [build_network("resnet10_slim", 2, 3, 2) for _ in range(2)], "kdml", cohorts)
    return KDMLTrainer(
        device="cpu",
        max_epochs=1,
        train_data_loader=batches,
        teacher=teacher,
        students=students,
        student_optimizers=[torch.optim.AdamW(s.parameters(), 2e-3) for s in students],
        teacher_optimizer=torch.optim.AdamW(teacher.parameters(), 2e-3),
        loss_function=KDMLLoss(temperature=2.0),
        student_transform=BatchAugment() if views else None,
        decollate=False,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cohorts", type=int, default=4)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    batches = [
        {"image": torch.rand(32, 3, 64, 64, generator=g), "label": torch.randint(0, 2, (32,), generator=g)}
        for _ in range(args.iterations)
    ]
    times: dict[str, list[float]] = {"without views": [], "with views": [], "views alone": []}
    augment = BatchAugment()
    for _ in range(args.repeats):
        for views in (False, True):
            run = trainer(views, args.cohorts, batches)
            start = time.process_time()
            run.run()
            times["with views" if views else "without views"].append((time.process_time() - start) / args.iterations)
        start = time.process_time()
        for batch in batches:
            for _k in range(2):  # one view per student position
                augment(batch["image"])
        times["views alone"].append((time.process_time() - start) / args.iterations)
    result = {name: statistics.median(values) for name, values in times.items()}
    result["overhead"] = result["with views"] / result["without views"] - 1
    result["setup"] = f"teacher resnet18 + {args.cohorts} cohorts x 2 resnet10_slim, batch 32 x 3 x 64 x 64, 1 thread"
    print(json.dumps(result, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
