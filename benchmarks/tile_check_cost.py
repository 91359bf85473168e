"""What the MSI pre-flight tile check costs per tile, and for a Kather-sized data set, in each ``decode`` mode.

Usage (from the repository root)::

    python benchmarks/tile_check_cost.py [--real ../shared/data/he-tiles-real] [--repeat 20] [--tiles 93000] \
        [--num-workers N] [--damaged 40]

Times :func:`monai_kdml.apps.msi.check_tiles` (``--num-workers`` threads, default its own pool) over the real 224 px
H&E PNG tiles and over JPEG copies of them (quality 90, written to a temporary folder and deleted: no data enters the
repository), each listed ``--repeat`` times (warm file cache), and extrapolates to ``--tiles`` tiles. Then counts,
over ``--damaged`` random truncations and as many single bit flips of each of 12 tiles per format, how many PIL's
``verify()`` and a full decode catch. Prints two Markdown tables.
"""

from __future__ import annotations

import argparse
import io
import os
import random
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

from PIL import Image

from monai_kdml.apps.msi.tiles import check_tiles

__all__ = ["main"]

REAL_DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "data" / "he-tiles-real"


def _time(paths: list[str], decode: bool | None, num_workers: int | None, rounds: int = 3) -> float:
    """Median seconds per tile of ``check_tiles`` over ``paths``."""
    items = [{"image": p} for p in paths]
    check = partial(check_tiles, expected_size=None, decode=decode, max_bad_fraction=None, num_workers=num_workers)
    check(items[:64])  # warm the file cache
    runs = []
    for _ in range(rounds):
        start = time.perf_counter()
        check(items)
        runs.append((time.perf_counter() - start) / len(items))
    return statistics.median(runs)


def _caught(data: bytes, full: bool) -> bool:
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.verify()
        if full:
            with Image.open(io.BytesIO(data)) as img:
                img.load()
        return False
    except Exception:  # any complaint of PIL counts as caught
        return True


def _damage_rows(files: dict[str, list[str]], per_tile: int) -> list[list[str]]:
    """``[format, damage, cases, caught by verify(), caught by a full decode]`` rows."""
    rng = random.Random(0)
    rows = []
    for name, paths in files.items():
        counts = {"truncated": [0, 0, 0], "one bit flipped": [0, 0, 0]}
        for path in paths[:12]:
            data = Path(path).read_bytes()
            for _ in range(per_tile):
                flipped = bytearray(data)
                flipped[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
                for kind, bad in (("truncated", data[: rng.randrange(1, len(data))]), ("one bit flipped", flipped)):
                    counts[kind][0] += 1
                    counts[kind][1] += _caught(bytes(bad), full=False)
                    counts[kind][2] += _caught(bytes(bad), full=True)
        rows += [[name, kind, *map(str, c)] for kind, c in counts.items()]
    return rows


def _print(rows: list[list[str]]) -> None:
    for row in [rows[0], ["---"] * len(rows[0]), *rows[1:]]:
        print("| " + " | ".join(row) + " |")


def main(argv: list[str] | None = None) -> list[list[str]]:
    """Run the timings; returns the table rows (header first)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--real", type=Path, default=REAL_DEFAULT)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--tiles", type=int, default=93_000)
    parser.add_argument("--num-workers", type=int, default=None)
    parser.add_argument("--damaged", type=int, default=40)
    args = parser.parse_args(argv)
    pngs = sorted(str(p) for p in args.real.rglob("*.png"))
    if not pngs:
        sys.exit(f"no PNG tiles under {args.real}")
    rows = [["format", "decode", "ms / tile", f"s for {args.tiles} tiles"]]
    with tempfile.TemporaryDirectory() as tmp:
        jpgs = []
        for i, path in enumerate(pngs):
            jpgs.append(str(Path(tmp) / f"{i}.jpg"))
            with Image.open(path) as img:
                img.convert("RGB").save(jpgs[-1], quality=90)
        for name, files in (("PNG", pngs), ("JPEG", jpgs)):
            for decode in (None, False, True):
                per_tile = _time(files * args.repeat, decode, args.num_workers)
                rows.append([name, str(decode), f"{per_tile * 1e3:.3f}", f"{per_tile * args.tiles:.0f}"])
        damage = [["format", "damage", "cases", "caught by verify()", "caught by a full decode"]]
        damage += _damage_rows({"PNG": pngs, "JPEG": jpgs}, args.damaged)
    threads = args.num_workers or "check_tiles' default"
    print(f"{len(pngs)} real tiles x {args.repeat}, {threads} threads, load average {os.getloadavg()[0]:.1f}\n")
    _print(rows)
    print()
    _print(damage)
    return rows + damage


if __name__ == "__main__":
    main()
