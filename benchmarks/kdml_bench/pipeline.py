"""2. Simultaneous against separate training, over the MSI tile pipeline (PNG decoding and augmentation from disk).

For each tile size and each dataset kind (``plain``: ``monai.data.Dataset``, decoded on the fly every epoch;
``cached``: ``CacheDataset``, the deterministic head cached once, as in the bundles), one round times:

- ``kdml``: one ``KDMLTrainer`` epoch (teacher + K students, one pass over the pipeline);
- ``separate``: the same networks trained one after another with MONAI's ``SupervisedTrainer`` (K + 1 passes);
- ``pipeline``: the loader alone; ``compute``: each network's training step alone on cached tensors.

With ``P`` the pipeline and ``C`` the summed compute, the ideal quotient is ``(C + P) / (C + (K + 1) P)``; the figure
that carries the target is achieved / ideal. Transforms are reseeded before every pass, so every pass sees the same
augmented tiles.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch
from monai.data import CacheDataset, DataLoader, Dataset
from monai.engines import SupervisedTrainer
from torch import nn

from kdml_bench.config import Profile
from kdml_bench.report import Figure, SectionResult, Table
from kdml_bench.timing import CLOCKS, clock_name, interleave, paired_ratios, stats
from kdml_bench.workloads import build_networks, ce_step, kdml_loss, kdml_step, kdml_trainer
from monai_kdml.apps.msi.demo import ensure_msi_demo
from monai_kdml.apps.msi.kather import kather_datalist
from monai_kdml.apps.msi.transforms import tile_transforms

__all__ = ["demo_tiles", "run"]

TARGET = 1.05


def demo_tiles(cache_dir: Path, count: int, tile_size: int) -> list[dict]:
    """``count`` demo tiles (both splits of a 4-patient demo set, sorted by path), generated once into ``cache_dir``."""
    logging.getLogger("monai_kdml.apps.msi.demo").setLevel(logging.ERROR)  # its synthetic-data banner
    # one folder per tile size: ensure_msi_demo regenerates a folder made with other parameters
    root = ensure_msi_demo(
        cache_dir / f"tiles{tile_size}", num_patients=4, tiles_per_patient=math.ceil(count / 4), tile_size=tile_size
    )
    tiles = sorted(kather_datalist(root, "train") + kather_datalist(root, "test"), key=lambda t: t["image"])
    return [{"image": t["image"], "label": t["label"]} for t in tiles[:count]]


def _dataset(kind: str, tiles: list[dict], image_size: int) -> tuple[Dataset, float]:
    transform = tile_transforms(image_size, train=True)
    now = CLOCKS[clock_name()]
    start = now()
    ds = Dataset(tiles, transform) if kind == "plain" else CacheDataset(tiles, transform, progress=False)
    return ds, now() - start


def run(profile: Profile, device: torch.device, cache_dir: Path, num_workers: int = 0) -> SectionResult:
    result = SectionResult()
    tiles_all = demo_tiles(cache_dir, max(c[1] for c in profile.pipeline_configs), profile.pipeline_tile_size)
    k1 = profile.num_students + 1
    rows, decision_rows = [], []
    for image_size, count, batch, kinds in profile.pipeline_configs:
        tiles = tiles_all[:count]
        nets = build_networks(profile.pipeline_preset, profile.num_students, device, profile.seed)
        cases, fills = {}, {}
        for kind in kinds:
            ds, fills[kind] = _dataset(kind, tiles, image_size)
            cases.update(_cases(kind, ds, nets, batch, num_workers, device, profile.seed))
        times = interleave(cases, profile.pipeline_repeats, device, warmup=0)
        tag = f"{profile.pipeline_preset} {image_size}px b{batch}, {count} tiles"
        for kind in kinds:
            t = {case: times[f"{kind}/{case}"] for case in ("kdml", "separate", "pipeline", "compute")}
            achieved = paired_ratios(t["kdml"], t["separate"])
            ideal = [(c + p) / (c + k1 * p) for c, p in zip(t["compute"], t["pipeline"], strict=True)]
            share = [p / (c + p) for c, p in zip(t["compute"], t["pipeline"], strict=True)]
            result.figures += [
                Figure(f"kdml epoch / separate epochs, {kind}, {tag}", achieved),
                Figure(f"ideal (C+P)/(C+{k1}P), {kind}, {tag}", ideal),
                Figure(f"achieved / ideal, {kind}, {tag}", paired_ratios(achieved, ideal), target=TARGET),
            ]
            med = {case: stats(v)["median"] for case, v in t.items()}
            rows.append(
                [
                    tag,
                    kind,
                    f"{med['kdml']:.2f}",
                    f"{med['separate']:.2f}",
                    f"{med['pipeline']:.2f}",
                    f"{med['compute']:.2f}",
                    f"{stats(share)['median']:.2f}",
                    f"{fills[kind]:.2f}",
                ]
            )
            result.details[f"{tag} {kind}"] = {"seconds": t, "cache_fill_seconds": fills[kind]}
        if {"plain", "cached"} <= set(kinds):
            cached_vs_plain = paired_ratios(times["cached/kdml"], times["plain/kdml"])
            result.figures.append(Figure(f"kdml epoch cached / plain, {tag}", cached_vs_plain))
            fill_epochs = fills["cached"] / stats(times["plain/pipeline"])["median"]
            decision_rows.append([tag, f"{stats(cached_vs_plain)['median']:.3f}", f"{fill_epochs:.2f}"])
    result.tables.append(
        Table(
            "seconds per epoch (medians); P share = P / (C + P)",
            ["workload", "dataset", "kdml", "separate", "pipeline P", "compute C", "P share", "cache fill"],
            rows,
        )
    )
    if decision_rows:
        result.tables.append(
            Table(
                "on the fly or cached: kdml epoch cached / plain, and the one-off cache fill in plain pipeline epochs",
                ["workload", "cached / plain", "cache fill (plain epochs)"],
                decision_rows,
            )
        )
    return result


def _cases(kind: str, ds: Dataset, nets, batch: int, num_workers: int, device: torch.device, seed: int) -> dict:
    loader = DataLoader(ds, batch_size=batch, shuffle=False, num_workers=num_workers)
    kdml = kdml_trainer(nets, loader, device)
    separate = [
        SupervisedTrainer(
            device,
            max_epochs=1,
            train_data_loader=loader,
            network=net,
            optimizer=opt,
            loss_function=nn.CrossEntropyLoss(),
        )
        for net, opt in zip(nets.all, nets.optimizers, strict=True)
    ]

    def reseed() -> None:
        torch.manual_seed(seed)  # DataLoader workers derive their transform seeds from torch's generator
        ds.transform.set_random_state(seed)  # type: ignore[attr-defined]

    reseed()
    cached = [{k: v.to(device) for k, v in b.items() if k in ("image", "label")} for b in loader]
    loss = kdml_loss()
    kdml_step(nets, loss, cached[0]["image"], cached[0]["label"])  # warm: first calls allocate
    for net, opt in zip(nets.all, nets.optimizers, strict=True):
        ce_step(net, opt, cached[0]["image"], cached[0]["label"])

    def run_kdml() -> None:
        reseed()
        kdml.run()

    def run_separate() -> None:
        for trainer in separate:
            reseed()
            trainer.run()

    def pipeline() -> None:
        reseed()
        for b in loader:
            b["image"].to(device), b["label"].to(device)

    def compute() -> None:
        for net, opt in zip(nets.all, nets.optimizers, strict=True):
            for b in cached:
                ce_step(net, opt, b["image"], b["label"])

    return {
        f"{kind}/kdml": run_kdml,
        f"{kind}/separate": run_separate,
        f"{kind}/pipeline": pipeline,
        f"{kind}/compute": compute,
    }
