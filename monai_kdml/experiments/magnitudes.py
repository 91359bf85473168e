"""How large is each detection loss term? The GT classification loss against the KD classification term.

The GT classification loss of RetinaNet (MONAI's ``RetinaNetDetector.compute_cls_loss``) is a focal loss averaged
over the ``batch_size_per_image`` anchors per image its hard-negative sampler draws (64 by default); the KD
classification term (:func:`monai_kdml.apps.polyp.losses.sigmoid_distillation`) covers every anchor, weighted by
``|p_t - p_s|^gamma`` and normalised by ``max(N, sum w)``. This measures both on a few synthetic frames, at
initialisation and after joint training steps, so the weighting can be decided on numbers (``docs/method.md``).

Example::

    python -m monai_kdml.experiments.magnitudes --preset cpu --image-size 96 --steps 40
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from monai_kdml.apps.polyp.demo import render_polyp_frame
from monai_kdml.apps.polyp.gt_loss import RetinaNetGTLoss
from monai_kdml.apps.polyp.losses import DetectionKDMLLoss
from monai_kdml.apps.polyp.networks import get_preset

__all__ = ["measure_detection_terms"]


def _frames(num: int, size: int, seed: int) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
    rng = np.random.default_rng(seed)
    images, targets = [], []
    for _ in range(num):
        image, masks = render_polyp_frame(rng, size, size)
        boxes = []
        for mask in masks:
            ys, xs = np.nonzero(mask)
            boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        images.append(torch.as_tensor(np.asarray(image, dtype=np.float32)).permute(2, 0, 1) / 255.0)
        box = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
        targets.append({"box": box, "label": torch.zeros(len(boxes), dtype=torch.long)})
    return torch.stack(images), targets


def measure_detection_terms(
    preset: str = "cpu", image_size: int = 96, batch: int = 4, steps: int = 40, seed: int = 0,
    report_at: Sequence[int] = (0, 10, 20, 40),
) -> list[dict[str, Any]]:  # fmt: skip
    """Train one teacher and two students of ``preset`` together (GT + KD + ML, Adam 1e-3) on one fixed batch of
    synthetic frames and report the students' mean terms at the steps in ``report_at``.

    Returns:
        One row per reported step: ``step``, the mean student ``cls``, ``box``, ``kd_cls``, ``kd_box``, ``ml_cls``,
        ``ml_box``, the teacher's ``cls``, and ``kd_cls / cls``.
    """
    torch.manual_seed(seed)
    detector = get_preset(preset)
    teacher, students = detector.build_teacher(), detector.build_students(2)
    loss = DetectionKDMLLoss(RetinaNetGTLoss(detector.spec))
    images, targets = _frames(batch, image_size, seed)
    params = [p for n in [teacher, *students] for p in n.parameters()]
    optimizer = torch.optim.Adam(params, lr=1e-3)
    rows = []
    for step in range(steps + 1):
        s_out, t_out = [s(images) for s in students], teacher(images)
        out = loss(s_out, t_out, targets)
        if step in report_at:
            with torch.no_grad():  # the "sampled" normaliser on the same outputs, for comparison
                terms = {k: float(torch.stack(v).mean()) for k, v in out["students"].items() if k != "loss"}
                loss.kd_cls_normalizer = "sampled"
                sampled = float(torch.stack(loss(s_out, t_out, targets, use_ml=False)["students"]["kd_cls"]).mean())
                loss.kd_cls_normalizer = "disagreement"
            ratios = {"kd_cls/cls": terms["kd_cls"] / terms["cls"], "kd_cls_sampled/cls": sampled / terms["cls"]}
            rows.append({"step": step, **terms, "kd_cls_sampled": sampled, **ratios,
                         "teacher_cls": float(out["teacher"]["cls"].detach())})  # fmt: skip
        optimizer.zero_grad()
        (out["loss"] + out["teacher"]["loss"]).backward()
        optimizer.step()
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for row in measure_detection_terms(args.preset, args.image_size, args.batch, args.steps, args.seed):
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}))


if __name__ == "__main__":
    main()
