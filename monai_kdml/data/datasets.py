"""Where the decoded data live between epochs: in memory when they fit, on disk when they do not.

Decoding and resizing every image once is what makes a KD + ML run cost about the arithmetic of its networks
(``docs/benchmarks.md``). The apps' transform chains end their deterministic part with :class:`AfterCache`, so what
is cached is the resized image as ``uint8`` (a quarter of float32), and everything after it (random augmentation,
scaling to [0, 1]) runs per epoch. :func:`cached_dataset` then picks MONAI's ``CacheDataset`` (memory),
``PersistentDataset`` (files under ``cache_dir``) or a plain ``Dataset`` (decode every epoch).
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.data import CacheDataset, Dataset, PersistentDataset
from monai.transforms import Compose
from monai.utils import look_up_option

from monai_kdml.data.cache import stable_name
from monai_kdml.loop_progress import on_terminal
from monai_kdml.memory import GIB, available_memory

__all__ = ["CACHE_MODES", "AfterCache", "cached_bytes", "cached_dataset", "choose_cache"]

logger = logging.getLogger(__name__)

CACHE_MODES = ("auto", "memory", "disk", "none")


class AfterCache:
    """Scale the cached ``uint8`` image(s) under ``keys`` to float32 in [0, 1]: the first step that runs per epoch.

    Deliberately **not** a MONAI ``Transform``: ``CacheDataset`` and ``PersistentDataset`` cache a chain up to its first
    random transform *or* its first plain callable, so this marks where the cached part ends even in a chain without
    random transforms (validation, inference), which would otherwise be cached whole, as float32.

    Args:
        keys: the image keys.
    """

    def __init__(self, keys: str | Sequence[str] = "image") -> None:
        self.keys = [keys] if isinstance(keys, str) else list(keys)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.keys:
            d[key] = d[key].to(torch.float32) / 255.0  # a MetaTensor keeps its meta through the arithmetic
        return d

    def __repr__(self) -> str:
        return f"AfterCache(keys={self.keys})"


def cached_bytes(num_items: int, item_shape: Sequence[int], itemsize: int = 1) -> int:
    """Memory of ``num_items`` cached images of ``item_shape`` (``uint8``: ``itemsize`` 1), with 10 % for metadata."""
    per_item = itemsize
    for size in item_shape:
        per_item *= int(size)
    return int(1.1 * per_item * num_items)


def choose_cache(cache: str, num_items: int, item_shape: Sequence[int], memory_fraction: float = 0.4) -> str:
    """Resolve ``"auto"``: ``"memory"`` when ``num_items`` cached ``uint8`` images take at most ``memory_fraction`` of
    the free memory, else ``"disk"``; any other mode is returned as it is (after checking it).

    Raises:
        ValueError: an unknown ``cache`` mode, naming the valid ones.
    """
    mode = look_up_option(cache, CACHE_MODES)
    if mode != "auto":
        return str(mode)
    need = cached_bytes(num_items, item_shape)
    free = available_memory("cpu")
    mode = "memory" if free is None or need <= memory_fraction * free else "disk"
    free_text = "?" if free is None else f"{free / GIB:.1f}"
    logger.info("Data cache: %s (%d items, %.2f GiB as uint8; %s GiB free).", mode, num_items, need / GIB, free_text)
    return mode


def cached_dataset(
    data: Sequence[Mapping[str, Any]],
    transform: Compose,
    cache: str = "auto",
    cache_dir: str | Path | None = None,
    item_shape: Sequence[int] | None = None,
    num_workers: int = 1,
    memory_fraction: float = 0.4,
    description: str = "items",
    progress: bool | None = None,
) -> Dataset:
    """A dataset over ``data`` whose deterministic part is decoded once, kept where it fits.

    Args:
        data: the datalist.
        transform: the chain (its cached part ends at its first random transform or :class:`AfterCache`).
        cache: ``"memory"`` (``CacheDataset``), ``"disk"`` (``PersistentDataset`` under ``cache_dir``: the first
            epoch decodes, later epochs read the cached tensors), ``"none"`` (decode every epoch), or ``"auto"``:
            memory when the cached items would take at most ``memory_fraction`` of the free memory, else disk.
        cache_dir: the bundle's cache folder (needed for ``"disk"`` and ``"auto"``).
        item_shape: the shape of one cached image (e.g. ``(3, 224, 224)``), for ``"auto"``.
        num_workers: threads filling a memory cache.
        memory_fraction: share of the free memory a memory cache may take under ``"auto"``.
        description: what the items are, for the log line announcing the caching ("training tiles").
        progress: MONAI's progress bar while caching in memory; default: on a terminal only.

    Raises:
        ValueError: an unknown ``cache`` or a disk cache without ``cache_dir``.
    """
    mode = choose_cache(cache, len(data), item_shape or (0,), memory_fraction)
    if mode == "memory":
        logger.info("Caching %d %s in memory (decoded and resized once) ...", len(data), description)
        show = on_terminal() if progress is None else progress
        return CacheDataset(data, transform, cache_rate=1.0, num_workers=max(1, num_workers), progress=show)
    if mode == "none":
        logger.info("%d %s are decoded every epoch (`cache` none).", len(data), description)
        return Dataset(data, transform)
    if cache_dir is None:
        raise ValueError("`cache`: 'disk' needs the bundle's `cache_dir`.")
    # one folder per transform chain, so a changed image size never reads tensors cached for another
    chain = stable_name(transform.transforms)  # never a repr() with memory addresses: a resume finds it again
    folder = Path(cache_dir) / "persistent" / chain
    logger.info(
        "Caching %d %s on disk in %s (decoded in the first epoch, read back after) ...", len(data), description, folder
    )
    return PersistentDataset(data, transform, cache_dir=folder)
