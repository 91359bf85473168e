"""Training images per second of one KDMLTrainer (teacher + K students, mode kdml) on a CUDA device.

``python benchmarks/gpu_train_rate.py --preset resnet50-resnet18 --image-size 224 --batch 64 [--amp-dtype bfloat16]
[--channels-last] [--compile]``: random images already on the GPU (no data loading), ``--warmup`` iterations
untimed (cuDNN autotuning, compilation), then ``--iters`` timed ones; prints one line with images/s.
"""

from __future__ import annotations

import argparse
import time

import torch

from monai_kdml.engines import KDMLTrainer
from monai_kdml.losses import KDMLLoss
from monai_kdml.networks import build_network, get_preset


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="resnet50-resnet18")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--num-students", type=int, default=2)
    p.add_argument("--amp-dtype", default="none", help="none (float32), float16 or bfloat16")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--device", default="cuda", help="cuda[:i] (cpu only to check the script at tiny sizes)")
    args = p.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_train_rate.py: no CUDA device here.")
    torch.backends.cudnn.benchmark = True
    pair = get_preset(args.preset)
    teacher = build_network(pair.teacher).to(device)
    students = [build_network(pair.student).to(device) for _ in range(args.num_students)]
    images = torch.rand(args.batch, 3, args.image_size, args.image_size, device=device)
    labels = torch.randint(0, 2, (args.batch,), device=device)
    batches = [{"image": images, "label": labels}] * (args.warmup + args.iters)
    amp = args.amp_dtype != "none"
    trainer = KDMLTrainer(
        device=device,
        max_epochs=1,
        train_data_loader=batches,
        teacher=teacher,
        students=students,
        teacher_optimizer=torch.optim.SGD(teacher.parameters(), lr=1e-3),
        student_optimizers=[torch.optim.SGD(s.parameters(), lr=1e-3) for s in students],
        loss_function=KDMLLoss(),
        amp=amp,
        amp_dtype=args.amp_dtype if amp else None,
        channels_last=args.channels_last,
        compile=args.compile,
        decollate=False,
    )
    stamps: list[float] = []

    def stamp(_engine: object) -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        stamps.append(time.perf_counter())

    from ignite.engine import Events

    trainer.add_event_handler(Events.ITERATION_COMPLETED, stamp)
    trainer.run()
    timed = stamps[args.warmup - 1 :]
    rate = args.batch * (len(timed) - 1) / (timed[-1] - timed[0])
    flags = f"amp={args.amp_dtype} channels_last={args.channels_last} compile={args.compile}"
    print(f"train {args.preset} {args.image_size}px b{args.batch} K={args.num_students} {flags}: {rate:.0f} img/s")


if __name__ == "__main__":
    main()
