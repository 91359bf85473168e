"""Whole-slide inference speed: tiles per second of the student ensemble vs the teacher on one slide, side by side.

Usage (from the repository root)::

    python benchmarks/slide_throughput.py [--slide ../shared/data/wsi/cmu-1-small-region.svs] [--preset demo] \
        [--image_size 64] [--tile_mpp 2.0] [--batch_size 32] [--repeats 3] [--threads 1] [--out FILE.json]

The slide's tissue tiles (:func:`monai_kdml.apps.msi.slides.plan_slide`) are scored by the deployable ensemble and
by the teacher of ``--preset`` (untrained: speed does not depend on the weights), in the suite's style
(``benchmarks/kdml_bench/timing.py``): the cases interleaved and rotated each repeat, the ratio taken round by round,
median and spread reported. Two measurements: the networks alone on the tiles read once into memory, and the whole
path (MONAI ``PatchWSIDataset`` reading and resizing each tile, then the network), which is what a user waits for.
Without ``--slide`` (or when it is absent) a generated demo slide is written to a temporary folder and deleted.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from kdml_bench.probes import build_deployable
from kdml_bench.timing import interleave, loadavg, paired_ratios, stats

from monai_kdml.apps.msi.slide_demo import demo_slide_layout, write_demo_slide
from monai_kdml.apps.msi.slide_inference import slide_tile_transform
from monai_kdml.apps.msi.slides import SlideSource, plan_slide

__all__ = ["main"]

SHARED_SLIDE = Path(__file__).resolve().parents[2] / "shared" / "data" / "wsi" / "cmu-1-small-region.svs"


def _loader(tiles: list[dict], image_size: int, batch_size: int, workers: int, backend: str):
    from monai.data import DataLoader, PatchWSIDataset, WSIReader

    dataset = PatchWSIDataset(tiles, transform=slide_tile_transform(image_size), include_label=False,
                              center_location=False, reader=WSIReader, backend=backend)  # fmt: skip
    return DataLoader(dataset, batch_size=batch_size, num_workers=workers, shuffle=False)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--slide", type=Path, default=SHARED_SLIDE)
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--num_students", type=int, default=2)
    parser.add_argument("--image_size", type=int, default=64)
    parser.add_argument("--tile_mpp", type=float, default=2.0)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--num_workers", type=int, default=0)
    parser.add_argument("--backend", default="openslide")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from monai.data import WSIReader

    with tempfile.TemporaryDirectory() as tmp:
        slide = args.slide
        if not slide.is_file():
            slide = write_demo_slide(Path(tmp) / "demo.tif", demo_slide_layout(8, 8), 128, 1.0, seed=0)
        plan = plan_slide(WSIReader(backend=args.backend), SlideSource(slide), args.image_size, args.tile_mpp)
        loader = _loader(plan.tiles, args.image_size, args.batch_size, args.num_workers, args.backend)
        batches = [torch.as_tensor(b["image"]).clone() for b in loader]  # the tiles once, for the networks alone
        nets = {r: build_deployable("msi", args.preset, r, args.num_students) for r in ("ensemble", "teacher")}

        def network_only(net: torch.nn.Module):
            def call() -> None:
                with torch.inference_mode():
                    for x in batches:
                        net(x)

            return call

        def whole_path(net: torch.nn.Module):
            def call() -> None:
                with torch.inference_mode():
                    for b in _loader(plan.tiles, args.image_size, args.batch_size, args.num_workers, args.backend):
                        net(torch.as_tensor(b["image"]))

            return call

        device = torch.device("cpu")
        cases = {
            f"{r} {k}": f(n) for r, n in nets.items() for k, f in (("networks", network_only), ("path", whole_path))
        }
        times = interleave(cases, args.repeats, device)
    tiles = len(plan.tiles)
    result = {
        "slide": str(args.slide if args.slide.is_file() else "generated demo slide"),
        "tiles": tiles, "level": plan.level, "read_size": plan.read_size, "image_size": args.image_size,
        "tile_mpp": args.tile_mpp, "preset": args.preset, "num_students": args.num_students,
        "threads": args.threads, "num_workers": args.num_workers, "loadavg": loadavg(),
        "tiles_per_s": {name: stats([tiles / t for t in ts]) for name, ts in times.items()},
        "speedup_ensemble_vs_teacher": {
            kind: stats(paired_ratios(times[f"teacher {kind}"], times[f"ensemble {kind}"]))
            for kind in ("networks", "path")
        },
    }  # fmt: skip
    print(
        f"{tiles} tissue tiles of {result['slide']} (level {plan.level}, {plan.read_size} px -> {args.image_size} px)"
    )
    print("| measured | ensemble tiles/s | teacher tiles/s | ensemble / teacher speed (median [q1, q3]) |")
    print("|---|---:|---:|---:|")
    for kind in ("networks", "path"):
        e, t = result["tiles_per_s"][f"ensemble {kind}"], result["tiles_per_s"][f"teacher {kind}"]
        r = result["speedup_ensemble_vs_teacher"][kind]
        print(f"| {kind} | {e['median']:.1f} | {t['median']:.1f} | {r['median']:.2f} [{r['q1']:.2f}, {r['q3']:.2f}] |")
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
