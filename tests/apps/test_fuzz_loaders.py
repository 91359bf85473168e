"""Property-based fuzzing of the loaders: tiles, frames and box files as damaged clinical systems hand them over.

Every case must end in a clean ``ImageFileError`` / ``ValueError`` / ``FileNotFoundError`` naming the file, or in a
counted skip that names it, and every kept file must then load through the real transforms. Hypothesis runs
derandomized (the same cases on every machine) without an example database; ``-s`` prints how many cases of each
outcome ran (also in ``--hypothesis-show-statistics``).
"""

from __future__ import annotations

import csv
import io
import json
import math
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image

from monai_kdml.apps.msi.tiles import check_tiles
from monai_kdml.apps.msi.transforms import tile_transforms
from monai_kdml.apps.polyp.kvasir import FrameLayout, kvasir_preflight
from monai_kdml.apps.polyp.transforms import polyp_train_transforms, polyp_val_transforms
from monai_kdml.data.images import IMAGE_SUFFIXES, MAX_IMAGE_PIXELS, ImageFileError
from monai_kdml.data.loading import LoadRGBImaged

FUZZ = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
BOX_FUZZ = settings(FUZZ, max_examples=300)
SMALL_LIMIT = 600  # pixels: "huge" images kept cheap by patching the limit down
S = 32  # network input side of the transforms under test
COUNTS: Counter[str] = Counter()

# which PIL modes each format can write (tried, and the case discarded when PIL cannot)
WRITABLE = {
    "PNG": ("L", "LA", "P", "RGB", "RGBA", "I;16", "1"),
    "JPEG": ("L", "RGB", "CMYK"),
    "TIFF": ("L", "LA", "P", "RGB", "RGBA", "CMYK", "I;16", "I", "F", "1"),
    "BMP": ("L", "P", "RGB", "1"),
}
SUFFIX = {"PNG": ".png", "JPEG": ".jpg", "TIFF": ".tif", "BMP": ".bmp"}


@pytest.fixture(scope="module", autouse=True)
def _report_counts() -> Iterator[None]:
    yield
    print(f"\nfuzz cases by outcome: {dict(sorted(COUNTS.items()))}, total {sum(COUNTS.values())}")


@pytest.fixture(scope="module")
def scratch(module_tmp: Callable[[str], Path]) -> Path:
    return module_tmp("fuzz")


def _case_dir(scratch: Path) -> Path:
    folder = scratch / uuid.uuid4().hex[:12]
    folder.mkdir()
    return folder


@st.composite
def images(draw: st.DrawFn, max_side: int = 40) -> dict[str, Any]:
    """An image file's bytes: any mode and format PIL writes, random size and values, often damaged."""
    fmt = draw(st.sampled_from(sorted(WRITABLE)))
    mode = draw(st.sampled_from(WRITABLE[fmt]))
    shape = draw(
        st.one_of(
            st.tuples(st.integers(1, max_side), st.integers(1, max_side)),
            st.sampled_from([(1, 1), (1, 300), (300, 1), (30, 30)]),  # extremes; 30 x 30 > SMALL_LIMIT
        )
    )
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    width, height = shape
    values = draw(st.sampled_from(["full", "unit", "wide", "nan", "constant"]))
    if mode == "F":
        pixels: Any = {
            "full": rng.random((height, width)),
            "unit": rng.random((height, width)),
            "wide": rng.uniform(-5, 300, (height, width)),
            "nan": np.where(rng.random((height, width)) < 0.5, np.nan, 0.5),
            "constant": np.full((height, width), 1.0),
        }[values].astype(np.float32)
        img = Image.fromarray(pixels, "F")
    elif mode in ("I", "I;16"):
        high = 70000 if values == "wide" and mode == "I" else 65535
        low = -100 if values == "wide" and mode == "I" else 0
        pixels = rng.integers(low, high + 1, (height, width))
        if values == "constant":
            pixels[:] = 65535
        img = Image.fromarray(pixels.astype(np.int32 if mode == "I" else np.uint16))
    else:
        base = Image.fromarray(rng.integers(0, 256, (height, width, 4), dtype=np.uint8), "RGBA")
        img = base.convert(mode) if mode != "P" else base.convert("RGB").quantize(16)
    buffer = io.BytesIO()
    try:
        img.save(buffer, fmt)
    except (OSError, ValueError, KeyError):  # a mode this format's writer does not take
        event("discarded: PIL cannot write it")
        draw(st.nothing())
    data = buffer.getvalue()
    damage = draw(st.sampled_from(["none", "none", "truncate", "flip", "garbage", "empty", "junk_tail"]))
    if damage == "truncate":
        data = data[: draw(st.integers(0, max(0, len(data) - 1)))]
    elif damage == "flip":
        data = bytearray(data)
        data[draw(st.integers(0, len(data) - 1))] ^= 1 << draw(st.integers(0, 7))
        data = bytes(data)
    elif damage == "garbage":
        data = draw(st.binary(min_size=0, max_size=64))
    elif damage == "empty":
        data = b""
    elif damage == "junk_tail":
        data += draw(st.binary(min_size=1, max_size=32))
    suffix = draw(st.one_of(st.just(SUFFIX[fmt]), st.sampled_from(IMAGE_SUFFIXES)))  # suffixes lie too
    return {"data": data, "suffix": suffix, "mode": mode, "format": fmt, "size": shape, "damage": damage, "img": img}


def _expected_gray(img: Image.Image) -> np.ndarray | None:
    """The documented 8-bit value of a 16-bit or float image (None where the rules refuse it)."""
    values = np.asarray(img).astype(np.float64)
    if img.mode == "F":
        if not np.isfinite(values).all() or values.min() < 0 or values.max() > 1:
            return None
        return np.rint(values * 255)
    if values.min() < 0 or values.max() > 65535:
        return None
    return np.floor((values + 128) / 257)


def _assert_loaded(image: Any) -> None:
    array = np.asarray(image)
    assert array.shape == (3, S, S) and np.isfinite(array).all()
    assert array.min() >= 0.0 and array.max() <= 1.0


# ------------------------------------------------------------------------------------------------ tiles (MSI)


@FUZZ
@given(spec=images(), small_limit=st.booleans())
def test_fuzz_tile_check_then_transforms(scratch: Path, spec: dict[str, Any], small_limit: bool) -> None:
    path = _case_dir(scratch) / f"tile{spec['suffix']}"
    path.write_bytes(spec["data"])
    limit = SMALL_LIMIT if small_limit else MAX_IMAGE_PIXELS
    clean, report = check_tiles(
        [{"image": str(path)}], expected_size=None, max_bad_fraction=None, max_image_pixels=limit
    )
    assert report.total == 1 and report.kept + report.skipped == 1
    if spec["damage"] == "none":  # an intact file is kept unless too large or of values the rules refuse
        width, height = spec["size"]
        refused = spec["mode"] in ("I", "F") and _expected_gray(spec["img"]) is None
        assert bool(clean) == (width * height <= limit and not refused), report.summary()
    if not clean:
        assert report.unreadable and report.unreadable[0].startswith(f"{path}: "), report.unreadable
        COUNTS[f"tile skipped ({spec['damage']})"] += 1
        event("tile: counted skip")
        return
    sample = tile_transforms(S, labels=False, max_image_pixels=limit)({"image": str(path)})
    _assert_loaded(sample["image"])
    if spec["damage"] == "none" and spec["mode"] in ("I;16", "I", "F"):
        expected = _expected_gray(spec["img"])
        assert expected is not None
        loaded = np.asarray(LoadRGBImaged("image", max_image_pixels=limit)({"image": str(path)})["image"])
        assert np.array_equal(loaded[..., 0], expected.T), "16-bit / float values not scaled as documented"
    COUNTS[f"tile kept and loaded ({spec['damage']})"] += 1
    event("tile: kept and loaded")


@FUZZ
@given(spec=images())
def test_fuzz_tile_loader_names_the_file(scratch: Path, spec: dict[str, Any]) -> None:
    """Without any pre-flight, the loader either loads or raises an ImageFileError naming the file."""
    path = _case_dir(scratch) / f"tile{spec['suffix']}"
    path.write_bytes(spec["data"])
    try:
        image = LoadRGBImaged("image", max_image_pixels=SMALL_LIMIT)({"image": str(path)})["image"]
    except ImageFileError as err:
        assert err.path == str(path) and str(err).startswith(f"{path}: ")
        COUNTS["loader: ImageFileError"] += 1
        return
    assert image.shape[-1] == 3
    COUNTS["loader: loaded"] += 1


# ------------------------------------------------------------------------------------------------ frames (polyp)


def _frame_root(folder: Path, frame: dict[str, Any], mask: dict[str, Any] | None) -> Path:
    """A Kvasir-style folder: the fuzzed ``frame`` (with a fuzzed ``mask``) beside a good 48 x 40 frame."""
    (folder / "images").mkdir()
    (folder / "masks").mkdir()
    (folder / "images" / f"fuzz{frame['suffix']}").write_bytes(frame["data"])
    if mask is not None:
        (folder / "masks" / f"fuzz{mask['suffix']}").write_bytes(mask["data"])
    Image.new("RGB", (48, 40), (200, 60, 60)).save(folder / "images" / "good.png")
    width, height = frame["size"]
    boxes = {
        "good": {"height": 40, "width": 48, "bbox": [{"label": "polyp", "xmin": 5, "ymin": 5, "xmax": 30, "ymax": 30}]},
        "fuzz": {"bbox": [{"xmin": 0, "ymin": 0, "xmax": width, "ymax": height}]},
    }
    (folder / "kavsir_bboxes.json").write_text(json.dumps(boxes))
    return folder


def _assert_frames_load(datalist: list[dict[str, Any]], limit: int | None = MAX_IMAGE_PIXELS) -> None:
    val, train = polyp_val_transforms(S, max_image_pixels=limit), polyp_train_transforms(S, max_image_pixels=limit)
    for item in datalist:
        for chain in (val, train):
            out = chain(dict(item))
            _assert_loaded(out["image"])
            box = np.asarray(out["box"]).reshape(-1, 4)
            assert np.isfinite(box).all() and (box >= 0).all() and (box <= S).all()
            assert len(box) == len(np.asarray(out["label"]).reshape(-1))


@FUZZ
@given(frame=images(max_side=64), mask=st.one_of(st.none(), images(max_side=64)), small_limit=st.booleans())
def test_fuzz_frame_preflight_then_transforms(
    scratch: Path, frame: dict[str, Any], mask: dict[str, Any] | None, small_limit: bool
) -> None:
    root = _frame_root(_case_dir(scratch), frame, mask)
    limit = SMALL_LIMIT * 4 if small_limit else MAX_IMAGE_PIXELS  # the good frame (1920 px) stays under it
    datalist, report = kvasir_preflight(root, max_image_pixels=limit)
    kept = {item["id"] for item in datalist}
    assert "good" in kept
    if "fuzz" not in kept:
        skipped = report.corrupt_images + report.too_large_images + report.unsupported_images + report.no_box_source
        assert "fuzz" in skipped, report.summary()
        COUNTS[f"frame skipped ({frame['damage']})"] += 1
        event("frame: counted skip")
    else:
        scaled = {"I;16": report.scaled_from_16bit, "I": report.scaled_from_16bit, "F": report.scaled_from_float}
        if frame["damage"] == "none" and frame["mode"] in scaled:  # the report says what the loader does
            assert "fuzz" in scaled[frame["mode"]], report.summary()
        COUNTS[f"frame kept and loaded ({frame['damage']})"] += 1
        event("frame: kept and loaded")
    _assert_frames_load(datalist, limit)


# ------------------------------------------------------------------------------------------------ box files


def mostly(common: st.SearchStrategy, *rare: st.SearchStrategy, weight: int = 4) -> st.SearchStrategy:
    """``common`` ``weight`` times as often as each of ``rare`` (``st.one_of(a, a, b)`` does not weight ``a``)."""
    return st.sampled_from([common] * weight + list(rare)).flatmap(lambda strategy: strategy)


SPECIAL = st.sampled_from(
    [math.nan, math.inf, -math.inf, 1e308, -1e308, 10**30, -0.0, True, False, None, "12", "", "x", "1e400", [1], {}]
)
PLAIN = st.one_of(st.integers(-10, 60), st.floats(-10, 60))
JSON_ANY = st.recursive(
    st.one_of(st.none(), st.booleans(), PLAIN, SPECIAL, st.text(max_size=8)),
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=10,
)
COORD = mostly(PLAIN, SPECIAL, weight=12)  # mostly numbers, so that many cases get past the first entry
LABEL = mostly(st.just("polyp"), st.just(""), st.none(), SPECIAL, st.text(max_size=4))
BOX_DICT = st.fixed_dictionaries({k: COORD for k in ("xmin", "ymin", "xmax", "ymax")}, optional={"label": LABEL})
BOX = mostly(BOX_DICT, JSON_ANY, weight=8)
SIDE = mostly(st.sampled_from([48, 40]), st.integers(-5, 100), SPECIAL)
ENTRY_DICT = st.fixed_dictionaries({"bbox": st.lists(BOX, max_size=4)}, optional={"width": SIDE, "height": SIDE})
ENTRY = mostly(ENTRY_DICT, st.fixed_dictionaries({"bbox": JSON_ANY}), JSON_ANY, weight=8)
IDS = st.one_of(st.sampled_from(["good", "good.png", "good.PNG", "ghost", "góod", "🙂", ""]), st.text(max_size=10))
ANNOTATIONS = mostly(st.dictionaries(IDS, ENTRY, min_size=1, max_size=3), JSON_ANY, st.binary(max_size=40), weight=6)


def _box_root(folder: Path) -> Path:
    (folder / "images").mkdir()
    Image.new("RGB", (48, 40), (200, 60, 60)).save(folder / "images" / "good.png")
    return folder


def _assert_clean_boxes(datalist: list[dict[str, Any]], layout: FrameLayout) -> None:
    for item in datalist:
        assert len(item["box"]) == len(item["label"])
        for box, label in zip(item["box"], item["label"], strict=True):
            assert all(math.isfinite(v) for v in box) and 0 <= label < len(layout.classes)
            assert 0 <= box[0] < box[2] <= 48 and 0 <= box[1] < box[3] <= 40
            assert min(box[2] - box[0], box[3] - box[1]) >= layout.min_box_size


@BOX_FUZZ
@given(content=ANNOTATIONS)
def test_fuzz_box_json(scratch: Path, content: Any) -> None:
    root = _box_root(_case_dir(scratch))
    path = root / "kavsir_bboxes.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(json.dumps(content, ensure_ascii=bool(len(str(content)) % 2)))
    layout = FrameLayout(masks_dir="none")
    try:
        datalist, _ = kvasir_preflight(root, layout)
    except ValueError as err:
        assert str(path) in str(err), err
        COUNTS["json: ValueError naming the file"] += 1
        return
    _assert_clean_boxes(datalist, layout)
    _assert_frames_load(datalist)
    COUNTS["json: read, boxes clean"] += 1


CELL = mostly(PLAIN.map(str), SPECIAL.map(str), st.text(max_size=6), weight=10)
ROW = mostly(
    st.tuples(
        st.sampled_from(["good.png", "good", "good.PNG", "ghost.png", "", " good.png "]), *[CELL] * 4, LABEL.map(str)
    ).map(list),
    st.lists(CELL, max_size=7),
)


@BOX_FUZZ
@given(
    header=mostly(
        st.just(["image", "xmin", "ymin", "xmax", "ymax", "label"]),
        st.permutations(["image", "xmin", "ymin", "xmax", "ymax", "label"]),
        st.lists(st.sampled_from(["image", "xmin", "ymin", "xmax", "ymax", "label", "x", ""]), max_size=7),
    ),
    rows=st.lists(ROW, max_size=5),
    raw=mostly(st.none(), st.binary(max_size=40), weight=6),
)
def test_fuzz_box_csv(scratch: Path, header: list[str], rows: list[list[str]], raw: bytes | None) -> None:
    root = _box_root(_case_dir(scratch))
    path = root / "boxes.csv"
    if raw is not None:
        path.write_bytes(raw)
    else:
        with path.open("w", newline="") as fh:
            csv.writer(fh).writerows([list(header), *rows])
    layout = FrameLayout(masks_dir="none", boxes_file="boxes.csv")
    try:
        datalist, _ = kvasir_preflight(root, layout)
    except ValueError as err:
        assert str(path) in str(err), err
        COUNTS["csv: ValueError naming the file"] += 1
        return
    _assert_clean_boxes(datalist, layout)
    _assert_frames_load(datalist)
    COUNTS["csv: read, boxes clean"] += 1
