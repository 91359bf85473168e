"""Pre-flight check of tile files before training and inference: unusable tiles are skipped and counted, never met by
a loader worker."""

from __future__ import annotations

import logging
import os
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from monai_kdml.apps.msi.kather import CLASS_NAMES
from monai_kdml.data.images import MAX_IMAGE_PIXELS, ImageFileError, ImageInfo, inspect_image, scaling_of

__all__ = ["TileCheckError", "TileCheckReport", "check_tiles", "decode_mode"]

logger = logging.getLogger(__name__)

_EXAMPLES = 3


class TileCheckError(ValueError):
    """Too many tiles failed :func:`check_tiles` (or a whole class did); the message gives counts and examples."""


@dataclass
class TileCheckReport:
    """What :func:`check_tiles` found: counts per kind, ``modes``/``sizes``/``scaled`` of the kept tiles that the
    pipeline converts, resizes or scales, a few ``"path: reason"`` ``examples`` per kind and every skipped tile in
    ``unreadable``."""

    total: int = 0
    kept: int = 0
    missing: int = 0
    corrupt: int = 0
    not_image: int = 0
    too_large: int = 0
    unsupported: int = 0
    modes: Counter[str] = field(default_factory=Counter)
    sizes: Counter[str] = field(default_factory=Counter)
    scaled: Counter[str] = field(default_factory=Counter)
    oriented: int = 0
    examples: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    unreadable: list[str] = field(default_factory=list)
    decode: bool | None = None
    decoded: int = 0
    seconds: float = 0.0

    skipped = property(
        lambda self: self.missing + self.corrupt + self.not_image + self.too_large + self.unsupported,
        doc="Unusable tiles, dropped.",
    )
    converted = property(lambda self: sum(self.modes.values()), doc="Kept tiles that are not RGB.")
    resized = property(lambda self: sum(self.sizes.values()), doc="Kept tiles of another size.")

    def _note(self, kind: str, line: str) -> None:
        if len(self.examples[kind]) < _EXAMPLES:
            self.examples[kind].append(line)

    def summary(self) -> str:
        """A readable multi-line block for the log."""
        how = {True: "full decode", False: "header + PNG checksums", None: "PNG checksums, full decode of the rest"}
        lines = [
            f"Tile check ({how[self.decode]}, {self.decoded} decoded, {self.seconds:.1f} s): kept {self.kept} of "
            f"{self.total} tiles",
            f"  skipped, no such file:          {self.missing}",
            f"  skipped, corrupt or truncated:  {self.corrupt}",
            f"  skipped, not an image:          {self.not_image}",
            f"  skipped, over max_image_pixels: {self.too_large}",
            f"  skipped, unsupported values:    {self.unsupported}",
            f"  converted to RGB by the loader: {self.converted} {dict(self.modes) or ''}",
            f"  scaled from 16-bit:             {self.scaled['16-bit']}",
            f"  scaled from float [0, 1]:       {self.scaled['float']}",
            f"  resized by the pipeline:        {self.resized} {dict(self.sizes) or ''}",
            f"  turned by their EXIF tag:       {self.oriented}",
        ]
        lines += [f"  e.g. {kind}: {line}" for kind, examples in self.examples.items() for line in examples]
        return "\n".join(line.rstrip() for line in lines)


_KINDS = {"missing": "missing", "corrupt": "corrupt", "not_image": "not_image", "too_large": "too_large"}


def _inspect_chunk(
    paths: Sequence[str], decode: bool | None, max_image_pixels: int | None
) -> list[ImageInfo | ImageFileError]:
    results: list[ImageInfo | ImageFileError] = []
    for path in paths:
        try:
            results.append(inspect_image(path, decode=decode, max_image_pixels=max_image_pixels))
        except ImageFileError as err:
            results.append(err)
    return results


_DECODE_WORDS: dict[str, bool | None] = {"true": True, "false": False, "null": None, "none": None}


def decode_mode(decode: bool | str | None) -> bool | None:
    """The ``decode`` option as :func:`check_tiles` takes it; the words a command line gives (``--decode true``) too.

    Raises:
        ValueError: anything but ``true``, ``false`` or ``null`` (any case), naming the key and what each means.
    """
    if decode is None or isinstance(decode, bool):
        return decode
    if isinstance(decode, str) and decode.strip().lower() in _DECODE_WORDS:
        return _DECODE_WORDS[decode.strip().lower()]
    raise ValueError(
        f"`decode` must be true (decode every tile), false (only 16-bit and float tiles) or null (every format but "
        f"PNG, whose checksums are checked), got {decode!r}."
    )


def check_tiles(
    datalist: Sequence[dict[str, Any]],
    expected_size: tuple[int, int] | None = (224, 224),
    decode: bool | str | None = None,
    num_workers: int | None = None,
    max_bad_fraction: float | None = 0.05,
    max_image_pixels: int | None = MAX_IMAGE_PIXELS,
    class_names: Sequence[str] | None = None,
) -> tuple[list[dict[str, Any]], TileCheckReport]:
    """Pre-flight check of every tile before training or inference: drop unusable files, count what the pipeline fixes.

    - missing files (a CSV row naming no file), corrupt, truncated, non-image files, images over
      ``max_image_pixels`` and images whose values :func:`~monai_kdml.data.to_rgb` refuses (floats outside [0, 1],
      ...): logged, counted and **skipped**;
    - grayscale, palette, RGBA, ... tiles: kept and counted; 16-bit and [0, 1] float tiles: kept and counted as
      scaled; the loaders (:func:`~monai_kdml.data.to_rgb`) convert and scale them;
    - tiles of another size than ``expected_size``: kept and counted; the pipeline's resize handles them.

    How much is read (``decode``): every tile's header, the pixel limit and PIL's ``verify()``, which for PNG checks
    every chunk's CRC through ``IEND`` without decompressing; then by default (``None``) a full decode of every
    tile that is not a PNG (JPEG, TIFF, BMP: their ``verify()`` checks little, so a truncated JPEG would pass) and
    of every tile whose values need checking (modes ``I``, ``F``). Cost on this project's 2-core machine, shared
    with other jobs (load 4-5), ``python benchmarks/tile_check_cost.py [--num-workers 1]``: 224 px real H&E tiles,
    warm file cache, extrapolated to 93k tiles (the 2-thread pool gained nothing on the busy cores):

    ============================  =================  =========  ==========================  =========
    tiles, ``decode``             1 thread: ms/tile  93k tiles  2 threads, shared: ms/tile  93k tiles
    ============================  =================  =========  ==========================  =========
    PNG, ``None`` (CRC check)     0.085              8 s        0.15                        13 s
    JPEG, ``None`` (full decode)  0.51               47 s       1.15                        107 s
    PNG, ``True`` (full decode)   2.3                214 s      4.3                         400 s
    ============================  =================  =========  ==========================  =========

    Of 480 truncated and 480 bit-flipped copies of real PNG tiles the CRC check caught all, as a full decode did; of
    480 truncated JPEG copies ``verify()`` caught 11 and a full decode all (JPEG bit flips mostly decode, to wrong
    pixels: no check sees them). Hence the default. ``decode=True`` decodes every tile (a PNG whose CRCs hold but
    whose zlib stream does not is rare: the loader then raises an ``ImageFileError`` naming it); ``decode=False``
    skips the JPEG decode (not recommended).
    Tiles are read in a thread pool: decoding releases the GIL, and on a cold cache or network file system the reads
    overlap.

    Args:
        datalist: dicts with ``"image"`` (and ``"label"``), e.g. from :func:`kather_datalist`.
        expected_size: ``(height, width)`` of a tile; ``None`` skips the size count.
        decode: ``None``: full decode of every format but PNG; ``True``: of every tile; ``False``: of none but
            ``I``/``F`` tiles; the words ``"true"``, ``"false"``, ``"null"`` too (:func:`decode_mode`).
        num_workers: threads; default ``min(8, os.cpu_count())``.
        max_bad_fraction: more skipped tiles than this fraction is an error (a broken download, not a few bad
            files); ``None``: no limit (inference: predict every readable tile).
        max_image_pixels: tiles with more pixels are skipped; also set as PIL's process-wide limit
            (:mod:`monai_kdml.data.images`); give the loaders the same value.
        class_names: name of each label, for messages; Kather's by default.

    Returns:
        ``(clean_datalist, report)``: the usable items in input order and a :class:`TileCheckReport`.

    Raises:
        TileCheckError: more than ``max_bad_fraction`` of the tiles, or every tile of a class (labelled items only),
            are unusable.
    """
    start = time.perf_counter()
    decode = decode_mode(decode)
    report = TileCheckReport(total=len(datalist), decode=decode)
    paths = [str(item["image"]) for item in datalist]
    chunks = [paths[i : i + 256] for i in range(0, len(paths), 256)]  # one task per chunk: little pool overhead
    check = partial(_inspect_chunk, decode=decode, max_image_pixels=max_image_pixels)
    with ThreadPoolExecutor(max_workers=num_workers or min(8, os.cpu_count() or 1)) as pool:
        results = [res for chunk in pool.map(check, chunks) for res in chunk]
    clean: list[dict[str, Any]] = []
    for item, res in zip(datalist, results, strict=True):
        if isinstance(res, ImageFileError):
            kind = _KINDS.get(res.kind, "unsupported")
            setattr(report, kind, getattr(report, kind) + 1)
            report._note(kind, str(res))
            report.unreadable.append(str(res))
            continue
        clean.append(item)
        report.decoded += res.decoded
        if res.mode != "RGB":
            report.modes[res.mode] += 1
            report._note("converted", f"{res.path}: mode {res.mode}")
        if res.orientation != 1:
            report.oriented += 1
            report._note("oriented", f"{res.path}: EXIF orientation {res.orientation}, read as displayed")
        if scaling_of(res.mode):
            report.scaled[str(scaling_of(res.mode))] += 1
        if expected_size is not None and (res.height, res.width) != tuple(expected_size):
            report.sizes[f"{res.height}x{res.width}"] += 1
            report._note("resized", f"{res.path}: {res.height}x{res.width}")
    report.kept, report.seconds = len(clean), time.perf_counter() - start
    logger.log(logging.WARNING if report.skipped else logging.INFO, "%s", report.summary())
    labelled = [item for item in datalist if "label" in item]
    emptied = {item["label"] for item in labelled} - {item.get("label") for item in clean if "label" in item}
    if emptied:
        lookup = CLASS_NAMES if class_names is None else dict(enumerate(class_names))
        names = sorted(str(lookup.get(label, label)) for label in emptied)
        raise TileCheckError(f"every tile of class {names} is unusable:\n{report.summary()}")
    if max_bad_fraction is not None and report.total and report.skipped / report.total > max_bad_fraction:
        raise TileCheckError(
            f"{report.skipped} of {report.total} tiles are unusable (more than max_bad_fraction="
            f"{max_bad_fraction}):\n{report.summary()}"
        )
    return clean, report
