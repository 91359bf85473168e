"""How much memory a training run will need, estimated before it starts, so a run that cannot fit says so (with
what to change) instead of being killed by the kernel hours later.

The estimate counts what dominates: the tensors autograd saves for backward during one forward pass of every
network (measured exactly with :func:`torch.autograd.graph.saved_tensors_hooks` on a two-sample batch and scaled by
the batch size), the parameters with their gradients and optimizer state, the cached data set, and a fixed
allowance for the Python process (imports, allocator slack). It is checked against the memory the device has free
(``MemAvailable`` of ``/proc/meminfo`` on CPU, ``torch.cuda.mem_get_info`` on CUDA).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from monai_kdml.networks.ensemble import unwrap_module

__all__ = [
    "BACKWARD_FACTOR",
    "GIB",
    "PROCESS_ALLOWANCE",
    "MemoryEstimate",
    "available_memory",
    "check_training_memory",
    "estimate_training_memory",
    "peak_resident_bytes",
]

logger = logging.getLogger(__name__)

GIB = 1024**3
PROCESS_ALLOWANCE = int(1.2 * GIB)
"""Python, torch and MONAI loaded plus allocator slack: 0.85-1.1 GiB resident before the first step here."""
BACKWARD_FACTOR = 1.2
"""Peak over the saved tensors during backward (their gradients coexist briefly): 1.0-1.1 measured for the
presets at batch 16-32 (docs/benchmarks.md), rounded up so that the estimate stays above what a step takes."""


def peak_resident_bytes() -> int:
    """Peak resident memory of this process's own address space, in bytes (``VmHWM`` of ``/proc/self/status``).

    ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` is not that: Linux carries it across ``exec``, so a child started
    from a large parent (a grown pytest worker, a notebook) reports the parent's size when the parent was larger.
    ``VmHWM`` belongs to the address space, which ``exec`` replaces. Falls back to ``ru_maxrss`` where ``/proc`` is
    missing (macOS reports it in bytes, Linux in KiB).
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a training step needs, by part.

    Args:
        activations_per_sample: tensors saved for backward by all networks for one sample.
        parameters: weights, gradients and optimizer state of the trainable networks, weights of the frozen ones.
        data: the cached data set (0 when nothing is cached in memory).
        batch_size: the batch the total is for.
    """

    activations_per_sample: int
    parameters: int
    data: int
    batch_size: int

    def total(self, batch_size: int | None = None) -> int:
        """Estimated peak for ``batch_size`` (default: the estimate's own)."""
        batch = self.batch_size if batch_size is None else batch_size
        return int(
            BACKWARD_FACTOR * self.activations_per_sample * batch + self.parameters + self.data + PROCESS_ALLOWANCE
        )

    def largest_batch(self, budget: int) -> int:
        """The largest batch size whose estimate fits in ``budget`` bytes (0 if none)."""
        room = budget - self.total(0)
        return (
            max(0, int(room // (BACKWARD_FACTOR * self.activations_per_sample))) if self.activations_per_sample else 0
        )


def _saved_bytes(network: nn.Module, sample: torch.Tensor) -> int:
    """Bytes of the tensors autograd saves while ``network`` (in train mode) processes ``sample``."""
    # weights are saved for backward too, but they are counted once with the parameters, not per sample
    seen: set[int] = {p.untyped_storage().data_ptr() for p in network.parameters()}
    seen |= {b.untyped_storage().data_ptr() for b in network.buffers()}
    total = 0

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal total
        key = tensor.untyped_storage().data_ptr()
        if key not in seen:  # several saves of one storage (a view, an input saved twice) cost it once
            seen.add(key)
            total += tensor.untyped_storage().nbytes()
        return tensor

    modes = {m: m.training for m in network.modules()}
    network.train()
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            output = network(sample)
        del output
    finally:
        for module, training in modes.items():
            module.train(training)
    return total


def estimate_training_memory(
    trainable: Sequence[nn.Module],
    frozen: Sequence[nn.Module],
    input_shape: Sequence[int],
    batch_size: int,
    optimizer_slots: int = 2,
    data_bytes: int = 0,
) -> MemoryEstimate:
    """Estimate the peak memory of a training step of these networks at ``batch_size``.

    Args:
        trainable: networks trained in the step (the online teacher and the students).
        frozen: networks only run forward, without gradients (a frozen teacher); they save nothing for backward.
        input_shape: one sample's shape, e.g. ``(3, 224, 224)``.
        batch_size: the batch size.
        optimizer_slots: optimizer tensors per parameter (AdamW: 2, SGD with momentum: 1).
        data_bytes: memory of the cached data set.

    Returns:
        The :class:`MemoryEstimate`; one forward pass of each trainable network on a two-sample batch is run.
    """
    per_sample = 0
    for network in trainable:
        plain = unwrap_module(network)
        param = next(iter(plain.parameters()), None)
        device = param.device if param is not None else torch.device("cpu")
        # two samples: BatchNorm in train mode refuses a single value per channel (a 1x1 map of one sample)
        pair = torch.zeros((2, *[int(s) for s in input_shape]), device=device)
        per_sample += _saved_bytes(plain, pair) // 2
    weights = sum(p.numel() * p.element_size() for n in trainable for p in unwrap_module(n).parameters())
    frozen_weights = sum(p.numel() * p.element_size() for n in frozen for p in unwrap_module(n).parameters())
    return MemoryEstimate(per_sample, weights * (2 + optimizer_slots) + frozen_weights, data_bytes, batch_size)


def available_memory(device: torch.device | str = "cpu") -> int | None:
    """Bytes the device has free now: ``MemAvailable`` on CPU (Linux), free memory on CUDA; ``None`` if unknown."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_training_memory(
    teacher: nn.Module,
    students: Sequence[nn.Module],
    image_size: int | Sequence[int],
    batch_size: int,
    device: torch.device | str = "cpu",
    frozen_teacher: bool = False,
    in_channels: int = 3,
    data_bytes: int = 0,
    budget_fraction: float = 0.85,
) -> MemoryEstimate:
    """Refuse, before training, a run whose estimated peak exceeds the memory the device has free.

    The estimate is logged either way (INFO), so every run states what it expects to need.

    Args:
        teacher: the teacher (frozen or trained online).
        students: the students.
        image_size: the square side of a sample (or its full spatial shape).
        batch_size: the configured batch size.
        device: the training device.
        frozen_teacher: whether the teacher only runs forward.
        in_channels: image channels.
        data_bytes: memory of the cached data set (see :func:`monai_kdml.data.cached_bytes`).
        budget_fraction: share of the free memory a run may plan to use.

    Raises:
        MemoryError: naming the estimate, the free memory, and the largest ``batch_size`` that fits.
    """
    spatial = [int(image_size)] * 2 if isinstance(image_size, int) else [int(s) for s in image_size]
    trainable = list(students) if frozen_teacher else [teacher, *students]
    estimate = estimate_training_memory(
        trainable, [teacher] if frozen_teacher else [], (in_channels, *spatial), batch_size, data_bytes=data_bytes
    )
    free = available_memory(device)
    need = estimate.total()
    logger.info(
        "Memory estimate for batch_size %d at %s px on %s: %.1f GiB (activations %.2f GiB per 10 samples, parameters "
        "and optimizer state %.2f GiB, cached data %.2f GiB)%s.",
        batch_size,
        "x".join(map(str, spatial)),
        torch.device(device).type,
        need / GIB,
        10 * estimate.activations_per_sample / GIB,
        estimate.parameters / GIB,
        estimate.data / GIB,
        "" if free is None else f"; {free / GIB:.1f} GiB free",
    )
    if free is not None and need > budget_fraction * free:
        fits = estimate.largest_batch(int(budget_fraction * free))
        advice = (
            f"use `--batch_size {fits}` or smaller"
            if fits >= 1
            else "nothing fits: lower `--image_size`, use a smaller `--preset`, or free memory"
        )
        big_data = estimate.data > 0.1 * need
        data = f"; or keep the data ({estimate.data / GIB:.1f} GiB) on disk: `--cache disk`" if big_data else ""
        raise MemoryError(
            f"this run needs an estimated {need / GIB:.1f} GiB at `batch_size` {batch_size} and `image_size` "
            f"{'x'.join(map(str, spatial))}, but {torch.device(device).type} has {free / GIB:.1f} GiB free "
            f"(the kernel would kill it): {advice}{data}. Set `--check_memory false` to try anyway."
        )
    return estimate
