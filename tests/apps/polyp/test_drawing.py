"""Box labels readable at every frame size: scaled to the frame, on a filled tag."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from monai_kdml.apps.polyp.drawing import PRED_COLOUR, draw_boxes


def label_rows(image: Image.Image, box_top: int) -> int:
    """Height in rows of the score tag drawn above a box whose top edge is at ``box_top``."""
    tag = (np.asarray(image)[:box_top] == PRED_COLOUR).all(-1)
    return int(tag.any(1).sum())


@pytest.mark.parametrize(("size", "least"), [((160, 128), 10), ((1920, 1080), 30)])
def test_score_labels_scale_with_the_frame(size: tuple[int, int], least: int) -> None:
    image = Image.new("RGB", size)
    top = size[1] // 2
    draw_boxes(image, [[size[0] // 4, top, size[0] // 2, top + size[1] // 4]], [0.93])
    rows = label_rows(image, top)
    # Pillow's fixed 11 px bitmap font gave 1,080 px Kvasir frames labels of ~1 % of their height
    assert least <= rows <= size[1] // 10, rows
    assert (np.asarray(image)[top - rows : top, size[0] // 4 : size[0] // 4 + 4] != 0).any()  # text sits on the tag


def test_a_label_at_the_top_edge_goes_inside_the_box() -> None:
    image = Image.new("RGB", (400, 300))
    draw_boxes(image, [[10, 0, 200, 100]], [0.5])
    assert (np.asarray(image)[:20, 12:40] == PRED_COLOUR).all(-1).any()


def test_score_tags_of_nested_duplicate_boxes_do_not_cover_one_another() -> None:
    """Issue 15, case 29: a duplicate box's tag was pasted over the first one's, leaving one illegible tag."""
    blank = Image.new("RGB", (320, 240))
    box, inner = [60.0, 80.0, 200.0, 200.0], [62.0, 82.0, 198.0, 198.0]
    lines = np.asarray(draw_boxes(blank.copy(), [box, inner]))
    single = np.asarray(draw_boxes(blank.copy(), [box], [0.9]))
    double = np.asarray(draw_boxes(blank.copy(), [inner, box], [0.3, 0.9]))  # the best score is drawn first
    tag = (single != np.asarray(draw_boxes(blank.copy(), [box]))).any(axis=2)  # the pixels of the 0.90 tag alone
    assert tag.sum() > 50
    np.testing.assert_array_equal(double[tag], single[tag])  # still there, untouched
    second = (double != lines).any(axis=2) & ~tag  # the 0.30 tag: its own pixels, below the first
    assert second.sum() > 50 and np.argwhere(second)[:, 0].min() >= np.argwhere(tag)[:, 0].max()
