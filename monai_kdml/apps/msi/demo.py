"""Deterministic synthetic H&E tiles in the Kather MSI/MSS layout, for demos and tests without real data.

A tile is painted as hematoxylin and eosin concentrations (``skimage.color.rgb2hed`` units) and turned into RGB by
Beer-Lambert absorption, with per-patient and per-tile stain jitter and defocus: pink fibrous stroma with spindle
nuclei and clefts, tumour glands (columnar nuclei around white lumens) or solid sheets of vesicular nuclei, pale
bluish mucin, lymphocytes, red cells, empty background.

The class signal follows the histology of MSI colorectal cancer (Alexander et al., Am. J. Pathol. 2001): each
patient has a latent MSI-ness ``m`` in [0, 1] (MSI patients mostly high, MSS mostly low, overlapping) and each tile
draws ``m_tile = m + noise``. Higher ``m_tile``: more tumour-infiltrating lymphocytes and lymphoid aggregates, more
mucin, poorer differentiation (solid sheets, pleomorphic nuclei), less dirty necrosis; lower: regular glands.
Composition and staining vary independently of the class, so single tiles are ambiguous and patient-level
aggregation helps.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from monai_kdml.apps.msi.demo_render import KATHER_MICRONS_PER_PIXEL, render_msi_tile
from monai_kdml.data.cache import cache_folder_is_complete, ensure_cache_folder
from monai_kdml.loop_progress import Progress

__all__ = [
    "GENERATOR_VERSION",
    "KATHER_MICRONS_PER_PIXEL",
    "MSIDemoConfig",
    "ensure_msi_demo",
    "make_msi_demo",
    "render_msi_tile",
]

logger = logging.getLogger(__name__)

GENERATOR_VERSION = 1
"""Bump whenever the tiles a given config produces change; :func:`ensure_msi_demo` then regenerates."""
MARKER = "msi_demo.json"


@dataclass(frozen=True)
class MSIDemoConfig:
    """Parameters of a demo set (recorded in the marker file).

    Args:
        num_patients: patients in total (at least 4, so both splits hold both classes).
        tiles_per_patient: tiles per patient.
        tile_size: tile edge in pixels.
        seed: master seed; every tile's random stream is derived from it, the patient and the tile index.
        test_fraction: fraction of patients (per class) in ``CRC_DX_TEST``.
        msi_fraction: fraction of MSI patients.
        microns_per_pixel: scale; the default matches Kather's tiles.
    """

    num_patients: int = 40
    tiles_per_patient: int = 16
    tile_size: int = 224
    seed: int = 0
    test_fraction: float = 0.25
    msi_fraction: float = 0.4
    microns_per_pixel: float = KATHER_MICRONS_PER_PIXEL

    def __post_init__(self) -> None:
        ok = {"num_patients": self.num_patients >= 4, "tiles_per_patient": self.tiles_per_patient >= 1}
        ok |= {"tile_size": self.tile_size >= 16, "test_fraction": 0.0 <= self.test_fraction < 1.0}
        ok |= {"msi_fraction": 0.0 < self.msi_fraction < 1.0, "microns_per_pixel": self.microns_per_pixel > 0}
        if bad := [name for name, good in ok.items() if not good]:
            raise ValueError(f"MSI demo: invalid {', '.join(f'{n}={getattr(self, n)!r}' for n in bad)}.")


@dataclass(frozen=True)
class _Patient:
    pid: str
    label: int
    msi_ness: float
    split: str
    stain: tuple[float, float]


def _patients(config: MSIDemoConfig) -> list[_Patient]:
    """Labels, latent MSI-ness, split (stratified by label) and staining of every patient."""
    rng = np.random.default_rng([config.seed, 0])
    n_msi = min(max(round(config.msi_fraction * config.num_patients), 2), config.num_patients - 2)
    labels = rng.permutation([1] * n_msi + [0] * (config.num_patients - n_msi))
    test = np.zeros(config.num_patients, bool)
    for label in (0, 1):
        members = rng.permutation(np.flatnonzero(labels == label))
        n_test = (
            min(max(round(config.test_fraction * members.size), 1), members.size - 1) if config.test_fraction else 0
        )
        test[members[:n_test]] = True
    latent = np.clip(np.where(labels == 1, 0.64, 0.34) + rng.normal(0, 0.16, config.num_patients), 0, 1)
    stains = rng.uniform(0.85, 1.15, (config.num_patients, 2))
    return [
        _Patient(f"TCGA-ZZ-{i:04d}", int(labels[i]), float(latent[i]), "TEST" if test[i] else "TRAIN", tuple(stains[i]))
        for i in range(config.num_patients)
    ]


def make_msi_demo(
    root: str | Path,
    num_patients: int = 40,
    tiles_per_patient: int = 16,
    tile_size: int = 224,
    seed: int = 0,
    test_fraction: float = 0.25,
    msi_fraction: float = 0.4,
    microns_per_pixel: float = KATHER_MICRONS_PER_PIXEL,
) -> Path:
    """Write a synthetic demo set in Kather's layout and naming under ``root``.

    ``root/CRC_DX_{TRAIN,TEST}/{MSIMUT,MSS}/blk-<12 letters>-TCGA-ZZ-<4 digits>-01Z-00-DX1.png``; every patient's
    tiles are in one split. The same arguments (and library versions) give byte-identical files: each tile's random
    stream is seeded by ``(seed, patient, tile)``. Arguments are those of :class:`MSIDemoConfig`. About 27 ms per
    224 px tile on one core. A small CNN reaches a tile AUC of ~0.7-0.87 on held-out patients
    (``benchmarks/msi_demo_difficulty.py``, ``docs/demo-data.md``).

    Returns:
        ``root``, ready for :func:`monai_kdml.apps.msi.kather.kather_datalist`.

    Raises:
        ValueError: an invalid parameter.
        FileExistsError: ``root`` already holds a ``CRC_DX_TRAIN`` or ``CRC_DX_TEST`` folder.
    """
    config = MSIDemoConfig(
        num_patients, tiles_per_patient, tile_size, seed, test_fraction, msi_fraction, microns_per_pixel
    )
    root = Path(root)
    for split in ("TRAIN", "TEST"):
        if (root / f"CRC_DX_{split}").exists():
            raise FileExistsError(f"{root / f'CRC_DX_{split}'} exists; make_msi_demo writes only into a fresh root.")
    with Progress(num_patients * tiles_per_patient, "MSI demo tiles", "tile", logger, interval=10) as progress:
        for index, patient in enumerate(_patients(config)):
            folder = root / f"CRC_DX_{patient.split}" / ("MSIMUT" if patient.label else "MSS")
            folder.mkdir(parents=True, exist_ok=True)
            for tile in range(tiles_per_patient):
                rng = np.random.default_rng([seed, 1, index, tile])
                letters = "".join(chr(65 + c) for c in rng.integers(0, 26, 12))
                m_tile = patient.msi_ness + rng.normal(0, 0.12)
                rgb = render_msi_tile(m_tile, rng, tile_size, microns_per_pixel, patient.stain)
                Image.fromarray(rgb).save(folder / f"blk-{letters}-{patient.pid}-01Z-00-DX1.png", compress_level=1)
                progress.update()
    return root


def _marker(config: MSIDemoConfig) -> dict:
    return {"generator": __name__, "version": GENERATOR_VERSION, "params": asdict(config)}


def _has_every_tile(config: MSIDemoConfig) -> Callable[[Path], bool]:
    return lambda root: sum(1 for _ in root.glob("CRC_DX_*/*/*.png")) == config.num_patients * config.tiles_per_patient


def ensure_msi_demo(
    cache_dir: str | Path,
    num_patients: int = 40,
    tiles_per_patient: int = 16,
    tile_size: int = 224,
    seed: int = 0,
    test_fraction: float = 0.25,
    msi_fraction: float = 0.4,
    microns_per_pixel: float = KATHER_MICRONS_PER_PIXEL,
) -> Path:
    """Return ``cache_dir/msi_demo``, generating it only if absent, incomplete, or made with other parameters.

    A marker file (``msi_demo.json``: generator version + parameters) records what is there. Generation writes
    into a temporary sibling folder and renames it into place, so an interrupted run never leaves a half-written
    set that looks complete; concurrent callers (e.g. DDP ranks) each generate and the first rename wins.
    Logs a WARNING on every call: results on synthetic tiles say nothing about real histology.

    Returns:
        The demo root, ready for :func:`monai_kdml.apps.msi.kather.kather_datalist`.
    """
    config = MSIDemoConfig(
        num_patients, tiles_per_patient, tile_size, seed, test_fraction, msi_fraction, microns_per_pixel
    )
    cache_dir = Path(cache_dir).expanduser()
    target = cache_dir / "msi_demo"
    if not cache_folder_is_complete(target, _marker(config), _has_every_tile(config), MARKER):
        logger.warning("Generating synthetic MSI demo tiles in %s ...", target)
        ensure_cache_folder(
            target, _marker(config), lambda root: make_msi_demo(root, **asdict(config)), _has_every_tile(config), MARKER
        )
    logger.warning(
        "\n%s\nSYNTHETIC DEMO DATA: training and evaluating on generated H&E look-alike tiles in\n  %s\n"
        "Their metrics say nothing about real histology; set dataset_dir to the Kather MSI data for real runs.\n%s",
        "!" * 100,
        target,
        "!" * 100,
    )
    return target
