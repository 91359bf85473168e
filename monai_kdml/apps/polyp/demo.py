"""Deterministic synthetic colonoscopy frames with polyps, in Kvasir-SEG's layout, for runs without real data.

``make_polyp_demo(root, n)`` writes::

    root/images/demo_0000.jpg   RGB frame (JPEG, quality 90), longest side ``image_size``, aspect ratio varies
    root/masks/demo_0000.png    polyp mask, 0 / 255 (PNG: lossless, so mask and boxes agree exactly)
    root/kavsir_bboxes.json     {"demo_0000": {"height": H, "width": W, "bbox": [{"label": "polyp", "xmin": ..}]}}

so :func:`monai_kdml.apps.polyp.kvasir.kvasir_datalist` reads it like the real data. Boxes are
``[xmin, ymin, xmax, ymax)`` in pixel edges (``xmax`` exclusive), one per polyp,
computed from that polyp's visible mask.

A frame: pink-orange mucosa with low-frequency albedo, haustral folds around a dark lumen, vignetting, thin
vessels, specular highlights, the endoscope's octagonal black border and sometimes a black overlay box; 1 (sometimes
2-3) polyps as raised domes with an irregular outline, Lambertian shading, a contact shadow, a slightly different
hue and fewer vessels, of varying size, some cut by the frame's edge. Frame ``i`` depends only on ``(seed, i)``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
from PIL import Image
from skimage import filters, measure, morphology, transform

from monai_kdml.data.cache import ensure_cache_folder
from monai_kdml.loop_progress import Progress

__all__ = ["DEMO_VERSION", "ensure_polyp_demo", "make_polyp_demo", "render_polyp_frame"]

logger = logging.getLogger(__name__)

#: Bump when the rendering changes, so cached demo folders are rebuilt.
DEMO_VERSION = 1
_MARKER = "polyp_demo.json"
_MIN_VISIBLE_PX = 12  # a polyp must show at least this many pixels on each side, else it is placed again


def _noise(rng: np.random.Generator, shape: tuple[int, int], scale: float) -> np.ndarray:
    """Zero-mean, unit-std smooth noise with features about ``scale`` pixels wide (coarse grid, cubic upsampling)."""
    grid = (max(2, round(shape[0] / scale) + 2), max(2, round(shape[1] / scale) + 2))
    field = transform.resize(rng.standard_normal(grid), shape, order=3, mode="reflect", anti_aliasing=False)
    return (field - field.mean()) / (field.std() + 1e-8)


def _frame_border(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """Visible area (bool): the endoscope's octagon with cut corners, sometimes minus a black overlay box."""
    v, u = np.mgrid[0:height, 0:width]
    u, v = (u + 0.5) / width, (v + 0.5) / height
    cut = rng.uniform(0.08, 0.16)
    visible = np.minimum(u, 1 - u) + np.minimum(v, 1 - v) >= cut
    if rng.random() < 0.3:  # like the real data's black inset at the bottom left
        visible &= ~((u < rng.uniform(0.15, 0.3)) & (v > rng.uniform(0.7, 0.85)))
    return visible


def _polyp_height(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """Elevation in pixels of one polyp: a dome over an ellipse with a wavy outline; 0 outside."""
    short = min(height, width)
    radius = short * rng.uniform(0.06, 0.3)
    aspect = rng.uniform(0.7, 1.0)
    angle = rng.uniform(0, np.pi)
    # centres up to slightly outside the frame, so some polyps touch or cross the edge
    cy, cx = rng.uniform(-0.05, 1.05) * height, rng.uniform(-0.05, 1.05) * width
    y, x = np.mgrid[0:height, 0:width]
    dy, dx = y + 0.5 - cy, x + 0.5 - cx
    a = dx * np.cos(angle) + dy * np.sin(angle)
    b = (-dx * np.sin(angle) + dy * np.cos(angle)) / aspect
    theta = np.arctan2(b, a)
    outline = 1.0 + sum(rng.uniform(0, 0.08) * np.cos(k * theta + rng.uniform(0, 2 * np.pi)) for k in (2, 3, 5))
    rho = np.hypot(a, b) / (radius * outline)
    return radius * rng.uniform(0.4, 0.8) * np.clip(1.0 - rho**2, 0.0, None)


def _place_polyps(
    height: int, width: int, visible: np.ndarray, rng: np.random.Generator
) -> tuple[list[np.ndarray], np.ndarray]:
    """1 (p=.75), 2 (p=.18) or 3 polyps that do not touch each other; returns their visible masks and summed height."""
    count = int(rng.choice([1, 2, 3], p=[0.75, 0.18, 0.07]))
    masks: list[np.ndarray] = []
    heights = np.zeros((height, width))
    occupied = np.zeros((height, width), dtype=bool)
    attempts = 0
    while len(masks) < count and (attempts < 40 * count or not masks):  # always at least one polyp
        attempts += 1
        h = _polyp_height(height, width, rng)
        mask = (h > 0) & visible
        rows, cols = np.nonzero(mask)
        if (
            rows.size == 0
            or np.ptp(rows) < _MIN_VISIBLE_PX
            or np.ptp(cols) < _MIN_VISIBLE_PX
            or (mask & occupied).any()
        ):
            continue
        masks.append(mask)
        heights += h
        occupied |= morphology.dilation(mask, morphology.disk(4))  # keeps masks' components apart
    return masks, heights


def render_polyp_frame(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """Render one synthetic colonoscopy frame.

    Args:
        rng: source of randomness (the frame is a pure function of its state).
        height: frame height in pixels.
        width: frame width in pixels.

    Returns:
        ``(image, masks)``: uint8 RGB array ``(height, width, 3)`` and one bool mask ``(height, width)`` per polyp
        (visible part only, at least one polyp).
    """
    shape = (height, width)
    y, x = np.mgrid[0:height, 0:width] + 0.5
    visible = _frame_border(height, width, rng)
    masks, dome = _place_polyps(height, width, visible, rng)
    polyp = np.clip(sum(filters.gaussian(m.astype(float), sigma=1.0) for m in masks), 0, 1)  # soft edge

    # 1. albedo: pink-orange mucosa; polyps mostly a little paler, sometimes redder; fine texture
    mucosa = np.array([0.85, 0.45, 0.32]) + rng.normal(0, 0.03, 3)
    tint = np.array([1.08, 1.2, 1.2]) if rng.random() < 0.7 else np.array([1.05, 0.88, 0.9])
    albedo = mucosa * (1 + 0.08 * _noise(rng, shape, 60))[..., None]
    albedo = albedo * (1 + polyp[..., None] * (tint * rng.uniform(0.95, 1.1) - 1))
    albedo *= 1 + 0.03 * _noise(rng, shape, 2.5)[..., None]

    # 2. vessels: zero-crossings of band-passed noise, patchy, faded on polyps
    ridge = np.exp(-((_noise(rng, shape, 14) / 0.12) ** 2)) * np.clip(_noise(rng, shape, 50) + 0.3, 0, 1)
    ridge *= 1 - 0.8 * polyp
    albedo *= 1 - rng.uniform(0.15, 0.35) * ridge[..., None] * np.array([0.35, 1.0, 0.9])

    # 3. illumination: folds around the lumen, dark lumen, vignetting, polyp relief with a contact shadow
    ly, lx = rng.uniform(-0.1, 1.1) * height, rng.uniform(-0.1, 1.1) * width
    r_lumen = np.hypot(y - ly, x - lx)
    lumen_size = rng.uniform(0.12, 0.35) * min(shape)
    light = 1 - rng.uniform(0.8, 0.95) * np.exp(-((r_lumen / lumen_size) ** 2))
    period = rng.uniform(0.12, 0.25) * min(shape)
    light *= 1 + 0.07 * np.sin(2 * np.pi * r_lumen / period + 2.5 * _noise(rng, shape, 40))
    light *= 1 - 0.45 * (np.hypot(y / height - 0.5, x / width - 0.5) / 0.71) ** 2
    gy, gx = np.gradient(filters.gaussian(dome, sigma=1.0))
    sun = np.array([rng.uniform(-0.6, 0.6), rng.uniform(-0.6, 0.6), 1.0])
    normal = np.stack([-gx, -gy, np.ones(shape)], axis=-1)
    lambert = np.clip(normal @ sun, 0, None) / np.linalg.norm(normal, axis=-1) / np.linalg.norm(sun)
    lambert /= sun[2] / np.linalg.norm(sun)  # a flat surface keeps its brightness
    shadow = filters.gaussian(polyp, sigma=3.0) * (1 - polyp)
    light *= (1 - polyp + polyp * lambert) * (1 - 0.25 * shadow)
    rgb = albedo * light[..., None]

    # 4. specular highlights: a few on polyp tops facing the light, scattered small ones on wet mucosa
    rgb = rgb + _highlights(rng, lambert * (polyp > 0.5), shape)[..., None]

    # 5. sensor: noise, black border
    rgb += rng.normal(0, 0.012, rgb.shape)
    rgb *= visible[..., None]
    return (np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8), masks


def _highlights(rng: np.random.Generator, polyp_light: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Specular spots in [0, 1.2]: 1-3 on the brightest polyp pixels, 5-25 small ones anywhere."""
    spots = np.zeros(shape)
    on_polyp = polyp_light[polyp_light > 0]
    lit = np.flatnonzero(polyp_light > np.quantile(on_polyp, 0.95)) if on_polyp.size else np.zeros(0, int)
    for sigma, candidates, count in ((2.5, lit, int(rng.integers(1, 4))), (1.0, None, int(rng.integers(5, 26)))):
        impulses = np.zeros(shape)
        if candidates is None:
            picks = rng.integers(0, impulses.size, size=count)
        else:
            picks = rng.choice(candidates, size=min(count, candidates.size), replace=False)
        impulses.flat[picks] = 2 * np.pi * sigma**2 * rng.uniform(0.8, 1.6, size=len(picks))  # peak ~1 after blur
        spots = np.maximum(spots, filters.gaussian(impulses, sigma=sigma))
    return np.clip(spots, 0, 1.2)


def _frame_size(image_size: int, rng: np.random.Generator) -> tuple[int, int]:
    """(height, width) with longest side ``image_size`` and aspect ratio width/height around the real data's 1.15."""
    aspect = float(np.clip(np.exp(rng.normal(np.log(1.15), 0.12)), 0.75, 1.6))
    if aspect >= 1:
        return round(image_size / aspect), image_size
    return image_size, round(image_size * aspect)


def _box(mask: np.ndarray) -> dict[str, int | str]:
    """Kvasir JSON box of a mask: pixel edges, ``xmax``/``ymax`` exclusive."""
    min_row, min_col, max_row, max_col = measure.regionprops(mask.astype(np.uint8))[0].bbox
    return {"label": "polyp", "xmin": int(min_col), "ymin": int(min_row), "xmax": int(max_col), "ymax": int(max_row)}


def make_polyp_demo(root: str | Path, num_images: int, image_size: int = 288, seed: int = 0) -> Path:
    """Write ``num_images`` synthetic frames with masks and boxes to ``root`` (Kvasir-SEG layout, see module doc).

    Args:
        root: output folder (created); use a new or empty one, since files of a larger earlier run would stay.
        num_images: number of frames, >= 1.
        image_size: longest side of each frame in pixels, >= 64.
        seed: frame ``i`` is drawn from ``numpy.random.default_rng([seed, i])``.

    Returns:
        ``root`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: ``num_images`` < 1 or ``image_size`` < 64.
    """
    if num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}")
    if image_size < 64:
        raise ValueError(f"image_size must be >= 64 pixels, got {image_size}")
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    boxes: dict[str, dict] = {}
    with Progress(num_images, "polyp demo frames", "frame", logger, interval=10) as progress:
        for i in range(num_images):
            rng = np.random.default_rng([seed, i])
            height, width = _frame_size(image_size, rng)
            image, masks = render_polyp_frame(rng, height, width)
            name = f"demo_{i:04d}"
            Image.fromarray(image).save(root / "images" / f"{name}.jpg", quality=90)
            Image.fromarray((np.any(masks, axis=0) * 255).astype(np.uint8)).save(root / "masks" / f"{name}.png")
            boxes[name] = {"height": height, "width": width, "bbox": [_box(m) for m in masks]}
            progress.update()
    (root / "kavsir_bboxes.json").write_text(json.dumps(boxes, indent=1))
    return root


def ensure_polyp_demo(cache_dir: str | Path, num_images: int = 200, image_size: int = 288, seed: int = 0) -> Path:
    """Return a complete demo folder under ``cache_dir``, generating it once (idempotent, safe against crashes).

    The folder is named after the parameters and holds a marker file with :data:`DEMO_VERSION` and the
    parameters; it is built in a temporary sibling folder and renamed into place, so a crash never leaves a
    half-written folder that looks complete. Logs a WARNING on every call: the data are synthetic.

    Args:
        cache_dir: where demo folders live (created).
        num_images: see :func:`make_polyp_demo`.
        image_size: see :func:`make_polyp_demo`.
        seed: see :func:`make_polyp_demo`.

    Returns:
        The demo folder, ready for :func:`monai_kdml.apps.polyp.kvasir.kvasir_datalist`.
    """
    cache_dir = Path(cache_dir)
    params = {"version": DEMO_VERSION, "num_images": num_images, "image_size": image_size, "seed": seed}
    target = cache_dir / f"polyp_demo_v{DEMO_VERSION}_n{num_images}_px{image_size}_seed{seed}"
    logger.warning(
        "No dataset_dir given: training on %d SYNTHETIC polyp frames in %s. Results say nothing about real "
        "colonoscopy; pass a Kvasir-SEG folder for real data.",
        num_images,
        target,
    )
    ensure_cache_folder(
        target, params, lambda root: make_polyp_demo(root, num_images, image_size=image_size, seed=seed), None, _MARKER
    )
    return target
