"""Training tiles cut from whole-slide images, and the resolution a model was trained at (``tile_mpp``).

``python -m monai_kdml.apps.msi.slide_tiles --slide_dir SLIDES --labels labels.csv --output_dir TILES`` cuts, from
every slide of a labels CSV ``slide,label[,patient]``, the tissue tiles (the same mask and grid as slide inference,
:func:`~monai_kdml.apps.msi.slides.plan_slide`) at ``--tile_mpp`` microns per pixel and ``--tile_size`` pixels, at
most ``--max_tiles`` per slide drawn with ``--seed``, into class folders ``TILES/<class>/<slide>_<row>_<col>.png``
plus a CSV datalist ``TILES/tiles.csv`` (``path,label,patient``: what ``train.json --dataset_dir TILES/tiles.csv``
reads, patients kept) and a report ``TILES/counts.csv`` (tiles and skipped background per slide and class).
Re-running skips the slides already cut (resumable); a slide that fails is named, counted and skipped.

``TILES/slide_tiles.json`` records the scale; :func:`training_tile_mpp` reads it at training time so that the
trained model's record holds ``tile_mpp`` and slide inference needs no option repeated.
"""

from __future__ import annotations

import argparse
import json
import logging
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from monai_kdml.apps.msi.classes import TileClasses, tile_classes
from monai_kdml.apps.msi.demo_render import KATHER_MICRONS_PER_PIXEL
from monai_kdml.apps.msi.slide_report import read_slide_labels, write_table
from monai_kdml.apps.msi.slides import SlideError, SlideSource, list_slides, plan_slide

__all__ = ["DEFAULT_TILE_MPP", "MARKER", "cut_slide_tiles", "main", "record_tile_mpp", "training_tile_mpp"]

logger = logging.getLogger(__name__)

DEFAULT_TILE_MPP = 0.5
"""Microns per pixel of a tile set of unknown scale (Kather et al. cut their tiles at 0.5 um/px)."""
MARKER = "slide_tiles.json"
_DEMO_TILE_SIZE = 224  # the demo set's tiles (ensure_msi_demo's default)


def training_tile_mpp(dataset_dir: str | Path | None, image_size: int) -> float:
    """Microns per pixel of the network's input for a training run (the record's ``tile_mpp``).

    The demo's tiles are 224 px at Kather's 256/224 um/px; tiles cut by :func:`cut_slide_tiles` state their scale in
    ``slide_tiles.json``; any other tile set is taken as :data:`DEFAULT_TILE_MPP` at ``image_size`` (override the
    record with ``--network_record#tile_mpp``). Tiles are resized to ``image_size``, so the scale follows.
    """
    if dataset_dir is None:
        return KATHER_MICRONS_PER_PIXEL * _DEMO_TILE_SIZE / image_size
    root = Path(dataset_dir)
    marker = (root.parent if root.suffix.lower() == ".csv" else root) / MARKER
    if marker.is_file():
        meta = json.loads(marker.read_text())
        return float(meta["tile_mpp"]) * int(meta["tile_size"]) / image_size
    return DEFAULT_TILE_MPP


def record_tile_mpp(record: Mapping[str, Any]) -> float:
    """The trained model's ``tile_mpp``; :data:`DEFAULT_TILE_MPP` with a warning for a record from before it existed.

    Raises:
        ValueError: a recorded value that is not a positive number.
    """
    value = record.get("tile_mpp")
    if value is None:
        logger.warning("models/network.json records no `tile_mpp`: tiling at %s um/px.", DEFAULT_TILE_MPP)
        return DEFAULT_TILE_MPP
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"models/network.json: `tile_mpp` must be a positive number, got {value!r}.")
    return float(value)


def _params(tile_mpp: float, tile_size: int, min_tissue: float, max_tiles: int | None, seed: int) -> dict[str, Any]:
    return {
        "tile_mpp": tile_mpp,
        "tile_size": tile_size,
        "min_tissue": min_tissue,
        "max_tiles": max_tiles,
        "seed": seed,
    }


def _check_marker(output_dir: Path, params: dict[str, Any]) -> None:
    marker = output_dir / MARKER
    if marker.is_file():
        old = json.loads(marker.read_text())
        if diff := [f"{k}: {old.get(k)!r} there, {v!r} now" for k, v in params.items() if old.get(k) != v]:
            raise ValueError(f"{output_dir} holds tiles cut with other settings ({'; '.join(diff)}): use a new folder.")
    output_dir.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps(params, indent=1) + "\n")


def _cut_one(reader: Any, source: SlideSource, label: int, classes: TileClasses, output_dir: Path,
             params: dict[str, Any], slide_mpp: float | None) -> dict[str, Any]:  # fmt: skip
    """Write one slide's tiles and its ``.done`` record; returns its counts row."""
    seed = params["seed"] ^ zlib.crc32(source.name.encode())
    plan = plan_slide(reader, source, params["tile_size"], params["tile_mpp"], slide_mpp, params["min_tissue"],
                      max_tiles=params["max_tiles"], seed=seed)  # fmt: skip
    folder = output_dir / classes.names[label]
    folder.mkdir(parents=True, exist_ok=True)
    wsi = reader.read(str(source.path))
    rows = []
    for tile in plan.tiles:
        patch, _ = reader.get_data(
            wsi, location=tile["location"], size=(tile["size"], tile["size"]), level=tile["level"]
        )
        image = Image.fromarray(np.moveaxis(np.asarray(patch, np.uint8)[:3], 0, -1))
        if image.size != (params["tile_size"], params["tile_size"]):
            image = image.resize((params["tile_size"],) * 2, Image.Resampling.BOX)
        path = folder / f"{source.name}_{tile['row']}_{tile['col']}.png"
        image.save(path)
        rows.append({"path": str(path.relative_to(output_dir)), "label": classes.names[label],
                     "patient": source.patient or source.name})  # fmt: skip
    done = {"slide": source.name, "patient": source.patient or source.name, "class": classes.names[label],
            "tiles": len(rows), "skipped_tiles": plan.skipped, "status": "ok", "rows": rows}  # fmt: skip
    (output_dir / ".done").mkdir(exist_ok=True)
    (output_dir / ".done" / f"{source.name}.json").write_text(json.dumps(done))
    return done


def cut_slide_tiles(
    labels: str | Path,
    output_dir: str | Path,
    slide_dir: str | Path | None = None,
    tile_mpp: float = DEFAULT_TILE_MPP,
    tile_size: int = 224,
    max_tiles: int | None = 500,
    min_tissue: float = 0.5,
    seed: int = 0,
    slide_mpp: float | None = None,
    class_names: Any = None,
    backend: str = "openslide",
) -> Path:
    """Cut training tiles from the slides of ``labels`` (module docstring).

    Args:
        labels: CSV ``slide,label[,patient]``; slides relative to ``slide_dir`` (or to the CSV's folder).
        output_dir: folder of the tiles, ``tiles.csv``, ``counts.csv`` and ``slide_tiles.json``.
        slide_dir: folder of the slides.
        tile_mpp: microns per pixel of the tiles.
        tile_size: tile side in pixels.
        max_tiles: most tiles per slide (a seeded random draw); ``None``: all.
        min_tissue: smallest tissue fraction of a tile.
        seed: seed of the draw (with the slide's name).
        slide_mpp: level-0 microns per pixel of slides whose file states none.
        class_names: the classes (Kather's MSS/MSI by default), as ``train.json``'s ``class_names``.
        backend: MONAI ``WSIReader`` backend.

    Returns:
        The path of ``tiles.csv``.

    Raises:
        ValueError: a bad labels CSV, an output folder cut with other settings, or no slide giving tiles.
    """
    from monai.data import WSIReader

    output_dir, classes = Path(output_dir), tile_classes(class_names)
    params = _params(float(tile_mpp), int(tile_size), float(min_tissue), max_tiles, int(seed))
    _check_marker(output_dir, params)
    slide_labels = read_slide_labels(labels, classes)
    sources = list_slides(slide_dir, labels)
    reader = WSIReader(backend=backend)
    counts: list[dict[str, Any]] = []
    for source in sources:
        done = output_dir / ".done" / f"{source.name}.json"
        if done.is_file():
            counts.append(json.loads(done.read_text()))
            logger.info("slide %s: already cut (%d tiles), skipped.", source.name, counts[-1]["tiles"])
            continue
        label = classes.positive if slide_labels[source.name] else next(
            i for i in range(classes.num_classes) if i != classes.positive
        )  # fmt: skip
        try:
            counts.append(_cut_one(reader, source, label, classes, output_dir, params, slide_mpp))
            logger.info("slide %s: %d tiles (%s).", source.name, counts[-1]["tiles"], classes.names[label])
        except SlideError as err:
            logger.error("%s Skipped; the other slides go on.", err)
            counts.append({"slide": source.name, "patient": source.patient or source.name, "tiles": 0,
                           "class": classes.names[label], "status": f"failed: {err}", "rows": []})  # fmt: skip
    rows = [r for c in counts for r in c["rows"]]
    if not rows:
        raise ValueError(f"no tiles cut from the {len(sources)} slides of {labels}: see the errors above.")
    csv_path = write_table(output_dir / "tiles.csv", rows, ["path", "label", "patient"])
    write_table(output_dir / "counts.csv", counts, ["slide", "patient", "class", "tiles", "skipped_tiles", "status"])
    per_class = {n: sum(c["tiles"] for c in counts if c["class"] == n) for n in classes.names}
    failed = sum(1 for c in counts if c["status"] != "ok")
    logger.info("Cut %d tiles (%s) from %d slides, %d failed: %s, %s.", len(rows),
                ", ".join(f"{n} {k}" for n, k in per_class.items()), len(counts) - failed, failed, csv_path,
                output_dir / "counts.csv")  # fmt: skip
    return csv_path


def main(argv: Sequence[str] | None = None) -> int:
    """The command line (module docstring)."""
    parser = argparse.ArgumentParser(
        prog="python -m monai_kdml.apps.msi.slide_tiles", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--labels", required=True, help="CSV slide,label[,patient]")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--slide_dir", default=None)
    parser.add_argument("--tile_mpp", type=float, default=DEFAULT_TILE_MPP)
    parser.add_argument("--tile_size", type=int, default=224)
    parser.add_argument("--max_tiles", type=int, default=500, help="per slide; 0: all")
    parser.add_argument("--min_tissue", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--slide_mpp", type=float, default=None)
    parser.add_argument("--backend", default="openslide", choices=["openslide", "tifffile", "cucim"])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        cut_slide_tiles(
            args.labels, args.output_dir, args.slide_dir, args.tile_mpp, args.tile_size, args.max_tiles or None,
            args.min_tissue, args.seed, args.slide_mpp, backend=args.backend,
        )  # fmt: skip
    except ValueError as err:
        logger.error("slide_tiles: %s", err)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
