"""Model size and compute: what the student ensemble saves over the teacher.

MACs are counted with PyTorch's :class:`torch.utils.flop_counter.FlopCounterMode`, which counts the FLOPs of
matrix multiplications and convolutions (2 FLOPs per multiply-accumulate; element-wise ops, bias additions and
normalisation are not counted), so ``MACs = FLOPs / 2``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from monai_kdml.keys import ENSEMBLE, TEACHER, network_names, student_name

__all__ = ["compression_summary", "compression_table", "count_macs", "count_parameters", "measure_latency"]


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements of ``module`` (shared parameters counted once)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def count_macs(module: nn.Module, input_shape: Sequence[int]) -> int:
    """Multiply-accumulates of one forward pass in eval mode on a zero input of ``input_shape`` (batch included).

    The module is put in eval mode for the count (so detectors run inference) and its mode is restored after.

    Args:
        module: the network.
        input_shape: full input shape, e.g. ``(1, 3, 224, 224)`` for the MACs of one image.

    Raises:
        ValueError: ``input_shape`` has a non-positive size.
    """
    if not input_shape or any(int(s) < 1 for s in input_shape):
        raise ValueError(f"`input_shape` must be positive sizes including the batch, got {tuple(input_shape)}.")
    param = next(iter(module.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    modes = {m: m.training for m in module.modules()}
    module.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            module(torch.zeros(tuple(int(s) for s in input_shape), device=device))
    finally:
        for m, training in modes.items():
            m.train(training)
    return int(counter.get_total_flops()) // 2


def measure_latency(
    module: nn.Module, input_shape: Sequence[int], repeats: int = 20, warmup: int = 3, threads: int | None = None
) -> float:
    """Median wall time (seconds) of one eval-mode forward pass on a zero input of ``input_shape``, on the module's
    device (CUDA synchronised), after ``warmup`` passes; ``threads`` sets torch's CPU threads for the measurement.

    A latency on a shared machine is noisy: compare networks measured one after the other, in the same process.
    """
    param = next(iter(module.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    x = torch.zeros(tuple(int(s) for s in input_shape), device=device)
    modes = {m: m.training for m in module.modules()}
    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    module.eval()
    times = []
    try:
        with torch.no_grad():
            for i in range(warmup + repeats):
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                start = time.perf_counter()
                module(x)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                if i >= warmup:
                    times.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(old_threads)
        for m, training in modes.items():
            m.train(training)
    times.sort()
    return times[len(times) // 2]


def compression_summary(teacher: nn.Module, students: Sequence[nn.Module], input_shape: Sequence[int]) -> dict:
    """Parameters and MACs of the teacher, each student and the student ensemble (the sum of its students).

    Returns:
        A flat dict: ``teacher_params``, ``teacher_macs``, ``student_<k>_params``, ``student_<k>_macs``,
        ``ensemble_params``, ``ensemble_macs``, ``num_students``, and the ratios ``param_ratio`` and ``mac_ratio``
        (teacher / ensemble: above 1 means the ensemble is smaller).

    Raises:
        ValueError: no students.
    """
    if len(students) == 0:
        raise ValueError("`students` is empty: the ensemble needs at least one student.")
    summary: dict = {
        f"{TEACHER}_params": count_parameters(teacher),
        f"{TEACHER}_macs": count_macs(teacher, input_shape),
    }
    for k, student in enumerate(students):
        summary[f"{student_name(k)}_params"] = count_parameters(student)
        summary[f"{student_name(k)}_macs"] = count_macs(student, input_shape)
    for quantity in ("params", "macs"):
        summary[f"{ENSEMBLE}_{quantity}"] = sum(summary[f"{student_name(k)}_{quantity}"] for k in range(len(students)))
    summary["num_students"] = len(students)
    for quantity in ("param", "mac"):
        teacher_value, ensemble_value = summary[f"{TEACHER}_{quantity}s"], summary[f"{ENSEMBLE}_{quantity}s"]
        summary[f"{quantity}_ratio"] = teacher_value / ensemble_value if ensemble_value else math.inf
    return summary


def _human(count: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(count) >= scale:
            return f"{count / scale:.2f} {unit}"
    return f"{count:.0f}"


def compression_table(summary: dict) -> str:
    """Markdown table of a :func:`compression_summary`: one row per network, then the teacher / ensemble ratio."""
    names = network_names(summary["num_students"])
    lines = ["| network | parameters | MACs |", "|---|---:|---:|"]
    lines += [f"| {n} | {_human(summary[f'{n}_params'])} | {_human(summary[f'{n}_macs'])} |" for n in names]
    lines.append(f"| teacher / ensemble | {summary['param_ratio']:.2f}x | {summary['mac_ratio']:.2f}x |")
    return "\n".join(lines) + "\n"
