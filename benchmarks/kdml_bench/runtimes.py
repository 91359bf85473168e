"""5b. Deployment runtimes: eager PyTorch against ONNX Runtime, teacher against student ensemble, side by side.

Each network is exported the way the bundles export it (:func:`monai_kdml.networks.export.export_network`; the polyp
detectors as :class:`~monai_kdml.apps.polyp.export.RetinaNetBoxes`, so eager and ONNX compute the same boxes), then
the four cases (teacher and ensemble, eager and ONNX Runtime with as many threads as torch) are timed interleaved at
batch 1 (latency) and at the throughput batch. Figures are paired ratios: ONNX Runtime over eager for each network
and the ensemble's throughput over the teacher's in each runtime; the table says which runtime to deploy on.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch

from kdml_bench.config import Profile
from kdml_bench.probes import build_deployable
from kdml_bench.report import Figure, SectionResult, Table
from kdml_bench.timing import interleave, paired_ratios, stats
from monai_kdml.apps.polyp.export import RetinaNetBoxes
from monai_kdml.apps.polyp.networks import get_preset as get_detection_preset
from monai_kdml.networks.export import export_network, onnx_session

__all__ = ["run_runtimes"]

ROLES = ("teacher", "ensemble")


def _deployed(task: str, preset: str, role: str, k: int, size: int) -> torch.nn.Module:
    net = build_deployable(task, preset, role, k)
    if task == "polyp":  # the exported detector: boxes and scores of every anchor, as a tensor
        net = RetinaNetBoxes(net, get_detection_preset(preset).anchor_generator(), size)
    return net.eval()


def _eager(net: torch.nn.Module, x: torch.Tensor, calls: int):
    def call() -> None:
        with torch.inference_mode():
            for _ in range(calls):
                net(x)

    return call


def _onnx(session, x: np.ndarray, calls: int):
    def call() -> None:
        for _ in range(calls):
            session.run(None, {"image": x})

    return call


def run_runtimes(profile: Profile, device: torch.device, result: SectionResult) -> None:
    """Add the eager vs ONNX Runtime figures and table of ``profile.deploy_runtimes`` to ``result`` (CPU only)."""
    if device.type != "cpu" or not profile.deploy_runtimes:
        return
    k, b, calls = profile.num_students, profile.deploy_throughput_batch, profile.deploy_latency_iters
    threads = torch.get_num_threads()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for task, preset in profile.deploy_runtimes:
            size = profile.deploy_size if task == "msi" else get_detection_preset(preset).image_size
            tag = f"{task} {preset} {size}px, K={k}, {threads} thread(s)"
            nets = {r: _deployed(task, preset, r, k, size) for r in ROLES}
            sessions = {}
            for role, net in nets.items():
                stem = Path(tmp) / f"{task}-{preset}-{role}"
                atol = 1e-3 if task == "polyp" else 1e-4  # box corners in pixels: see export_detector
                export_network(net, stem, (2, 3, size, size), formats=("onnx",), atol=atol)
                sessions[role] = onnx_session(stem.with_suffix(".onnx"), threads=threads)
            medians: dict[str, dict[str, float]] = {}
            for batch, n in ((1, calls), (b, 1)):
                x = torch.rand(batch, 3, size, size)
                cases = {f"eager {r}": _eager(nets[r], x, n) for r in ROLES}
                cases |= {f"onnx {r}": _onnx(sessions[r], x.numpy(), n) for r in ROLES}
                times = interleave(cases, profile.repeats, device, profile.warmup)
                for role in ROLES:
                    result.figures.append(
                        Figure(
                            f"ONNX Runtime / eager time, {role} b{batch}, {tag}",
                            paired_ratios(times[f"onnx {role}"], times[f"eager {role}"]),
                        )
                    )
                for runtime in ("eager", "onnx"):
                    result.figures.append(
                        Figure(
                            f"ensemble / teacher throughput, {runtime} b{batch}, {tag}",
                            paired_ratios(times[f"{runtime} teacher"], times[f"{runtime} ensemble"]),
                        )
                    )
                medians[f"b{batch}"] = {name: stats(v)["median"] for name, v in times.items()}
                result.details.setdefault(f"runtimes {tag}", {})[f"b{batch}_s"] = times
            one, many = medians["b1"], medians[f"b{b}"]
            ips = {name: b / s for name, s in many.items()}
            ms = {name: s / calls * 1000 for name, s in one.items()}
            best = max(("eager", "onnx"), key=lambda rt: ips[f"{rt} ensemble"])
            for runtime in ("eager", "onnx"):
                rows.append(
                    [
                        task,
                        preset,
                        size,
                        "ONNX Runtime" if runtime == "onnx" else "PyTorch eager",
                        f"{ms[f'{runtime} teacher']:.1f} / {ms[f'{runtime} ensemble']:.1f}",
                        f"{ips[f'{runtime} teacher']:.0f} / {ips[f'{runtime} ensemble']:.0f}",
                        f"{ips[f'{runtime} ensemble'] / ips[f'{runtime} teacher']:.2f}",
                        "deploy the ensemble here" if runtime == best else "",
                    ]
                )
    result.tables.append(
        Table(
            f"eager PyTorch vs ONNX Runtime, timed interleaved (medians of {profile.repeats}; latency ms at batch 1, "
            f"throughput images/s at batch {b}; teacher / ensemble of {k} students)",
            ["task", "preset", "px", "runtime", "latency T / E", "throughput T / E", "throughput E / T", "verdict"],
            rows,
        )
    )


if __name__ == "__main__":  # python benchmarks/kdml_bench/runtimes.py [--profile default] [--threads N] [--clock cpu]
    import argparse
    import json

    from kdml_bench.config import get_profile
    from kdml_bench.timing import set_clock

    parser = argparse.ArgumentParser(description="eager PyTorch vs ONNX Runtime, teacher vs ensemble (section 5b)")
    parser.add_argument("--profile", default="default")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clock", default="cpu", help="cpu (steady with one thread on a shared machine) or wall")
    parser.add_argument("--out", type=Path, default=None, help="write figures and details as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    set_clock(args.clock)
    section = SectionResult()
    run_runtimes(get_profile(args.profile, repeats=args.repeats), torch.device("cpu"), section)
    records = [f.record() for f in section.figures]
    for r in records:
        print(f"{r['name']}: median {r['median']:.3f} (IQR {r['q1']:.3f}..{r['q3']:.3f})")
    for table in section.tables:
        print(f"\n{table.title}\n| {' | '.join(table.columns)} |\n|{'---|' * len(table.columns)}")
        print("\n".join(f"| {' | '.join(str(c) for c in row)} |" for row in table.rows))
    if args.out:
        args.out.write_text(json.dumps({"figures": records, "details": section.details}, default=str))
