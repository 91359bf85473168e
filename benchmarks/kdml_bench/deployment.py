"""5. Deployment: the student ensemble (what ``model.pt`` holds) against the teacher, per preset; then both in eager
PyTorch and ONNX Runtime (:mod:`kdml_bench.runtimes`).

Parameters and multiply-accumulates are counts (``count_parameters``, ``count_macs`` at batch 1); latency at batch 1
and throughput at the throughput batch are timed side by side in eval mode under ``inference_mode``; peak memory
of one forward pass at the throughput batch is measured in a fresh guarded process per network.
"""

from __future__ import annotations

import torch

from kdml_bench.config import Profile
from kdml_bench.memory import memory_limit
from kdml_bench.probes import GIB, build_deployable, run_probe
from kdml_bench.report import Figure, SectionResult, Table
from kdml_bench.runtimes import run_runtimes
from kdml_bench.timing import interleave, paired_ratios, stats
from monai_kdml.apps.polyp.networks import get_preset as get_detection_preset
from monai_kdml.metrics.compression import count_macs, count_parameters

__all__ = ["run"]


def _forward(net: torch.nn.Module, x: torch.Tensor, calls: int):
    def call() -> None:
        with torch.inference_mode():
            for _ in range(calls):
                net(x)

    return call


def run(profile: Profile, device: torch.device) -> SectionResult:
    result = SectionResult()
    limit = memory_limit(profile)
    k = profile.num_students
    targets = [("msi", p, profile.deploy_size, True) for p in profile.deploy_presets]
    targets += [
        ("polyp", p, get_detection_preset(p).image_size, p in profile.deploy_polyp_timed) for p in profile.deploy_polyp
    ]
    rows = []
    for task, preset, size, timed in targets:
        nets = {r: build_deployable(task, preset, r, k).to(device) for r in ("teacher", "ensemble")}
        params = {r: count_parameters(n) for r, n in nets.items()}
        macs = {r: count_macs(n, (1, 3, size, size)) for r, n in nets.items()}
        mac_size = size if task == "polyp" else profile.deploy_mac_size
        macs_ref = macs if mac_size == size else {r: count_macs(n, (1, 3, mac_size, mac_size)) for r, n in nets.items()}
        tag = f"{task} {preset} {size}px, K={k}"
        row = [
            task,
            preset,
            size,
            f"{params['teacher'] / 1e6:.2f}",
            f"{params['ensemble'] / 1e6:.2f}",
            f"{macs_ref['teacher'] / 1e9:.3g}@{mac_size}",
            f"{macs_ref['ensemble'] / 1e9:.3g}@{mac_size}",
        ]
        result.details[tag] = {"params": params, "macs": macs, f"macs_{mac_size}px": macs_ref}
        if not timed:
            rows.append(row + ["-"] * 4 + ["timings not in this profile"])
            continue
        one = torch.rand(1, 3, size, size, device=device)
        many = torch.rand(profile.deploy_throughput_batch, 3, size, size, device=device)
        calls = profile.deploy_latency_iters
        lat = interleave({r: _forward(n, one, calls) for r, n in nets.items()}, profile.repeats, device, profile.warmup)
        thr = interleave({r: _forward(n, many, 1) for r, n in nets.items()}, profile.repeats, device, profile.warmup)
        spec = {
            "kind": "infer",
            "task": task,
            "preset": preset,
            "num_students": k,
            "image_size": size,
            "batch": profile.deploy_throughput_batch,
            "device": str(device),
            "threads": torch.get_num_threads(),
        }
        mem = {r: run_probe({**spec, "role": r}, limit) for r in nets}
        key = "cuda_peak" if device.type == "cuda" else "peak"
        peak: dict[str, float | None] = {r: (m[key] if m["ok"] else None) for r, m in mem.items()}
        b = profile.deploy_throughput_batch
        result.figures += [
            Figure(f"ensemble / teacher latency b1, {tag}", paired_ratios(lat["ensemble"], lat["teacher"])),
            Figure(f"ensemble / teacher throughput b{b}, {tag}", paired_ratios(thr["teacher"], thr["ensemble"])),
        ]
        peak_t, peak_e = peak["teacher"], peak["ensemble"]
        if peak_t is not None and peak_e is not None:
            result.figures.append(Figure(f"ensemble / teacher peak memory b{b}, {tag}", [peak_e / peak_t]))
        ms = {r: stats(v)["median"] / calls * 1000 for r, v in lat.items()}
        ips = {r: b / stats(v)["median"] for r, v in thr.items()}
        row += [
            f"{ms['teacher']:.1f} / {ms['ensemble']:.1f}",
            f"{ips['teacher']:.0f} / {ips['ensemble']:.0f}",
            " / ".join("-" if p is None else f"{p / GIB:.2f}" for p in (peak_t, peak_e)),
            f"{params['ensemble'] / params['teacher']:.2f}",
            "",
        ]
        rows.append(row)
        result.details[tag].update({"latency_s": lat, "throughput_s": thr, "memory": mem})
    result.tables.append(
        Table(
            f"teacher vs ensemble of {k} students (params in M, GMACs per image at the size after @; latency ms at "
            f"batch 1; throughput images/s and peak RSS GiB at batch {profile.deploy_throughput_batch})",
            [
                "task",
                "preset",
                "px",
                "teacher params",
                "ensemble params",
                "teacher GMACs",
                "ensemble GMACs",
                "latency T / E",
                "throughput T / E",
                "peak GiB T / E",
                "params E / T",
                "note",
            ],
            rows,
        )
    )
    run_runtimes(profile, device, result)
    return result
