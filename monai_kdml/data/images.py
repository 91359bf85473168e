"""Decoding checks shared by the data sets: catch a bad image file before a loader worker does."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

__all__ = ["IMAGE_SUFFIXES", "ImageFileError", "ImageInfo", "inspect_image", "is_image_file", "to_rgb"]

IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
"""File suffixes (lower case) that every loader of monai-kdml reads as images, through PIL."""


def is_image_file(path: str | Path) -> bool:
    """Whether ``path`` names a visible image file: an :data:`IMAGE_SUFFIXES` suffix, not hidden (``.``, ``._``)."""
    name = Path(path).name
    return Path(name).suffix.lower() in IMAGE_SUFFIXES and not name.startswith(".")


class ImageFileError(ValueError):
    """An image file that cannot be decoded; the message names the file and what is wrong."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


@dataclass(frozen=True)
class ImageInfo:
    """What a successful decode tells about a file.

    Args:
        path: the file.
        width: width in pixels.
        height: height in pixels.
        mode: PIL mode, e.g. ``"RGB"``, ``"RGBA"``, ``"L"``.
    """

    path: str
    width: int
    height: int
    mode: str


def inspect_image(path: str | Path) -> ImageInfo:
    """Fully decode ``path`` once (header check + pixel load) and report its size and mode.

    Args:
        path: an image file readable by PIL (PNG, JPEG, TIFF, ...).

    Returns:
        The file's :class:`ImageInfo`.

    Raises:
        ImageFileError: the file is missing, not an image, corrupt or truncated.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageFileError(path, "no such file")
    try:
        with Image.open(path) as img:
            img.verify()  # structure and checksums (catches corrupt PNG chunks)
        with Image.open(path) as img:
            img.load()  # pixel data (catches truncated files, which verify() lets through for JPEG)
            return ImageInfo(str(path), img.width, img.height, img.mode)
    except UnidentifiedImageError:
        raise ImageFileError(path, "not an image file PIL can read") from None
    except (OSError, SyntaxError, ValueError) as err:  # PIL reports damage with these
        raise ImageFileError(path, f"corrupt or truncated image ({err})") from None


def to_rgb(img: Image.Image) -> Image.Image:
    """``PILReader(converter=to_rgb)``: grayscale, palette and RGBA images become 3-channel RGB."""
    return img if img.mode == "RGB" else img.convert("RGB")
