"""Polyp video: frames per second of the ensemble and the teacher side by side, and the temporal filter's effect.

Frame rates: a generated clip (:func:`~monai_kdml.apps.polyp.demo_clip.render_demo_clip`) is encoded as an mp4 and
run through :class:`~monai_kdml.apps.polyp.video.VideoInference` (decode in a thread, detector, draw + encode + CSV
in a thread) with the ensemble and the teacher in turn, ``--repeats`` rounds, interleaved (the order alternates) so
both see the same load; the median of each is reported end to end, for the model alone (frames in, boxes out) and for
the network's forward alone, with the ensemble / teacher ratio (median of the rounds' ratios).

Temporal filter: the detector runs over ``--clips`` generated clips with known polyp boxes; box precision and recall
(IoU >= 0.5) at the operating score, without the filter and with each ``k``-of-``n`` setting.

Usage (from the repository root)::

    PYTHONPATH=$PWD python benchmarks/polyp_video.py --bundle_root <trained polyp bundle_root>

``--onnx ensemble=<file> teacher=<file>`` adds ONNX Runtime detectors (``OnnxFrameDetector`` of
``monai_kdml.apps.polyp.runtime``, the ``deploy`` extra) on exported detectors to the same rounds.

Without ``--bundle_root`` the ``cpu`` preset's networks are random (frame rates only; the precision table needs a
trained bundle).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import monai_kdml  # noqa: F401  (before torch: passive OpenMP waits, see monai_kdml.threads)

# isort: split
import numpy as np
import torch

from monai_kdml.apps.polyp import RetinaNetHeadEnsemble, RetinaNetInferer, get_preset, preset_from_dict
from monai_kdml.apps.polyp.demo_clip import render_demo_clip, write_clip
from monai_kdml.apps.polyp.frame_detector import TorchFrameDetector, frames_to_input, load_video_network
from monai_kdml.apps.polyp.temporal import BoxCounts, TemporalFilter, box_counts
from monai_kdml.apps.polyp.video import VideoInference
from monai_kdml.apps.polyp.video_io import VideoFile
from monai_kdml.bundle import read_record
from monai_kdml.networks import build_students


def detectors(bundle_root: str | None, image_size: int, score: float) -> dict[str, TorchFrameDetector]:
    """The ensemble's and the teacher's frame detectors: trained when ``bundle_root`` is given, else random.

    As in the bundle, candidates below the operating ``score`` are dropped before decoding and NMS.
    """
    if bundle_root:
        record = read_record(Path(bundle_root) / "models")
        preset, image_size = preset_from_dict(record["detector"]), int(record["image_size"])
        names = record.get("student_backbone")
        ensemble = RetinaNetHeadEnsemble(build_students(preset.build_student, record["num_students"], names=names))
        networks = {
            w: load_video_network(w, ensemble, preset, Path(bundle_root) / "models") for w in ("ensemble", "teacher")
        }
    else:
        preset = get_preset("cpu")
        networks = {
            "ensemble": RetinaNetHeadEnsemble(preset.build_students(2)).eval(),
            "teacher": preset.build_teacher().eval(),
        }
    inferer = RetinaNetInferer(preset.spec.anchor_generator(), score_thresh=min(score, 0.999))
    return {name: TorchFrameDetector(net, inferer, image_size) for name, net in networks.items()}


def network_seconds(det: Any, frames: np.ndarray, batch: int) -> tuple[float, float]:
    """Wall and process CPU seconds of the network's forward alone over ``frames`` (inputs prepared beforehand)."""
    inputs = [frames_to_input(frames[i : i + batch], det.image_size) for i in range(0, len(frames), batch)]
    tic, cpu_tic = time.perf_counter(), time.process_time()
    with torch.no_grad():
        for x in inputs:
            det.network(x)
    return time.perf_counter() - tic, time.process_time() - cpu_tic


COLUMNS = ("end to end", "model alone", "network forward")
ORT = "ensemble onnxruntime", "teacher onnxruntime"
RATIOS = (("ensemble", "teacher"), ORT, (ORT[0], "ensemble"), (ORT[1], "teacher"))


def _cell(wall: float, cpu: float, unit: str) -> str:
    """``wall (cpu)`` with ``unit``, or ``-`` where not measured."""
    if not (np.isfinite(wall) and np.isfinite(cpu)):
        return "-"
    digits = 2 if unit else 1
    return f"{wall:.{digits}f}{unit} ({cpu:.{digits}f}{unit})"


def frame_rates(dets: dict[str, Any], args: argparse.Namespace, work: Path) -> None:
    frames, _ = render_demo_clip(args.frames, args.height, args.width, seed=100)
    clip = write_clip(work / "clip.mp4", frames, fps=25)
    print(
        f"\nclip: {args.frames} frames of {args.width}x{args.height} px (mp4), torch threads "
        f"{torch.get_num_threads()}, load average at start {os.getloadavg()[0]:.1f}\nframes/s by the wall clock (CPU "
        "clock in brackets: frames per CPU-second of the process, end to end all threads; model alone the calling "
        "thread)"
    )
    print("| network | batch | " + " | ".join(f"{c} (frames/s)" for c in COLUMNS) + " |\n|---|---|---|---|---|")
    for batch in args.batch_sizes:
        runs: dict[str, list[np.ndarray]] = {name: [] for name in dets}
        for round_ in range(args.repeats):
            names = list(dets) if round_ % 2 == 0 else list(dets)[::-1]  # neither always runs first
            for name in names:
                r = VideoInference(
                    VideoFile(clip), dets[name], work / name, score_thresh=args.score, batch_size=batch, network=name
                ).run()
                wall, cpu = network_seconds(dets[name], frames, batch) if hasattr(dets[name], "network") else (0, 0)
                seconds = np.array([r.seconds, r.model_seconds, wall, r.cpu_seconds, r.model_cpu_seconds, cpu])
                with np.errstate(divide="ignore"):
                    runs[name].append(r.frames / seconds)  # inf: not measured (no torch network)
        medians = {n: np.median(np.stack(v), axis=0) for n, v in runs.items()}
        for name, m in medians.items():
            print(f"| {name} | {batch} | " + " | ".join(_cell(m[i], m[i + 3], "") for i in range(3)) + " |")
        for a, b in RATIOS:
            if {a, b} <= set(runs):
                with np.errstate(invalid="ignore"):
                    ratio = np.median(np.stack(runs[a]) / np.stack(runs[b]), axis=0)
                cells = " | ".join(_cell(ratio[i], ratio[i + 3], "x") for i in range(3))
                print(f"| {a} / {b} (median of rounds) | {batch} | {cells} |")
    print(f"load average at end {os.getloadavg()[0]:.1f}")


def temporal_effect(det: TorchFrameDetector, args: argparse.Namespace) -> None:
    settings = [(1, 1), *[(int(s.split("/")[0]), int(s.split("/")[1])) for s in args.filters]]
    totals = {s: BoxCounts(0, 0, 0) for s in settings}
    num_frames = num_boxes = 0
    for seed in range(args.clips):
        frames, truths = render_demo_clip(args.clip_frames, args.height, args.width, seed=seed)
        num_frames, num_boxes = num_frames + len(frames), num_boxes + sum(len(t) for t in truths)
        raw = [d for i in range(0, len(frames), 8) for d in det(frames[i : i + 8])]
        cut = [{k: v[d["scores"] >= args.score] for k, v in d.items()} for d in raw]
        for k, n in settings:
            filt = TemporalFilter(k, n, args.iou)
            totals[(k, n)] += box_counts([filt(d) for d in cut] if k > 1 else cut, truths)
    print(f"\ntemporal filter: {args.clips} clips, {num_frames} frames, {num_boxes} true boxes, score >= {args.score}")
    print("| filter | TP | FP | FN | precision | recall |\n|---|---|---|---|---|---|")
    for (k, n), c in totals.items():
        name = "none" if k == 1 else f"{k} of {n} (IoU >= {args.iou})"
        print(f"| {name} | {c.tp} | {c.fp} | {c.fn} | {c.precision:.3f} | {c.recall:.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle_root", default=None, help="a trained polyp bundle_root (default: random networks)")
    parser.add_argument("--image_size", type=int, default=160, help="network input without --bundle_root")
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--height", type=int, default=144)
    parser.add_argument("--width", type=int, default=160)
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--score", type=float, default=0.5, help="operating score")
    parser.add_argument("--clips", type=int, default=0, help="clips for the temporal filter table (0: skip it)")
    parser.add_argument("--clip_frames", type=int, default=100)
    parser.add_argument("--filters", nargs="+", default=["2/3", "3/5"], help="k/n settings")
    parser.add_argument("--iou", type=float, default=0.3)
    parser.add_argument(
        "--onnx", nargs="*", default=[], help="NAME=FILE: also time OnnxFrameDetector on an exported detector"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dets: dict[str, Any] = dict(detectors(args.bundle_root, args.image_size, args.score))
    if args.onnx:
        from monai_kdml.apps.polyp.runtime import OnnxFrameDetector  # the `deploy` extra

        for item in args.onnx:
            name, path = item.split("=", 1)
            settings = {"score_thresh": min(args.score, 0.999)}
            dets[f"{name} onnxruntime"] = OnnxFrameDetector(path, settings, threads=args.threads or None)
    with tempfile.TemporaryDirectory() as work:
        if args.frames:
            frame_rates(dets, args, Path(work))
    if args.clips:
        temporal_effect(dets["ensemble"], args)


if __name__ == "__main__":
    main()
