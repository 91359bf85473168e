"""What a frozen teacher in bfloat16 saves: peak memory and time per KD+ML iteration, float32 vs bfloat16.

Usage (from the repository root)::

    python benchmarks/frozen_teacher_precision.py [--preset vit_small-resnet18] [--teacher NAME] [--image-size 224]
        [--batch-size 8] [--iterations 5] [--repeats 3] [--threads 1] [--device cpu]

Each measurement is a fresh subprocess (so peak RSS, ``VmHWM``, belongs to one configuration): it builds the
preset's teacher (random weights saved to a temporary file and loaded back, as a frozen teacher must be) and two
students, trains them with ``KDMLTrainer(teacher_mode="frozen", teacher_dtype=...)`` on random images for one warm-up
and ``--iterations`` timed iterations, and reports the median seconds per iteration, the median seconds inside the
teacher's forward and the peak RSS. Configurations are interleaved (``float32, bfloat16, bfloat16, float32, ...``)
``--repeats`` times and the table shows medians and the ratio bfloat16 / float32. On CUDA the peak is
``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

__all__ = ["main"]

ROOT = Path(__file__).resolve().parents[1]


def worker(args: argparse.Namespace) -> dict[str, float]:
    """One configuration in this process; returns its measurements."""
    from ignite.engine import Events

    from monai_kdml.engines import KDMLTrainer
    from monai_kdml.losses import KDMLLoss
    from monai_kdml.memory import peak_resident_bytes
    from monai_kdml.networks import TIMM_PREFIX, build_network, get_preset

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    preset = get_preset(args.preset)
    teacher_name = args.teacher or preset.teacher
    baseline_mib = peak_resident_bytes() / 2**20
    sized = {"img_size": args.image_size} if teacher_name.startswith(TIMM_PREFIX) else {}
    teacher = build_network(teacher_name, num_classes=2, **sized)
    with tempfile.TemporaryDirectory() as tmp:
        torch.save(teacher.state_dict(), Path(tmp) / "teacher.pt")
        students = [build_network(preset.student, num_classes=2).to(device) for _ in range(2)]
        shape = (args.batch_size, 3, args.image_size, args.image_size)
        batches = [
            {"image": torch.randn(shape), "label": torch.randint(0, 2, (args.batch_size,))}
            for _ in range(args.iterations + 1)
        ]
        trainer = KDMLTrainer(
            device=device,
            max_epochs=1,
            train_data_loader=batches,
            teacher=teacher.to(device),
            students=students,
            student_optimizers=[torch.optim.AdamW(s.parameters(), lr=1e-4) for s in students],
            loss_function=KDMLLoss(temperature=2.0),
            teacher_mode="frozen",
            teacher_checkpoint=Path(tmp) / "teacher.pt",
            teacher_dtype=None if args.worker == "float32" else args.worker,
        )
    iteration_s: list[float] = []
    teacher_s: list[float] = []
    clock: dict[str, float] = {}

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def start_teacher(*_a: object) -> None:
        sync()
        clock["teacher"] = time.perf_counter()

    def stop_teacher(*_a: object) -> None:
        sync()
        teacher_s.append(time.perf_counter() - clock["teacher"])

    teacher.register_forward_pre_hook(start_teacher)
    teacher.register_forward_hook(stop_teacher)

    @trainer.on(Events.ITERATION_STARTED)
    def _start(_engine: object) -> None:
        sync()
        clock["iteration"] = time.perf_counter()

    @trainer.on(Events.ITERATION_COMPLETED)
    def _stop(_engine: object) -> None:
        sync()
        iteration_s.append(time.perf_counter() - clock["iteration"])

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    trainer.run()
    peak_mib = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else peak_resident_bytes() / 2**20
    teacher_mib = sum(p.numel() * p.element_size() for p in teacher.parameters()) / 2**20
    return {
        "s_per_iteration": statistics.median(iteration_s[1:]),  # the first iteration is the warm-up
        "teacher_forward_s": statistics.median(teacher_s[1:]),
        "peak_mib": peak_mib,
        "peak_above_imports_mib": peak_mib - (0.0 if device.type == "cuda" else baseline_mib),
        "teacher_weights_mib": teacher_mib,
    }


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="vit_small-resnet18")
    parser.add_argument("--teacher", default=None, help="override the preset's teacher, e.g. timm:vit_base_patch16_224")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return {}
    passed = list(argv if argv is not None else sys.argv[1:])
    dtypes = ("float32", "bfloat16")
    runs: dict[str, list[dict[str, float]]] = {d: [] for d in dtypes}
    for r in range(args.repeats):
        for dtype in dtypes if r % 2 == 0 else dtypes[::-1]:  # interleaved, alternating order
            cmd = [sys.executable, str(Path(__file__).resolve()), *passed, "--worker", dtype]
            done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
            if done.returncode:
                raise RuntimeError(f"{dtype} run failed:\n{done.stderr[-3000:]}")
            runs[dtype].append(json.loads(done.stdout.strip().splitlines()[-1]))
    medians = {d: {k: statistics.median(run[k] for run in runs[d]) for k in runs[d][0]} for d in dtypes}
    teacher = args.teacher or f"{args.preset} teacher"
    print(
        f"frozen teacher {teacher}, 2 students, {args.image_size} px, batch {args.batch_size}, device {args.device}, "
        f"{args.threads} thread(s); median of {args.repeats} interleaved runs x {args.iterations} iterations"
    )
    print(f"{'measure':<26}{'float32':>12}{'bfloat16':>12}{'bf16/fp32':>12}")
    for key in medians["float32"]:
        a, b = medians["float32"][key], medians["bfloat16"][key]
        print(f"{key:<26}{a:>12.3f}{b:>12.3f}{b / a:>12.2f}")
    return medians


if __name__ == "__main__":
    main()
