"""Synthetic colonoscopy clips with known polyp boxes, for testing and measuring video inference without real video.

A clip is a camera panning over one larger demo scene (:func:`~monai_kdml.apps.polyp.demo.render_polyp_frame`):
frame ``t`` is a ``height x width`` window whose corner follows a smooth Lissajous path, with fresh sensor noise, so
polyps drift across the view, leave it and come back, and each frame's true boxes are those of the scene's polyp
masks inside the window. A clip depends only on its arguments.

To try the bundle's video inference without a video of your own::

    python -m monai_kdml.apps.polyp.demo_clip runs/clip.mp4 --frames 100 --height 144 --width 160

writes the clip and ``runs/clip_boxes.csv`` (its true boxes: ``frame,x1,y1,x2,y2``, pixel edges).
"""

from __future__ import annotations

import argparse
import csv
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image

from monai_kdml.apps.polyp.demo import render_polyp_frame

__all__ = ["render_demo_clip", "write_clip", "write_frames"]

_MIN_VISIBLE_PX = 6  # a polyp showing less than this on either side of the window is not a true box


def render_demo_clip(
    num_frames: int, height: int, width: int, seed: int = 0, scene_scale: float = 1.6, noise: float = 3.0
) -> tuple[np.ndarray, list[np.ndarray]]:
    """A ``num_frames`` clip panning over one synthetic scene, with each frame's true polyp boxes.

    Args:
        num_frames: frames, >= 1.
        height, width: frame size in pixels, >= 32.
        seed: the scene and the camera path.
        scene_scale: scene size relative to the frame (> 1: how far the camera can pan).
        noise: standard deviation of the per-frame sensor noise, in 8-bit grey levels.

    Returns:
        ``(frames, boxes)``: uint8 ``(num_frames, height, width, 3)`` RGB and, per frame, float32 ``(m, 4)`` xyxy
        boxes in the frame's pixels (edges; ``m`` may be 0).
    """
    if num_frames < 1 or height < 32 or width < 32 or scene_scale < 1:
        raise ValueError(
            f"need num_frames >= 1, height and width >= 32 and scene_scale >= 1, got {num_frames}, {height}, "
            f"{width}, {scene_scale}."
        )
    rng = np.random.default_rng([seed, 7919])
    scene_h, scene_w = round(height * scene_scale), round(width * scene_scale)
    scene, masks = render_polyp_frame(rng, scene_h, scene_w)
    cycles = rng.uniform(0.5, 1.5, size=2)
    phase = rng.uniform(0, 2 * np.pi, size=2)
    t = np.arange(num_frames) / max(num_frames, 1)
    top = np.round((scene_h - height) * (0.5 + 0.5 * np.sin(2 * np.pi * cycles[0] * t + phase[0]))).astype(int)
    left = np.round((scene_w - width) * (0.5 + 0.5 * np.sin(2 * np.pi * cycles[1] * t + phase[1]))).astype(int)
    frames = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    boxes: list[np.ndarray] = []
    for i in range(num_frames):
        window = scene[top[i] : top[i] + height, left[i] : left[i] + width].astype(np.float32)
        window += rng.normal(0, noise, window.shape).astype(np.float32)
        frames[i] = np.clip(window + 0.5, 0, 255).astype(np.uint8)
        frame_boxes = []
        for mask in masks:
            rows, cols = np.nonzero(mask[top[i] : top[i] + height, left[i] : left[i] + width])
            if rows.size and np.ptp(rows) + 1 >= _MIN_VISIBLE_PX and np.ptp(cols) + 1 >= _MIN_VISIBLE_PX:
                frame_boxes.append([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1])
        boxes.append(np.asarray(frame_boxes, dtype=np.float32).reshape(-1, 4))
    return frames, boxes


def write_clip(path: str | Path, frames: np.ndarray, fps: float = 25.0, codec: str = "libx264", crf: int = 18) -> Path:
    """Encode ``frames`` ``(N, H, W, 3)`` uint8 (even ``H`` and ``W``) as a video file with PyAV; returns ``path``."""
    from monai_kdml.apps.polyp.video_io import import_pyav

    av = import_pyav()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        options = {"crf": str(crf)} if codec == "libx264" else {}
        stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001), options=options)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for rgb in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_frames(folder: str | Path, frames: np.ndarray) -> Path:
    """Save ``frames`` as ``frame_<i>.png`` (lossless, unpadded index so that only natural order is right)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for i, rgb in enumerate(frames):
        Image.fromarray(rgb).save(folder / f"frame_{i}.png")
    return folder


def main(argv: list[str] | None = None) -> None:
    """Command line: write a generated clip and its true boxes (see the module doc)."""
    parser = argparse.ArgumentParser(description="Write a synthetic colonoscopy clip and its true polyp boxes.")
    parser.add_argument("path", help="output video, e.g. clip.mp4")
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--height", type=int, default=144, help="even")
    parser.add_argument("--width", type=int, default=160, help="even")
    parser.add_argument("--fps", type=float, default=25.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.height % 2 or args.width % 2:
        parser.error(f"--height and --width must be even (yuv420p video), got {args.height} and {args.width}")
    frames, boxes = render_demo_clip(args.frames, args.height, args.width, seed=args.seed)
    path = write_clip(args.path, frames, fps=args.fps)
    truth = path.with_name(path.stem + "_boxes.csv")
    with truth.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["frame", "x1", "y1", "x2", "y2"])
        writer.writerows([i, *(int(v) for v in box)] for i, frame_boxes in enumerate(boxes) for box in frame_boxes)
    print(
        f"{path}: {args.frames} frames of {args.width}x{args.height} px at {args.fps:g} frames/s; true boxes: {truth}"
    )


if __name__ == "__main__":
    main()
