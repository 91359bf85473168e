"""Stretch: K identical students fused into one network with grouped convolutions, against K separate students.

:func:`fuse_students` copies the first student and widens every layer K-fold: a ``Conv2d`` becomes one with K times
the channels and K times the groups (the K weight tensors stacked), a ``BatchNorm2d`` K times the channels, a
``Linear`` a block-diagonal :class:`GroupedLinear`. The input is repeated K times along channels and the output
split back into K logits. The fused network computes exactly the K students (checked before timing). Both sides
train with the same loss (each student's cross-entropy + mutual learning) and AdamW.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdml_bench.config import Profile
from kdml_bench.report import Figure, SectionResult
from kdml_bench.timing import interleave, paired_ratios
from kdml_bench.workloads import adamw, build_networks, synthetic_batches
from monai_kdml.losses import mutual_learning_kl_divs

__all__ = ["FusedStudents", "GroupedLinear", "fuse_students", "run"]


class GroupedLinear(nn.Module):
    """K independent linear layers on a ``(B, K * in)`` input: ``out[:, k] = x[:, k] W_k^T + b_k``."""

    def __init__(self, linears: Sequence[nn.Linear]) -> None:
        super().__init__()
        self.k = len(linears)
        self.weight = nn.Parameter(torch.stack([m.weight.detach() for m in linears]))  # (K, out, in)
        bias = [m.bias.detach() if m.bias is not None else torch.zeros(m.out_features) for m in linears]
        self.bias = nn.Parameter(torch.stack(bias))  # (K, out)

    def forward(self, x: Tensor) -> Tensor:
        x = x.reshape(x.shape[0], self.k, -1)
        return (torch.einsum("bki,koi->bko", x, self.weight) + self.bias).flatten(1)


def _fuse_module(modules: Sequence[nn.Module]) -> nn.Module:
    first, k = modules[0], len(modules)
    if isinstance(first, nn.Conv2d):
        convs = [m for m in modules if isinstance(m, nn.Conv2d)]
        geometry: dict[str, Any] = {"kernel_size": first.kernel_size, "stride": first.stride, "padding": first.padding,
                                    "dilation": first.dilation}  # fmt: skip
        fused = nn.Conv2d(k * first.in_channels, k * first.out_channels, **geometry,
                          groups=k * first.groups, bias=first.bias is not None)  # fmt: skip
        fused.weight.data = torch.cat([m.weight.detach() for m in convs])
        if fused.bias is not None:
            fused.bias.data = torch.cat([m.bias.detach() for m in convs if m.bias is not None])
        return fused
    if isinstance(first, nn.BatchNorm2d):
        fused_bn = nn.BatchNorm2d(k * first.num_features, first.eps, first.momentum, first.affine)
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(fused_bn, name).data = torch.cat([getattr(m, name).detach() for m in modules])
        return fused_bn
    if isinstance(first, nn.Linear):
        return GroupedLinear([m for m in modules if isinstance(m, nn.Linear)])
    if any(True for _ in first.parameters(recurse=False)) or any(True for _ in first.buffers(recurse=False)):
        raise ValueError(f"fuse_students: no grouped form for {type(first).__name__}")
    return first


def fuse_students(students: Sequence[nn.Module]) -> nn.Module:
    """One network computing K identical-architecture students at once (see the module docstring)."""
    core = copy.deepcopy(students[0])
    names = [name for name, _ in core.named_modules() if name]
    lookups = [dict(s.named_modules()) for s in students]
    for name in names:
        parent_name, _, attr = name.rpartition(".")
        originals = [lookup[name] for lookup in lookups]
        if next(originals[0].children(), None) is not None:
            continue  # containers: their children are replaced one by one
        parent = core.get_submodule(parent_name) if parent_name else core
        setattr(parent, attr, _fuse_module(originals))
    return FusedStudents(core, len(students))


class FusedStudents(nn.Module):
    """Wraps a fused core: repeats the input K times along channels, splits the output into K logits."""

    def __init__(self, core: nn.Module, k: int) -> None:
        super().__init__()
        self.core, self.k = core, k

    def forward(self, x: Tensor) -> list[Tensor]:
        out = self.core(x.repeat(1, self.k, *([1] * (x.ndim - 2))))
        return list(out.reshape(out.shape[0], self.k, -1, *out.shape[2:]).unbind(1))


def _loss(preds: list[Tensor], label: Tensor) -> Tensor:
    return torch.stack([F.cross_entropy(p, label) for p in preds] + mutual_learning_kl_divs(preds, 2.0)).sum()


def _train(forward: Callable[[Tensor], list[Tensor]], opts: list, batches: list[dict]) -> Callable[[], None]:
    def step() -> None:
        for b in batches:
            for opt in opts:
                opt.zero_grad(set_to_none=False)
            _loss(forward(b["image"]), b["label"]).backward()
            for opt in opts:
                opt.step()

    return step


def _infer(forward: Callable[[Tensor], list[Tensor]], batches: list[dict]) -> Callable[[], None]:
    def step() -> None:
        with torch.inference_mode():
            for b in batches:
                forward(b["image"])

    return step


def run(profile: Profile, device: torch.device) -> SectionResult:
    result = SectionResult()
    w = profile.grouped
    batches = synthetic_batches(profile.grouped_iters, w.batch, w.image_size, device, profile.seed)
    for k in profile.grouped_ks:
        students = build_networks(w.preset, k, device, profile.seed).students
        fused = fuse_students(students).to(device)
        for net in [*students, fused]:
            net.eval()
        with torch.no_grad():
            x = batches[0]["image"]
            error = max(float((a - b).abs().max()) for a, b in zip(fused(x), [s(x) for s in students], strict=True))
        if error > 1e-3:
            raise AssertionError(f"the fused students differ from the separate ones by {error:g}")
        for net in [*students, fused]:
            net.train()
        separate = lambda x, nets=students: [s(x) for s in nets]  # noqa: E731
        cases = {
            "separate train": _train(separate, [adamw(s) for s in students], batches),
            "grouped train": _train(fused, [adamw(fused)], batches),
            "separate infer": _infer(separate, batches),
            "grouped infer": _infer(fused, batches),
        }
        times = interleave(cases, profile.repeats, device, profile.warmup)
        tag = f"K={k} {w.label()}"
        result.figures += [
            Figure(f"grouped / separate students, train step, {tag}",
                   paired_ratios(times["grouped train"], times["separate train"])),
            Figure(f"grouped / separate students, inference, {tag}",
                   paired_ratios(times["grouped infer"], times["separate infer"])),
        ]  # fmt: skip
        result.details[tag] = {"seconds": times, "max_abs_difference": error}
    return result
