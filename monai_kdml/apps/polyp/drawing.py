"""Boxes and score labels drawn on frames, scaled to the frame (TensorBoard images and inference overlays)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

__all__ = ["GT_COLOUR", "PRED_COLOUR", "draw_boxes", "frame_image", "label_font"]

GT_COLOUR, PRED_COLOUR = (0, 255, 0), (255, 215, 0)
"""Ground truth in green, predictions in yellow."""


def label_font(image_size: tuple[int, int]) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """A font for box labels scaled to the frame: about 1/40 of its longer side, at least 11 px.

    Pillow's built-in bitmap font is 11 px high whatever the frame, unreadable on a 1,920 px Kvasir frame; Pillow
    >= 10.1 ships a scalable default font (FreeType). Without FreeType the bitmap font is returned (and
    :func:`draw_boxes` scales its text as an image).
    """
    size = max(11, round(max(image_size) / 40))
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError, AttributeError):  # Pillow < 10.1 or no FreeType
        return ImageFont.load_default()


def draw_boxes(
    image: Image.Image,
    boxes: Any,
    scores: Any | None = None,
    colour: tuple[int, int, int] = PRED_COLOUR,
    width: int | None = None,
) -> Image.Image:
    """Draw xyxy ``boxes`` (pixels of ``image``) on ``image`` in place, each with its score when given; returns it.

    Line width (default: 1/300 of the frame's longer side, at least 2 px) and label size (:func:`label_font`) follow
    the frame, so a label reads the same on a 160 px demo frame and a 1,920 px Kvasir frame; each score sits on a
    filled tag of the box's colour, above the box (inside it at the top edge). Tags never cover one another: the
    highest score takes its place first, and a tag that would overlap one already drawn (nested or duplicate boxes)
    moves down below it.
    """
    draw = ImageDraw.Draw(image)
    width = max(2, round(max(image.size) / 300)) if width is None else width
    font = label_font(image.size)
    target = max(11, round(max(image.size) / 40))
    boxes = np.asarray(torch.as_tensor(boxes).detach().cpu(), dtype=np.float64).reshape(-1, 4)
    scores_np = None if scores is None else np.asarray(torch.as_tensor(scores).detach().cpu()).reshape(-1)
    for x0, y0, x1, y1 in boxes:
        draw.rectangle([x0, y0, max(x0, x1 - 1), max(y0, y1 - 1)], outline=colour, width=width)
    if scores_np is not None:
        placed: list[tuple[int, int, int, int]] = []
        for i in np.argsort(-scores_np, kind="stable"):  # tags after every box line, so no line crosses a tag
            stamp = _label_stamp(draw, f"{scores_np[i]:.2f}", colour, font, target)
            placed.append(_place(image, stamp, (boxes[i][0], boxes[i][1]), placed))
    return image


def _label_stamp(
    draw: ImageDraw.ImageDraw,
    text: str,
    colour: tuple[int, int, int],
    font: ImageFont.ImageFont | ImageFont.FreeTypeFont,
    target: int,
) -> Image.Image:
    """``text`` in black on a tag of ``colour``, about ``target`` pixels high."""
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    stamp = Image.new("RGB", (int(right - left) + 4, int(bottom - top) + 4), colour)
    ImageDraw.Draw(stamp).text((2 - left, 2 - top), text, fill=(0, 0, 0), font=font)
    if stamp.height < 0.6 * target:  # bitmap font: scale the rendered text instead
        scale = max(1, round(target / stamp.height))
        stamp = stamp.resize((stamp.width * scale, stamp.height * scale), Image.Resampling.NEAREST)
    return stamp


def _place(
    image: Image.Image, stamp: Image.Image, corner: tuple[float, float], placed: list[tuple[int, int, int, int]]
) -> tuple[int, int, int, int]:
    """Paste ``stamp`` just above ``corner`` (below it when there is no room), lower while it would overlap a tag in
    ``placed``; returns its ``(x0, y0, x1, y1)``."""
    x = max(0, min(round(corner[0]), image.width - stamp.width))
    y = round(corner[1]) - stamp.height
    if y < 0:
        y = round(corner[1])
    y = max(0, y)

    def overlaps(top: int) -> bool:
        return any(x < r[2] and r[0] < x + stamp.width and top < r[3] and r[1] < top + stamp.height for r in placed)

    while overlaps(y) and y + stamp.height < image.height:
        y = max(r[3] for r in placed if x < r[2] and r[0] < x + stamp.width and y < r[3] and r[1] < y + stamp.height)
    y = min(y, max(0, image.height - stamp.height))
    image.paste(stamp, (x, y))
    return x, y, x + stamp.width, y + stamp.height


def frame_image(image: torch.Tensor) -> Image.Image:
    """A ``(3, W, H)`` [0, 1] frame (MONAI ``PILReader`` order) as an RGB PIL image (H rows, W columns)."""
    hwc = (image.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8).permute(2, 1, 0)
    return Image.fromarray(hwc.numpy(), mode="RGB")
