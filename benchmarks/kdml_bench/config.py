"""Sizes of every measurement, per profile: ``smoke`` (harness check), ``default`` (2-core CPU, ~10 min), ``full``.

Everything a section measures is fixed here (networks, sizes, batches, counts, seeds), so two runs of one profile
measure the same work; only the clock differs.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

__all__ = ["PROFILES", "Profile", "Workload", "get_profile"]


@dataclass(frozen=True)
class Workload:
    """A classification training workload: teacher-student ``preset``, ``image_size`` px tiles, ``batch``."""

    preset: str
    image_size: int
    batch: int

    def label(self) -> str:
        return f"{self.preset} {self.image_size}px b{self.batch}"


@dataclass(frozen=True)
class Profile:
    """One profile; see the module docstring. Counts are iterations (batches) unless named otherwise."""

    name: str
    repeats: int
    warmup: int = 1
    # start the helper processes (probe forkserver, thread workers) at the beginning, so their imports overlap the
    # first sections; that perturbs those sections' timings, so only the smoke profile does it
    prestart: bool = False
    seed: int = 0
    num_students: int = 2
    # 1. engine overhead
    overhead: tuple[Workload, ...] = (Workload("demo", 32, 16),)
    overhead_iters: int = 4
    # 2. simultaneous against separate: (image_size, tiles per epoch, batch, dataset kinds) on PNG demo tiles
    pipeline_preset: str = "demo"
    pipeline_configs: tuple[tuple[int, int, int, tuple[str, ...]], ...] = (
        (32, 64, 16, ("plain", "cached")),
        (224, 8, 8, ("plain", "cached")),
    )
    pipeline_repeats: int = 3
    pipeline_tile_size: int = 224
    # 3. scaling in K
    scaling_workloads: tuple[Workload, ...] = (Workload("demo", 32, 4), Workload("demo", 32, 16))
    scaling_ks: tuple[int, ...] = (1, 2, 3, 4)
    scaling_iters: int = 4
    # 4. validation
    validation: Workload = Workload("demo", 32, 32)
    validation_iters: int = 8
    # 5. deployment
    deploy_presets: tuple[str, ...] = ("demo", "resnet50-resnet18", "resnet34-resnet10", "densenet121-densenet_small")
    deploy_size: int = 64
    deploy_mac_size: int = 224
    deploy_latency_iters: int = 5
    deploy_throughput_batch: int = 32
    deploy_polyp: tuple[str, ...] = ("cpu", "gpu")
    deploy_polyp_timed: tuple[str, ...] = ("cpu",)
    # (task, preset) timed in eager PyTorch and ONNX Runtime side by side (CPU only): the bundles' default models
    deploy_runtimes: tuple[tuple[str, str], ...] = (("msi", "demo"), ("polyp", "cpu"))
    # 6. memory: (preset, image_size, batches); batches run small to large, larger ones skipped once one exceeds
    memory_configs: tuple[tuple[str, int, tuple[int, ...]], ...] = (
        ("demo", 64, (8, 32)),
        ("resnet50-resnet18", 224, (8, 16, 32, 64)),
    )
    memory_limit_gib: float = 12.0
    # 7. threads
    threads_workload: Workload = Workload("demo", 32, 8)
    threads_counts: tuple[int, ...] = (1, 2)
    threads_iters: int = 3
    threads_repeats: int = 3
    # CUDA only: autocast / channels_last
    precision: Workload = Workload("resnet50-resnet18", 224, 64)
    precision_iters: int = 10
    # stretch: K identical students fused into grouped convolutions
    grouped: Workload = Workload("demo", 32, 16)
    grouped_ks: tuple[int, ...] = (2, 4)
    grouped_iters: int = 6


PROFILES: dict[str, Profile] = {
    "smoke": Profile(
        name="smoke",
        repeats=2,
        warmup=0,
        prestart=True,
        overhead=(Workload("demo", 32, 2),),
        overhead_iters=2,
        pipeline_configs=((32, 8, 4, ("plain", "cached")),),
        pipeline_repeats=1,
        pipeline_tile_size=48,
        scaling_workloads=(Workload("demo", 32, 2),),
        scaling_ks=(1, 2, 3),
        scaling_iters=1,
        validation=Workload("demo", 32, 4),
        validation_iters=2,
        deploy_presets=("demo",),
        deploy_size=32,
        deploy_mac_size=32,
        deploy_latency_iters=1,
        deploy_throughput_batch=4,
        deploy_polyp=("tiny",),
        deploy_polyp_timed=("tiny",),
        deploy_runtimes=(("msi", "demo"),),  # two ONNX exports: the smoke run stays inside its time limit
        memory_configs=(("demo", 32, (2, 4)),),
        memory_limit_gib=4.0,
        threads_workload=Workload("demo", 32, 2),
        threads_counts=(1,),
        threads_iters=1,
        threads_repeats=1,
        precision=Workload("demo", 32, 4),
        precision_iters=2,
        grouped=Workload("demo", 32, 2),
        grouped_ks=(2,),
        grouped_iters=1,
    ),
    "default": Profile(name="default", repeats=7),
    "full": Profile(
        name="full",
        repeats=7,
        overhead=(Workload("demo", 64, 32), Workload("resnet50-resnet18", 224, 64)),
        overhead_iters=10,
        pipeline_configs=((64, 512, 32, ("plain", "cached")), (224, 256, 64, ("plain", "cached"))),
        pipeline_repeats=5,
        scaling_workloads=(Workload("demo", 64, 32), Workload("resnet50-resnet18", 224, 64)),
        scaling_iters=10,
        validation=Workload("resnet50-resnet18", 224, 64),
        validation_iters=10,
        deploy_size=224,
        deploy_latency_iters=20,
        deploy_polyp_timed=("cpu", "gpu"),
        memory_configs=(
            ("demo", 64, (8, 16, 32, 64)),
            ("resnet50-resnet18", 224, (8, 16, 32, 64)),
            ("resnet34-resnet10", 224, (8, 16, 32, 64)),
            ("densenet121-densenet_small", 224, (8, 16, 32, 64)),
        ),
        threads_iters=16,
        threads_repeats=5,
        grouped=Workload("demo", 64, 32),
        grouped_iters=10,
    ),
}


def get_profile(name: str, repeats: int | None = None, memory_limit_gib: float | None = None) -> Profile:
    """The named profile, with ``repeats`` / ``memory_limit_gib`` overridden when given."""
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; choose one of {sorted(PROFILES)}.")
    profile = PROFILES[name]
    if repeats is not None:
        profile = replace(profile, repeats=repeats, pipeline_repeats=repeats, threads_repeats=repeats)
    if memory_limit_gib is not None:
        profile = replace(profile, memory_limit_gib=memory_limit_gib)
    return profile
