"""Painting one synthetic H&E tile (the look of the MSI demo set; :mod:`monai_kdml.apps.msi.demo` lays the tiles
out as Kather's data set).

A tile is painted as hematoxylin and eosin concentrations (``skimage.color.rgb2hed`` units) and turned into RGB by
Beer-Lambert absorption; see :mod:`monai_kdml.apps.msi.demo` for the histology it imitates and the class signal.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image
from scipy import ndimage

__all__ = ["KATHER_MICRONS_PER_PIXEL", "render_msi_tile"]

KATHER_MICRONS_PER_PIXEL = 256.0 / 224.0
"""Kather et al. 2019 cut 256 um tiles and resized them to 224 px."""
_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], np.float32)  # skimage rgb_from_hed
_OD_SCALE = -np.log(1e-6)  # skimage's log_adjust: rgb2hed units -> natural optical density
_ANGLES = 12  # orientation bins of the nucleus stamp bank


def _nucleus(rng: np.random.Generator, length: float, width: float, angle: float, vesicular: float) -> np.ndarray:
    """One nucleus as a (2, h, w) stamp: soft alpha and hematoxylin; ``vesicular`` in [0, 1] pales the centre."""
    r = int(np.ceil(max(length, width) / 2)) + 2
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1].astype(np.float32)
    u, v = xx * np.cos(angle) + yy * np.sin(angle), -xx * np.sin(angle) + yy * np.cos(angle)
    phi = np.arctan2(v, u)
    d = np.hypot(u / (length / 2), v / (width / 2)) * (1 + 0.07 * np.sin(3 * phi + rng.uniform(0, 6.3)))
    alpha = np.clip((1 - d) * width / 2 + 0.5, 0, 1)  # ~1 px soft edge
    chromatin = ndimage.gaussian_filter(rng.standard_normal(alpha.shape).astype(np.float32), 0.7)
    rim = np.exp(-(((d - 0.85) / 0.2) ** 2))
    h = 0.15 * (1 - vesicular * 0.55 * (1 - rim)) * (1 + 0.35 * chromatin)
    if vesicular > 0.3:  # nucleolus
        h += 0.08 * vesicular * np.exp(-((u - rng.uniform(-1, 1)) ** 2 + v**2) / 1.2)
    return np.stack([alpha, np.clip(h, 0, 0.4) * alpha])


@lru_cache(maxsize=4)
def _stamp_bank(microns_per_pixel: float) -> dict[str, list[np.ndarray]]:
    """Pre-rendered nuclei at this scale (fixed seed: one bank for every data set).

    ``lymph[i]``; ``spindle[angle * 3 + variant]``; ``tumour[(angle * len(_SIZES) + size) * 3 + variant]``.
    """
    rng, px = np.random.default_rng(1234), 1.0 / microns_per_pixel
    angles = [np.pi * k / _ANGLES for k in range(_ANGLES)]
    tumour = [(a, s) for a in angles for s in _SIZES for _ in range(3)]
    return {
        "lymph": [_nucleus(rng, d * px, d * px * rng.uniform(0.85, 1), 0.0, 0.0) for d in rng.uniform(5, 7, 8)],
        "spindle": [_nucleus(rng, rng.uniform(13, 20) * px, 3 * px, a, 0.1) for a in angles for _ in range(3)],
        "tumour": [_nucleus(rng, 11 * s * px, 6.5 * s * px, a, rng.uniform(0.3, 0.9)) for a, s in tumour],
    }


_SIZES = np.linspace(0.7, 1.6, 6)  # tumour nucleus size bins (x 11 x 6.5 um)


class _Canvas:
    """Stain layers of one tile: background H and E, nucleus alpha ``a`` and nucleus hematoxylin ``n``."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.h, self.e, self.a, self.n = (np.zeros((size, size), np.float32) for _ in range(4))

    def stamp(self, stamps: list[np.ndarray], index: np.ndarray, yx: np.ndarray, layer: str = "n") -> None:
        """Paste ``stamps[index[i]]`` centred at ``yx[i]`` by maximum (overlapping nuclei merge), cropped."""
        for k, (y, x) in zip(index.tolist(), np.rint(yx).astype(int).tolist(), strict=True):
            stamp = stamps[k]
            r = stamp.shape[1] // 2
            y0, x0 = y - r, x - r
            ya, yb, xa, xb = max(y0, 0), min(y0 + 2 * r + 1, self.size), max(x0, 0), min(x0 + 2 * r + 1, self.size)
            if ya >= yb or xa >= xb:
                continue
            crop = stamp[:, ya - y0 : yb - y0, xa - x0 : xb - x0]
            if layer == "n":
                np.maximum(self.a[ya:yb, xa:xb], crop[0], out=self.a[ya:yb, xa:xb])
            target = self.n if layer == "n" else self.e  # red cells stamp eosin
            np.maximum(target[ya:yb, xa:xb], crop[1], out=target[ya:yb, xa:xb])


def _tumour_index(rng: np.random.Generator, angle: np.ndarray, mean_size: float, spread: float) -> np.ndarray:
    """Bank indices of tumour nuclei with orientations ``angle`` and size bins ~ N(mean_size, spread)."""
    angle_bin = np.rint((angle % np.pi) / np.pi * _ANGLES).astype(int) % _ANGLES
    size_bin = np.clip(np.rint(rng.normal(mean_size, spread, angle.shape)), 0, len(_SIZES) - 1).astype(int)
    return (angle_bin * len(_SIZES) + size_bin) * 3 + rng.integers(0, 3, angle.shape)


def _field(rng: np.random.Generator, size: int, scale: float) -> np.ndarray:
    """Smooth noise with correlation length ~``scale`` px, zero mean and unit std (bicubic upsampling by PIL)."""
    n = max(int(size / max(scale, 1.0)) + 2, 3)
    coarse = Image.fromarray(rng.standard_normal((n, n)).astype(np.float32), mode="F")
    field = np.asarray(coarse.resize((size, size), Image.Resampling.BICUBIC))
    return (field - field.mean()) / (field.std() + 1e-6)


def _mask(field: np.ndarray, coverage: float) -> np.ndarray:
    """``field`` above its ``1 - coverage`` quantile: a blob mask covering ``coverage`` of the tile."""
    return field > np.quantile(field, 1 - coverage) if coverage > 0 else np.zeros(field.shape, bool)


def _fibres(rng: np.random.Generator, size: int, px: float) -> np.ndarray:
    """Wavy collagen texture: white noise low-passed along a random direction (Fourier domain), then warped."""
    ky, kx = np.fft.fftfreq(size)[:, None], np.fft.rfftfreq(size)[None, :]
    angle = rng.uniform(0, np.pi)
    along, across = kx * np.cos(angle) + ky * np.sin(angle), -kx * np.sin(angle) + ky * np.cos(angle)
    gain = np.exp(-2 * np.pi**2 * ((along * 12 * px) ** 2 + (across * 0.6 * px) ** 2))
    tex = np.fft.irfft2(np.fft.rfft2(rng.standard_normal((size, size))) * gain, s=(size, size)).astype(np.float32)
    grid = np.mgrid[:size, :size].astype(np.float32)
    warp = [grid[i] + 4 * px * _field(rng, size, 40 * px) for i in range(2)]
    tex = ndimage.map_coordinates(tex, warp, order=1, mode="reflect")
    return tex / (tex.std() + 1e-6)


def _scatter(rng: np.random.Generator, mask: np.ndarray, count: int) -> np.ndarray:
    """``count`` uniform random (y, x) points inside ``mask`` (none if it is empty), shape ``(count, 2)``."""
    ys, xs = np.nonzero(mask)
    if count <= 0 or ys.size == 0:
        return np.zeros((0, 2))
    pick = rng.integers(0, ys.size, count)
    return np.stack([ys[pick], xs[pick]], 1) + rng.uniform(-0.5, 0.5, (count, 2))


def _draw_gland(
    canvas: _Canvas, rng: np.random.Generator, bank: dict, cy: float, cx: float, px: float, m: float
) -> tuple[tuple[slice, slice], np.ndarray] | None:
    """A tumour gland: white lumen (or dirty necrosis), epithelial band of radially oriented columnar nuclei.

    Returns the gland's bounding box and its mask inside it, or ``None`` when the box is empty.
    """
    a, b, theta = rng.uniform(9, 30) * px, rng.uniform(7, 22) * px, rng.uniform(0, np.pi)
    outer, wobble = 1 + rng.uniform(13, 20) * px / ((a + b) / 2), 0.05 + 0.25 * m  # band edge in lumen radii
    r = int(max(a, b) * outer / (1 - wobble)) + 2
    y0, y1 = max(int(cy) - r, 0), min(int(cy) + r, canvas.size)
    x0, x1 = max(int(cx) - r, 0), min(int(cx) + r, canvas.size)
    if y0 >= y1 or x0 >= x1:
        return None
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    u = (xx - cx) * np.cos(theta) + (yy - cy) * np.sin(theta)
    v = -(xx - cx) * np.sin(theta) + (yy - cy) * np.cos(theta)
    wobble = 1 + wobble * np.sin(rng.integers(2, 6) * np.arctan2(v, u) + rng.uniform(0, 6.3))
    rr = np.hypot(u / a, v / b) * wobble  # 1 at the lumen surface
    lumen, epi, box = rr < 1, (rr >= 1) & (rr < outer), (slice(y0, y1), slice(x0, x1))
    canvas.h[box][epi], canvas.e[box][epi] = 0.04, 0.03
    canvas.h[box][lumen] = canvas.e[box][lumen] = 0.004
    if rng.random() < 0.5 * (1 - m):  # dirty necrosis (pink-purple debris): typical of MSS adenocarcinoma
        debris = np.clip(_field(rng, max(y1 - y0, x1 - x0), 4 * px)[: y1 - y0, : x1 - x0], 0, None)[lumen]
        canvas.h[box][lumen] += 0.02 * debris
        canvas.e[box][lumen] += 0.04 * debris
    count = int(2 * np.pi * np.sqrt((a * a + b * b) / 2) * outer / (7.5 * px))
    phi = np.linspace(0, 2 * np.pi, count, endpoint=False) + rng.uniform(0, 1)
    radial = 1 + (outer - 1) * rng.uniform(0.25, 0.75 + 0.2 * m, count)  # basal, more stratified when poorly formed
    u, v = a * np.cos(phi) * radial, b * np.sin(phi) * radial
    yx = np.stack([cy + u * np.sin(theta) + v * np.cos(theta), cx + u * np.cos(theta) - v * np.sin(theta)], 1)
    normal = np.arctan2(np.sin(phi) / b, np.cos(phi) / a) + theta
    canvas.stamp(bank["tumour"], _tumour_index(rng, normal, 1.5 + 2.5 * m, 0.8 + m), yx)
    return box, rr < outer


def render_msi_tile(
    msi_ness: float,
    rng: np.random.Generator,
    tile_size: int = 224,
    microns_per_pixel: float = KATHER_MICRONS_PER_PIXEL,
    stain_scale: tuple[float, float] = (1.0, 1.0),
) -> np.ndarray:
    """Paint one synthetic H&E tile.

    Args:
        msi_ness: the tile's MSI-ness in [0, 1] (see the module docstring).
        rng: the tile's random stream.
        tile_size: edge in pixels.
        microns_per_pixel: scale of nuclei and structures.
        stain_scale: multipliers of the hematoxylin and eosin concentrations (a patient's staining).

    Returns:
        ``(tile_size, tile_size, 3)`` uint8 RGB.
    """
    m, size, px = float(np.clip(msi_ness, 0, 1)), tile_size, 1.0 / microns_per_pixel
    bank, canvas = _stamp_bank(round(microns_per_pixel, 6)), _Canvas(tile_size)
    area = (size / px / 100.0) ** 2  # tile area in units of 100 x 100 um
    everywhere = np.ones((size, size), bool)
    # 1. stroma: fibrous eosin with pale clefts, sparse spindle nuclei
    fibres = _fibres(rng, size, px)
    canvas.e[:] = rng.uniform(0.024, 0.034) * np.clip(0.8 + 0.45 * fibres, 0.02, 1.8)
    canvas.h[:] = 0.8 * canvas.e
    n = rng.poisson(3 * area)
    canvas.stamp(bank["spindle"], rng.integers(0, 3 * _ANGLES, n), _scatter(rng, everywhere, n))
    # 2. mucin pools (MSI: more and larger): pale blue-grey, wispy; nothing else survives inside
    mucin = _mask(_field(rng, size, 50 * px), rng.uniform(0.1, 0.5) if rng.random() < 0.1 + 0.5 * m else 0)
    wisp = np.clip(0.7 + 0.4 * fibres.T, 0.2, 1.5)  # the stroma texture turned: strands across the fibres
    canvas.h[mucin], canvas.e[mucin] = (0.022 * wisp)[mucin], (0.006 * wisp)[mucin]
    canvas.a[mucin] = canvas.n[mucin] = 0
    # 3. tumour: glands when well differentiated, solid sheets of pleomorphic vesicular nuclei when not
    tumour = _mask(_field(rng, size, 70 * px), rng.beta(2, 1.5) * 0.85)
    differentiation = float(np.clip(0.9 - 0.8 * m + rng.normal(0, 0.15), 0, 1))
    glands = np.zeros((size, size), bool)
    for cy, cx in _scatter(rng, tumour, rng.poisson(area * 3.5 * differentiation)):
        if not glands[int(cy), int(cx)] and (drawn := _draw_gland(canvas, rng, bank, cy, cx, px, m)):
            glands[drawn[0]] |= drawn[1]
    solid = tumour & ~glands & _mask(_field(rng, size, 30 * px), 1 - differentiation)
    canvas.h[solid], canvas.e[solid] = 0.045, 0.03
    step = rng.uniform(12, 15) * px  # cell spacing: a jittered grid packs the sheet
    yx = np.mgrid[0:size:step, 0:size:step].reshape(2, -1).T + rng.normal(0, 0.25 * step, (1, 2))
    yx = np.clip(yx + rng.normal(0, 0.25 * step, yx.shape), 0, size - 1)
    yx = yx[solid[yx[:, 0].astype(int), yx[:, 1].astype(int)]]
    canvas.stamp(bank["tumour"], _tumour_index(rng, rng.uniform(0, np.pi, len(yx)), 2 + 2 * m, 1 + m), yx)
    # 4. lymphocytes in stroma and inside the tumour (both denser with MSI), sometimes a lymphoid aggregate
    til = rng.lognormal(0, 0.4) * area
    yx = [
        _scatter(rng, ~tumour, rng.poisson(til * (3 + 30 * m**1.5))),
        _scatter(rng, tumour, rng.poisson(til * (0.5 + 14 * m**2))),
    ]
    if rng.random() < 0.05 + 0.3 * m:
        blob = _mask(_field(rng, size, 25 * px), rng.uniform(0.03, 0.12))
        yx.append(_scatter(rng, blob, int(blob.sum() / (7 * px) ** 2)))
    yx = np.concatenate(yx)
    canvas.stamp(bank["lymph"], rng.integers(0, len(bank["lymph"]), len(yx)), yx)
    # 5. red cells in a small vessel, empty background at a tissue edge or tear (class-independent)
    if rng.random() < 0.3:
        yx = rng.uniform(0, size, (1, 2)) + rng.normal(0, 6 * px, (rng.integers(4, 20), 2))
        canvas.stamp(bank["lymph"], rng.integers(0, len(bank["lymph"]), len(yx)), yx, layer="e")
    empty = _mask(_field(rng, size, 80 * px), rng.uniform(0.05, 0.35) if rng.random() < 0.25 else 0)
    # 6. compose, defocus, stain (Beer-Lambert), sensor noise
    h = canvas.h * (1 - canvas.a) + canvas.n
    e = canvas.e * (1 - canvas.a) + 0.06 * canvas.a  # nuclei take up some eosin: purple, not navy
    keep = ndimage.gaussian_filter((~empty).astype(np.float32), 1.5 * px)
    blur = rng.uniform(0.4, 1.0)
    h = ndimage.gaussian_filter(h * keep, blur) * stain_scale[0] * rng.uniform(0.9, 1.1)
    e = ndimage.gaussian_filter(e * keep, blur) * stain_scale[1] * rng.uniform(0.9, 1.1)
    od = _OD_SCALE * (h[..., None] * _HED[0] + e[..., None] * (_HED[1] + 0.35 * _HED[2]))  # + residual absorbance
    rgb = rng.uniform(236, 250) * np.exp(-od) + 2.0 * rng.standard_normal(od.shape, np.float32)
    return np.clip(rgb, 0, 255).astype(np.uint8)
