"""The one image-loading transform of monai-kdml: MONAI's ``LoadImaged`` + ``PILReader(converter=to_rgb)``, with errors
that name the file.

A file that passed the pre-flight can still fail in a loader worker (changed on disk, a decoder bug, a PNG whose
CRCs hold but whose pixel stream does not): :class:`LoadRGBImaged` then raises
:class:`~monai_kdml.data.ImageFileError` ``"<path>: <reason>"`` instead of MONAI's "cannot find a suitable reader"
with every reader's traceback, or a silent fall-back to MONAI's default readers (which return a refused float
image's raw values). MONAI's ``Compose`` wraps the error in ``RuntimeError(f"applying transform {transform}")``;
the transform's ``repr`` then carries the error too, so the last line of the traceback names the file.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
from monai.config import KeysCollection
from monai.data import PILReader
from monai.transforms import LoadImage, MapTransform
from PIL import Image, UnidentifiedImageError

from monai_kdml.data.images import MAX_IMAGE_PIXELS, ImageFileError, bomb_error, set_max_image_pixels, to_rgb

__all__ = ["LoadRGBImaged", "load_rgb"]


def load_rgb(path: str, loader: LoadImage, reader: PILReader) -> Any:
    """``loader(path, reader)`` with every failure turned into an :class:`ImageFileError` naming ``path``.

    Args:
        path: the image file.
        loader: a ``LoadImage`` (``image_only=True``).
        reader: the ``PILReader`` to read with (passed at call time, so MONAI tries no other reader).

    Returns:
        The loader's ``MetaTensor``.

    Raises:
        ImageFileError: the file is missing, not an image, too large, damaged or unsupported.
    """
    try:
        return loader(path, reader=reader)
    except ImageFileError:
        raise
    except FileNotFoundError:
        raise ImageFileError(path, "no such file", "missing") from None
    except UnidentifiedImageError:
        raise ImageFileError(path, "not an image file PIL can read", "not_image") from None
    except Image.DecompressionBombError as err:
        raise bomb_error(path, err, Image.MAX_IMAGE_PIXELS) from None
    except Exception as err:  # any decoder failure: name the file, keep PIL's words
        raise ImageFileError(path, f"cannot be loaded ({type(err).__name__}: {err})") from None


class LoadRGBImaged(MapTransform):
    """Load image files as 8-bit RGB ``MetaTensor`` s (``(W, H, 3)``, float32 values 0..255, as ``LoadImaged``).

    Equivalent to ``LoadImaged(keys, reader=PILReader(converter=to_rgb), image_only=True)`` for readable files, with
    the pixel rules of :func:`~monai_kdml.data.to_rgb` (16-bit and [0, 1] float images scaled, not clipped), PIL's
    pixel limit set in the process that loads (a ``DataLoader`` worker too), and errors naming the file.

    Args:
        keys: keys of the file paths.
        max_image_pixels: largest image accepted, set as ``PIL.Image.MAX_IMAGE_PIXELS`` at every call (``None``:
            no limit); use the value given to the pre-flight check.
        allow_missing_keys: don't raise when a key is missing.

    Raises:
        ImageFileError: (when called) a file that cannot be loaded; ``kind`` says why.
    """

    def __init__(
        self,
        keys: KeysCollection,
        max_image_pixels: int | None = MAX_IMAGE_PIXELS,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        set_max_image_pixels(max_image_pixels)  # validates it
        self.max_image_pixels = max_image_pixels
        self.reader = PILReader(converter=to_rgb)
        self.loader = LoadImage(reader=self.reader, image_only=True, dtype=np.float32)
        self._failure = threading.local()  # this thread's last error, for __repr__ (CacheDataset fills in threads)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        set_max_image_pixels(self.max_image_pixels)  # each worker process has its own PIL
        self._failure.error = None
        d = dict(data)
        for key in self.key_iterator(d):
            try:
                d[key] = load_rgb(str(d[key]), self.loader, self.reader)
            except ImageFileError as err:
                self._failure.error = err
                raise
        return d

    def __repr__(self) -> str:
        error = getattr(self._failure, "error", None)
        return f"{type(self).__name__}(keys={self.keys})" + (f", which failed: {error}" if error else "")

    def __getstate__(self) -> dict[str, Any]:  # DataLoader workers and deep copies: the thread-local stays behind
        return {k: v for k, v in self.__dict__.items() if k != "_failure"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._failure = threading.local()
