"""Image checks and the one RGB converter shared by the data sets: catch a bad image file before a loader worker does.

Pixel values: every loader reads images through :func:`to_rgb`, which gives 8-bit RGB by these rules (the pre-flight
checks apply the same function, so what they keep, the loaders read alike):

- RGB, L, LA, P, PA, RGBA, CMYK, 1, YCbCr, ...: PIL's own conversion to RGB (8-bit already; alpha is dropped);
- 16-bit integers (PIL modes ``I;16``, ``I;16B``, ...: 16-bit grayscale PNG and TIFF) and 32-bit integers (``I``)
  holding values in 0..65535: scaled by the 16-bit range, ``round(v / 257)``, so 65535 becomes 255 (16-bit RGB PNGs
  PIL already reads as 8-bit RGB);
- 32-bit floats (``F``: float TIFF) with every value finite and in [0, 1]: ``round(255 v)``;
- anything else (``I`` values outside 0..65535, floats outside [0, 1] or not finite, modes PIL cannot convert) is
  refused with an :class:`ImageFileError` of kind ``"unsupported"``: guessing a range (min-max per image) would change
  the intensities a network learns from, silently.

Orientation: an image whose EXIF orientation tag says it is displayed rotated or mirrored (phone and endoscope JPEGs)
is read as displayed (Pillow's ``ImageOps.exif_transpose``), frames, masks and tiles alike, since boxes and masks are
drawn on what a viewer shows; :func:`inspect_image` reports the displayed size and the tag, so the checks count such
files.

Size: an image of more than ``max_image_pixels`` pixels (default :data:`MAX_IMAGE_PIXELS`, PIL's own limit against
decompression bombs, about 9459 x 9459) is refused with kind ``"too_large"``. PIL's limit is process-wide
(``PIL.Image.MAX_IMAGE_PIXELS``): :func:`inspect_image` and :class:`~monai_kdml.data.LoadRGBImaged` set it to their
``max_image_pixels`` argument in the process they run in (pre-flight and loader workers), and :func:`to_rgb` applies it.
Raise it there for genuinely large images (``None`` disables the check).
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = [
    "IMAGE_SUFFIXES",
    "MAX_IMAGE_PIXELS",
    "ImageFileError",
    "ImageInfo",
    "bomb_error",
    "displayed_size",
    "exif_orientation",
    "inspect_image",
    "is_image_file",
    "is_listed_file",
    "scaling_of",
    "set_max_image_pixels",
    "to_rgb",
]

IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
"""File suffixes (lower case) that every loader of monai-kdml reads as images, through PIL."""

MAX_IMAGE_PIXELS: int = 89_478_485
"""Default ``max_image_pixels`` of every pre-flight and loader: PIL's own default (``1024 * 1024 * 1024 // 4 // 3``)."""

_RAISE_HINT = "pass a larger max_image_pixels if the image is genuine"
# how PIL reports unreadable, damaged or truncated files
_DAMAGE = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error)
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")
_INTEGER = ("I", "I;16S", "I;16LS", "I;16BS", "I;32", "I;32S")
# modes whose conversion cannot fail on pixel values: a header tells all the pre-flight needs to know
_HEADER_SAFE = ("RGB", "L", "LA", "P", "PA", "RGBA", "RGBX", "CMYK", "1", "YCbCr", *_SIXTEEN_BIT)


def is_image_file(path: str | Path) -> bool:
    """Whether ``path`` names a visible image file: an :data:`IMAGE_SUFFIXES` suffix, not hidden (``.``, ``._``)."""
    name = Path(path).name
    return Path(name).suffix.lower() in IMAGE_SUFFIXES and not name.startswith(".")


def is_listed_file(path: Path) -> bool:
    """Whether a folder listing keeps ``path``: a file, or a link whose target is gone.

    A dangling link is listed so that the check (:func:`inspect_image`) counts and names it ("no such file") instead
    of it vanishing from the counts.
    """
    return path.is_file() or (path.is_symlink() and not path.exists())


class ImageFileError(ValueError):
    """An image file that cannot be used; the message names the file and what is wrong.

    Args:
        path: the file.
        reason: what is wrong, for a person.
        kind: ``"missing"``, ``"not_image"``, ``"corrupt"`` (damaged or truncated), ``"too_large"`` (over
            ``max_image_pixels``) or ``"unsupported"`` (pixel values or mode :func:`to_rgb` refuses).
    """

    def __init__(self, path: str | Path, reason: str, kind: str = "corrupt") -> None:
        self.path, self.reason, self.kind = str(path), reason, kind
        super().__init__(f"{path}: {reason}")

    def __reduce__(self) -> tuple:  # picklable across loader processes despite the three arguments
        return type(self), (self.path, self.reason, self.kind)


@dataclass(frozen=True)
class ImageInfo:
    """What a successful check tells about a file.

    Args:
        path: the file.
        width: width in pixels.
        height: height in pixels.
        mode: PIL mode, e.g. ``"RGB"``, ``"RGBA"``, ``"L"``, ``"I;16"``.
        format: PIL format, e.g. ``"PNG"``, ``"JPEG"``.
        decoded: whether the pixels were decoded (and converted by :func:`to_rgb`), not only the header checked.
        orientation: the EXIF orientation tag (1: as stored; 2-8: :func:`to_rgb` turns it to the displayed
            orientation, whose size ``width`` and ``height`` are).
    """

    path: str
    width: int
    height: int
    mode: str
    format: str = ""
    decoded: bool = True
    orientation: int = 1


_EXIF_ORIENTATION = 0x0112
_SWAPS_AXES = (5, 6, 7, 8)  # the orientations that turn the image by 90 degrees


def exif_orientation(img: Image.Image) -> int:
    """The EXIF orientation tag of an opened image (1, "as stored", when it has none or an invalid one).

    A PNG's EXIF chunk comes before its pixels (PNG 3rd edition), so a PNG without one in its header has none: asking
    Pillow anyway would decode the whole file, which the PNG checksum check avoids.
    """
    if img.format == "PNG" and "exif" not in img.info:
        return 1
    try:
        value = int(img.getexif().get(_EXIF_ORIENTATION, 1))
    except (TypeError, ValueError, SyntaxError, OSError):  # a damaged EXIF block reads as "no orientation"
        return 1
    return value if 1 <= value <= 8 else 1


def displayed_size(img: Image.Image) -> tuple[int, int]:
    """``(width, height)`` of an opened image as displayed, i.e. after its EXIF orientation."""
    return (img.height, img.width) if exif_orientation(img) in _SWAPS_AXES else (img.width, img.height)


def scaling_of(mode: str) -> str | None:
    """How :func:`to_rgb` maps a mode's values to 8 bits: ``"16-bit"``, ``"float"``, or ``None`` (8-bit already)."""
    if mode in _SIXTEEN_BIT or mode in _INTEGER:
        return "16-bit"
    return "float" if mode.startswith("F") else None


def set_max_image_pixels(max_image_pixels: int | None) -> None:
    """Set PIL's process-wide decompression-bomb limit, ``PIL.Image.MAX_IMAGE_PIXELS`` (``None``: no limit).

    Raises:
        ValueError: a limit that is not a positive integer.
    """
    if max_image_pixels is not None and (isinstance(max_image_pixels, bool) or int(max_image_pixels) < 1):
        raise ValueError(f"`max_image_pixels` must be a positive number of pixels or None, got {max_image_pixels!r}")
    Image.MAX_IMAGE_PIXELS = None if max_image_pixels is None else int(max_image_pixels)


def _too_large(path: str | Path, width: int, height: int, limit: int) -> ImageFileError:
    return ImageFileError(
        path,
        f"{width} x {height} = {width * height} pixels is over max_image_pixels={limit} (PIL's guard against "
        f"decompression bombs); {_RAISE_HINT}",
        "too_large",
    )


def bomb_error(path: str | Path, err: Exception, limit: int | None) -> ImageFileError:
    """The :class:`ImageFileError` for PIL's ``DecompressionBombError`` ``err`` (raised at open, over twice its limit).

    Args:
        path: the file.
        err: PIL's error; its message gives the image's pixel count.
        limit: the ``max_image_pixels`` in force.

    Returns:
        An error of kind ``"too_large"`` naming the file, its pixels and the limit.
    """
    found = re.search(r"\((\d+) pixels\)", str(err))
    size = f"{found.group(1)} pixels" if found else str(err)
    return ImageFileError(
        path,
        f"{size} is over max_image_pixels={limit} (PIL's guard against decompression bombs); {_RAISE_HINT}",
        "too_large",
    )


def _check_size(img: Image.Image, path: str | Path) -> None:
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and img.width * img.height > limit:
        raise _too_large(path, img.width, img.height, limit)
    if img.width * img.height == 0:
        raise ImageFileError(path, f"empty image ({img.width} x {img.height} pixels)")


def _to_uint8(img: Image.Image, path: str) -> Image.Image:
    """An ``L`` image from a 16-bit, 32-bit integer or float one, by the rules of the module doc."""
    values = np.asarray(img)
    if img.mode.startswith("F"):
        if not np.isfinite(values).all():
            raise ImageFileError(path, "float image with NaN or infinite values", "unsupported")
        low, high = float(values.min()), float(values.max())
        if low < 0.0 or high > 1.0:
            raise ImageFileError(
                path,
                f"float image with values in [{low:.4g}, {high:.4g}]: only [0, 1] is read (scaled by 255); save it as "
                "8-bit or scale it to [0, 1]",
                "unsupported",
            )
        return Image.fromarray(np.rint(values.astype(np.float64) * 255.0).astype(np.uint8), "L")
    low, high = int(values.min()), int(values.max())
    if low < 0 or high > 65535:
        raise ImageFileError(
            path,
            f"{img.mode} integer image with values in [{low}, {high}]: only 0..65535 (16-bit) is read; save it as "
            "8-bit or 16-bit",
            "unsupported",
        )
    return Image.fromarray(((values.astype(np.uint32) + 128) // 257).astype(np.uint8), "L")


def to_rgb(img: Image.Image) -> Image.Image:
    """``PILReader(converter=to_rgb)``: decode ``img`` and return it as 8-bit RGB (rules in the module doc).

    Every loader and pre-flight of monai-kdml uses this one converter, so training, validation and inference read
    pixels alike. It also applies PIL's process-wide ``MAX_IMAGE_PIXELS`` exactly (PIL itself only refuses twice it).

    Args:
        img: an opened PIL image (``Image.open``); its ``filename`` names the file in errors.

    Returns:
        The image in mode ``"RGB"``.

    Raises:
        ImageFileError: the pixels do not decode (truncated or damaged file), the image is over the pixel limit, or
            its values or mode cannot be mapped to 8-bit RGB.
    """
    path = str(getattr(img, "filename", "") or "<in-memory image>")
    _check_size(img, path)
    try:
        img.load()
    except _DAMAGE as err:
        raise ImageFileError(path, f"corrupt or truncated image ({err})") from None
    if exif_orientation(img) != 1:
        img = ImageOps.exif_transpose(img)  # what a viewer shows, and what boxes and masks were drawn on
    if img.mode == "RGB":
        return img
    if scaling_of(img.mode) is not None:
        img = _to_uint8(img, path)
    try:
        return img.convert("RGB")
    except ValueError as err:
        raise ImageFileError(path, f"mode {img.mode} cannot be converted to RGB ({err})", "unsupported") from None


def inspect_image(
    path: str | Path, decode: bool | None = True, max_image_pixels: int | None = MAX_IMAGE_PIXELS
) -> ImageInfo:
    """Check one image file as the loaders will read it; report its size and mode.

    Always: the header, the pixel limit and PIL's ``verify()`` (for PNG: every chunk's CRC through ``IEND``; for
    JPEG, TIFF and BMP it checks little). Then, when ``decode`` says so, a full decode through :func:`to_rgb`.

    Args:
        path: an image file readable by PIL (PNG, JPEG, TIFF, BMP, ...).
        decode: ``True``: always decode; ``False``: only when the mode needs its values checked (``I``, ``F``);
            ``None``: also decode every format but PNG, whose CRCs catch truncation and damaged bytes.
        max_image_pixels: refuse images with more pixels; also set as PIL's process-wide limit (module doc).

    Returns:
        The file's :class:`ImageInfo`.

    Raises:
        ImageFileError: the file is missing, not an image, corrupt, truncated, too large or unsupported
            (``kind`` says which).
    """
    path = Path(path)
    set_max_image_pixels(max_image_pixels)
    if not path.is_file():
        raise ImageFileError(path, "no such file", "missing")
    try:
        with Image.open(path) as img:
            info = ImageInfo(str(path), img.width, img.height, img.mode, img.format or "", decoded=False)
            _check_size(img, path)
            img.verify()
        with Image.open(path) as img:  # verify() leaves the image unusable; reading EXIF before it breaks verify()
            orientation = exif_orientation(img)
            width, height = displayed_size(img)
            full = decode or (decode is None and info.format != "PNG") or info.mode not in _HEADER_SAFE
            if full:
                to_rgb(img)
        info = ImageInfo(info.path, width, height, info.mode, info.format, decoded=False, orientation=orientation)
    except ImageFileError:
        raise
    except Image.DecompressionBombError as err:  # PIL refuses at open what is over twice its limit
        raise bomb_error(path, err, max_image_pixels) from None
    except UnidentifiedImageError:
        raise ImageFileError(path, "not an image file PIL can read", "not_image") from None
    except _DAMAGE as err:
        raise ImageFileError(path, f"corrupt or truncated image ({err})") from None
    return ImageInfo(info.path, info.width, info.height, info.mode, info.format, bool(full), info.orientation)
