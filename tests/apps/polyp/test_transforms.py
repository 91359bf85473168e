"""Detection transforms keep boxes on their objects; collate and prepare_batch hand the detector what it needs."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.data import CacheDataset, DataLoader, MetaTensor
from monai.transforms import Randomizable
from skimage import measure

from monai_kdml.apps.polyp.batching import detection_collate, detection_prepare_batch
from monai_kdml.apps.polyp.demo import make_polyp_demo
from monai_kdml.apps.polyp.kvasir import kvasir_preflight
from monai_kdml.apps.polyp.transforms import (
    box_to_original,
    polyp_inference_transforms,
    polyp_train_transforms,
    polyp_val_transforms,
)

REAL = ["cju0qkwl35piu0993l0dewei2", "cju0roawvklrq0799vmjorwfv"]  # the second: two polyps, one on the right edge
S = 64
NO_AUG = {"flip_prob": 0.0, "rotate90_prob": 0.0, "zoom_prob": 0.0, "intensity_prob": 0.0}


@pytest.fixture(scope="module")
def demo_items(module_tmp: Callable[[str], Path]) -> list[dict]:
    root = make_polyp_demo(module_tmp("demo"), 4, image_size=96, seed=11)
    datalist, _ = kvasir_preflight(root)
    return [dict(item, mask=str(root / "masks" / f"{item['id']}.png")) for item in datalist]


@pytest.fixture(scope="module")
def real_items(kvasir: Path, module_tmp: Callable[[str], Path]) -> list[dict]:
    root = module_tmp("kvasir")
    for sub in ("images", "masks"):
        (root / sub).mkdir()
        for name in REAL:  # links, not copies: the data stay outside the repository
            (root / sub / f"{name}.jpg").symlink_to(kvasir / sub / f"{name}.jpg")
    boxes = json.loads((kvasir / "kavsir_bboxes.json").read_text())
    (root / "kavsir_bboxes.json").write_text(json.dumps({n: boxes[n] for n in REAL}))
    datalist, _ = kvasir_preflight(root)
    return [dict(item, mask=str(root / "masks" / f"{item['id']}.jpg")) for item in datalist]


def _mask_components(mask: torch.Tensor) -> torch.Tensor:
    """Boxes of a transformed mask's components, in the same (x, y) axis order as the image: ``(K, 4)``."""
    regions = measure.regionprops(measure.label(mask[0].numpy() > 127, connectivity=2))
    return torch.tensor([list(r.bbox) for r in regions if r.area >= 4], dtype=torch.float32).reshape(-1, 4)


def _assert_boxes_on_mask(out: dict, tol: float = 2.0) -> None:
    """Each box encloses one mask component and each component has its box, tightly (within ``tol`` px).

    A polyp cut by a zoom-in crop keeps its clipped box, which can be looser than the visible part across the cut;
    boxes touching the frame's border are therefore only checked to contain their component.
    """
    boxes, components = out["box"], _mask_components(out["mask"])
    assert len(boxes) == len(components) > 0
    size = out["image"].shape[1]
    for component in components:
        gap = (boxes - component).abs().amax(1)
        box = boxes[gap.argmin()]
        assert (component[:2] >= box[:2] - tol).all() and (component[2:] <= box[2:] + tol).all(), (box, component)
        if box[:2].min() > 0 and box[2:].max() < size:
            assert gap.min() <= tol, (boxes, components)


def test_outputs_shapes_dtypes_meta_and_padding(demo_items: list[dict]) -> None:
    item = demo_items[0]
    out = polyp_val_transforms(S)(item)
    image, box, label = out["image"], out["box"], out["label"]
    assert isinstance(image, MetaTensor) and image.shape == (3, S, S) and image.dtype == torch.float32
    assert image.min() >= 0 and image.max() <= 1 and image.max() > 0.5
    assert box.dtype == torch.float32 and box.shape == (len(item["box"]), 4)
    assert label.dtype == torch.int64 and label.tolist() == item["label"]
    assert image.meta["filename_or_obj"] == item["image"]
    width, height = (int(v) for v in image.meta["spatial_shape"])  # original (W, H): PILReader's axis order
    assert (box[:, 2] <= S).all() and (box[:, 3] <= S).all()
    scale = S / max(width, height)
    resized = (round(width * scale), round(height * scale))
    assert image[:, resized[0] :, :].abs().sum() == 0 and image[:, :, resized[1] :].abs().sum() == 0  # end padding
    torch.testing.assert_close(
        box, torch.tensor(item["box"]) * torch.tensor(resized * 2) / torch.tensor([width, height] * 2)
    )

    plain = polyp_inference_transforms(S)({"image": item["image"]})
    assert set(plain) == {"image"} and torch.equal(plain["image"], image)


@pytest.mark.parametrize(
    "aug",
    [
        {},  # resize + pad only
        {"flip_prob": 1.0},
        {"rotate90_prob": 1.0},
        {"zoom_prob": 1.0, "zoom_range": (0.8, 1.2)},
        {"flip_prob": 0.5, "rotate90_prob": 0.5, "zoom_prob": 0.5, "intensity_prob": 0.5},
    ],
)
def test_boxes_stay_on_their_polyps_demo(demo_items: list[dict], aug: dict) -> None:
    chain = polyp_train_transforms(S, mask_key="mask", **{**NO_AUG, **aug}).set_random_state(3)
    for item in demo_items:
        _assert_boxes_on_mask(chain(item))


@pytest.mark.parametrize("aug", [{}, {"flip_prob": 1.0, "rotate90_prob": 1.0}])
def test_boxes_stay_on_their_polyps_real(real_items: list[dict], aug: dict) -> None:
    chain = polyp_train_transforms(128, mask_key="mask", **{**NO_AUG, **aug}).set_random_state(0)
    for item in real_items:
        _assert_boxes_on_mask(chain(item))


def test_flip_moves_image_and_boxes_together(demo_items: list[dict]) -> None:
    item = demo_items[1]
    plain = polyp_val_transforms(S)(item)
    chain = polyp_train_transforms(S, **{**NO_AUG, "flip_prob": 1.0})
    flipped = chain(item)
    assert torch.equal(flipped["image"], plain["image"].flip(1, 2))  # both spatial axes flipped
    expected = torch.stack(
        [S - plain["box"][:, 2], S - plain["box"][:, 3], S - plain["box"][:, 0], S - plain["box"][:, 1]], 1
    )
    torch.testing.assert_close(flipped["box"], expected)


@pytest.mark.parametrize("aug", [{}, {"flip_prob": 1.0, "rotate90_prob": 1.0}])
def test_box_to_original_inverts_the_geometry(demo_items: list[dict], aug: dict) -> None:
    chain = polyp_train_transforms(S, **{**NO_AUG, **aug}).set_random_state(1)
    for item in demo_items:
        out = chain(item)
        back = box_to_original(out["box"], out["image"].affine, out["image"].meta["spatial_shape"])
        torch.testing.assert_close(back, torch.tensor(item["box"]), atol=1e-3, rtol=0)
    width, height = (int(v) for v in out["image"].meta["spatial_shape"])
    into_padding = box_to_original(torch.tensor([[0.0, 0.0, S, S]]), out["image"].affine, (width, height))
    assert into_padding.tolist() == [[0.0, 0.0, width, height]]  # clipped to the original frame


def test_deterministic_head_is_cacheable_uint8(demo_items: list[dict]) -> None:
    chain = polyp_train_transforms(S)
    first_random = next(i for i, t in enumerate(chain.transforms) if isinstance(t, Randomizable))
    assert first_random > 0
    head = chain.transforms[:first_random]  # what CacheDataset stores
    cached = head[0](demo_items[0])
    for t in head[1:]:
        cached = t(cached)
    assert cached["image"].dtype == torch.uint8 and cached["image"].shape == (3, S, S)
    assert "Resized" in {type(t).__name__ for t in head}


def test_train_chain_reproducible_and_negative_frames_pass(demo_items: list[dict]) -> None:
    item = demo_items[2]
    a = polyp_train_transforms(S).set_random_state(5)(item)
    b = polyp_train_transforms(S).set_random_state(5)(item)
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["box"], b["box"])
    aug = {"flip_prob": 1.0, "rotate90_prob": 1.0, "zoom_prob": 1.0, "intensity_prob": 1.0}
    negative = polyp_train_transforms(S, **aug)(dict(item, box=[], label=[]))
    assert negative["box"].shape == (0, 4) and negative["box"].dtype == torch.float32
    assert negative["label"].shape == (0,) and negative["label"].dtype == torch.int64
    assert negative["image"].shape == (3, S, S) and negative["image"].min() >= 0 and negative["image"].max() <= 1


@pytest.mark.parametrize("size", [0, 8, 64.0])
def test_bad_image_size(size) -> None:
    with pytest.raises(ValueError, match="image_size"):
        polyp_val_transforms(size)


def test_collate_and_prepare_batch(demo_items: list[dict]) -> None:
    items = [dict(demo_items[0]), dict(demo_items[1], box=[], label=[]), dict(demo_items[3])]
    loader = DataLoader(
        CacheDataset(items, polyp_val_transforms(S), progress=False), batch_size=3, collate_fn=detection_collate
    )
    batch = next(iter(loader))
    assert batch["image"].shape == (3, 3, S, S) and batch["id"] == [d["id"] for d in items]
    assert list(batch["image"].meta["filename_or_obj"]) == [d["image"] for d in items]
    assert batch["image"].affine.shape == (3, 4, 4)
    assert [len(b) for b in batch["box"]] == [len(d["box"]) for d in items]

    images, targets = detection_prepare_batch(batch, torch.device("cpu"), memory_format=torch.channels_last)
    assert type(images) is torch.Tensor and images.shape == (3, 3, S, S)
    assert images.is_contiguous(memory_format=torch.channels_last)
    assert len(targets) == 3 and targets[1]["box"].shape == (0, 4)
    for target, item in zip(targets, items, strict=True):
        assert target["box"].dtype == torch.float32 and target["label"].dtype == torch.int64
        assert type(target["box"]) is torch.Tensor and target["label"].tolist() == item["label"]

    back = box_to_original(targets[0]["box"], batch["image"].affine[0], batch["image"].meta["spatial_shape"][0])
    torch.testing.assert_close(back, torch.tensor(items[0]["box"]), atol=1e-3, rtol=0)


def test_collate_and_prepare_batch_errors() -> None:
    image = torch.zeros(3, 8, 8)
    with pytest.raises(ValueError, match="empty batch"):
        detection_collate([])
    with pytest.raises(ValueError, match="lacks"):
        detection_collate([{"image": image, "box": []}, {"image": image}])
    with pytest.raises(ValueError, match="lacks"):
        detection_prepare_batch({"image": image[None]})
    with pytest.raises(ValueError, match=r"\(M, 4\)"):
        detection_prepare_batch({"image": image[None], "box": [np.zeros((2, 6))], "label": [[0, 0]]})
    with pytest.raises(ValueError, match="labels"):
        detection_prepare_batch({"image": image[None], "box": [np.zeros((2, 4))], "label": [[0]]})
    with pytest.raises(ValueError, match="2 images"):
        detection_prepare_batch({"image": torch.zeros(2, 3, 8, 8), "box": [np.zeros((0, 4))], "label": [[]]})
