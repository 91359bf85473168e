"""Test-session settings and the fixtures shared by every test package (core and apps).

Tiny tensors and two pytest-xdist workers on 2 cores want one thread per process; the toy problem (8x8 blob images,
tiny CNNs) is what the engine tests train on. Tests write only under temporary folders: the session fails if it
left a file in the repository tree (:func:`repository_state`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

# OpenMP threads that spin while waiting make small ops ~100x slower when another process holds a core
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset

# intra-op threads only add overhead on the tests' tiny tensors, and oversubscribe the cores under xdist
torch.set_num_threads(1)


REPO = Path(__file__).resolve().parents[1]
# what the tools themselves leave in a checkout (byte-code, tool caches, an editable install's metadata)
_TOOL_CACHES = ("__pycache__", ".pytest_cache", ".ruff_cache", ".mypy_cache", ".hypothesis", ".egg-info")
# what a developer may write while the tests run: edits of tracked files, new code and docs
_EDITS = re.compile(r"^(?!\?\?|!!)|^\?\? .*\.(py|md)$")
# where runs write: a file appearing or changing here counts even when its folder is already listed by git
_OUTPUT_DIRS = ("models", "eval", ".cache", "runs", "outputs")


def repository_state(repo: Path) -> set[str] | None:
    """Untracked and ignored entries of ``git status`` (not tool caches, new ``.py``/``.md`` files or edits of tracked
    files, which are the developer's) plus every file, with its mtime and size, in the run output folders of ``repo``
    and its bundles; ``None`` when ``repo`` is not a git checkout."""
    try:
        status = subprocess.run(
            ["git", "status", "--porcelain", "--ignored"], cwd=repo, capture_output=True, text=True, timeout=120,
            check=True,
        ).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    lines = status.splitlines()
    state = {line for line in lines if not _EDITS.match(line) and not any(cache in line for cache in _TOOL_CACHES)}
    folders = [repo / d for d in _OUTPUT_DIRS] + [b / d for b in (repo / "bundles").glob("*") for d in _OUTPUT_DIRS]
    for folder in folders:
        for path in folder.rglob("*") if folder.is_dir() else ():
            if path.is_file():
                info = path.stat()
                state.add(f"file {path.relative_to(repo)} {info.st_mtime_ns} {info.st_size}")
    return state


@pytest.fixture(scope="session", autouse=True)
def _repository_stays_clean():
    """Fail the session (at its last teardown) when tests wrote into the repository tree instead of a tmp_path."""
    before = repository_state(REPO)
    yield
    after = repository_state(REPO)
    if before is not None and after is not None and (new := sorted(after - before)):
        pytest.fail(
            "the test session wrote into the repository tree (tests must write under tmp_path; pass bundle_root):\n"
            + "\n".join(new[:20]),
            pytrace=False,
        )


@pytest.fixture(scope="module")
def module_tmp(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[[str], Path]]:
    """``module_tmp(name)``: a new folder for a module-scoped fixture, removed when the module ends without a failed
    test. Each test's ``tmp_path`` goes when it passes (``tmp_path_retention_policy``); without this, the runs the
    module fixtures train would stay until the session ends (many GB of checkpoints on a small disk)."""
    made: list[Path] = []
    failed = request.session.testsfailed

    def mktemp(name: str) -> Path:
        made.append(tmp_path_factory.mktemp(name))
        return made[-1]

    yield mktemp
    if request.session.testsfailed == failed:
        for path in made:
            shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def repo_state() -> Callable[[Path], set[str] | None]:
    """:func:`repository_state`, for the test of the guard itself."""
    return repository_state


@pytest.fixture(autouse=True)
def _restore_pil_pixel_limit():
    """Restore PIL's process-wide pixel limit, which pre-flight checks and loaders set from ``max_image_pixels``."""
    limit = Image.MAX_IMAGE_PIXELS
    yield
    Image.MAX_IMAGE_PIXELS = limit


class BlobDataset(Dataset):
    """8x8 one-channel images; class 1 has a bright 3x3 blob, class 0 a dim one, both with noise."""

    def __init__(self, num: int = 64, seed: int = 0, size: int = 8) -> None:
        g = torch.Generator().manual_seed(seed)
        self.images = torch.randn(num, 1, size, size, generator=g) * 0.5
        self.labels = torch.randint(0, 2, (num,), generator=g)
        pos = torch.randint(0, size - 3, (num, 2), generator=g)
        for i in range(num):
            r, c = pos[i].tolist()
            self.images[i, 0, r : r + 3, c : c + 3] += 2.0 if self.labels[i] == 1 else 0.5

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "label": self.labels[i]}


def tiny_net(width: int = 4, num_classes: int = 2, seed: int | None = None) -> nn.Module:
    """A small CNN; ``seed`` fixes its initial weights."""
    if seed is not None:
        torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, width, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(width, width, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(width, num_classes),
    )


def blob_loader(num: int = 64, batch_size: int = 16, seed: int = 0, shuffle: bool = False) -> DataLoader:
    """A loader over :class:`BlobDataset`."""
    return DataLoader(BlobDataset(num, seed), batch_size=batch_size, shuffle=shuffle)


@pytest.fixture(scope="session")
def toy() -> SimpleNamespace:
    """The toy problem: ``toy.BlobDataset``, ``toy.tiny_net(width, num_classes, seed)``, ``toy.loader(...)``."""
    return SimpleNamespace(BlobDataset=BlobDataset, tiny_net=tiny_net, loader=blob_loader)


KILLING = Path(__file__).resolve().parent / "killing.py"
CHILD_ENV = {"OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "CUDA_VISIBLE_DEVICES": ""}


def _child_env() -> dict[str, str]:
    repo = str(KILLING.parents[1])
    path = os.pathsep.join(p for p in (repo, os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, **CHILD_ENV, "PYTHONPATH": path}


@pytest.fixture(scope="session")
def child_env() -> dict[str, str]:
    """The environment of test subprocesses: this checkout importable, one thread, unbuffered output, no GPU."""
    return _child_env()


@pytest.fixture(scope="session")
def kill_driver() -> Callable[..., dict]:
    """``kill_driver(spec, timeout=300)``: run ``tests/killing.py`` on ``spec`` in a subprocess; returns its report.

    ``spec`` (JSON-able): ``entry`` (a file with ``train(workdir, resume, **kwargs)``), ``workdir``, ``seeds``,
    ``kills_per_seed``, optional ``kwargs``, ``ckpt_subdir`` ("models"), ``prefix`` ("checkpoint"), ``final``,
    ``compare`` (files that must be byte-identical to the reference run's), ``write_fraction`` (0.5), ``timeout``.
    """

    def run(spec: dict, timeout: float = 300) -> dict:
        result = subprocess.run(
            [sys.executable, str(KILLING), json.dumps(spec)], capture_output=True, text=True, timeout=timeout,
            env=_child_env(),
        )  # fmt: skip
        if result.returncode != 0:
            raise AssertionError(f"kill driver failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
        return json.loads(result.stdout.strip().splitlines()[-1])

    return run


def write_png(path: Path, width: int, height: int, idat: bytes | None = None) -> Path:
    """A 1-bit grayscale PNG written chunk by chunk: ``width x height`` black pixels in a few KB (no pixel array is
    ever allocated, so 14000 x 14000 costs ~0.1 s), or ``idat`` as the image data, with valid CRCs either way."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    if idat is None:
        packer, row = zlib.compressobj(9), bytes(1 + (width + 7) // 8)  # filter byte + packed bits
        idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


@pytest.fixture(scope="session")
def huge_png(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 14000 x 14000 PNG (196 M pixels, over PIL's 89 M decompression-bomb limit) of a few KB."""
    return write_png(tmp_path_factory.mktemp("huge") / "huge.png", 14000, 14000)


@pytest.fixture(scope="session")
def hidden_damage_png(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 16 x 16 PNG whose chunks' CRCs all hold but whose pixel stream is not zlib data: passes the header check,
    fails only when decoded (as a file damaged between the pre-flight and the loader would)."""
    return write_png(tmp_path_factory.mktemp("damage") / "tile.png", 16, 16, idat=b"this is not zlib data")
