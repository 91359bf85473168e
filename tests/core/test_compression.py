"""Parameter and MAC counts, checked against the layer formulas."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from monai_kdml.metrics import compression_summary, compression_table, count_macs, count_parameters


def small_cnn(width: int) -> nn.Module:
    """conv3x3(3 -> width) -> ReLU -> global pool -> linear(width -> 2)."""
    return nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 2)
    )


def cnn_params(width: int) -> int:
    return (3 * 9 * width + width) + (width * 2 + 2)


def cnn_macs(width: int, size: int, batch: int = 1) -> int:
    """One MAC per kernel weight per output pixel, plus one per linear weight; biases are not multiply-adds."""
    return batch * (3 * 9 * width * size * size + width * 2)


class DictOutput(nn.Module):
    """Like a detector: several outputs in a dict, a branch that only runs in eval mode."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(4, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.body(x)
        return {"features": features} if self.training else {"features": features, "logits": self.head(features)}


def test_count_parameters_matches_layer_formulas():
    model = small_cnn(8)
    assert count_parameters(model) == cnn_params(8)
    model[0].requires_grad_(False)
    assert count_parameters(model, trainable_only=True) == 8 * 2 + 2


def test_count_macs_matches_layer_formulas_and_restores_mode():
    model = small_cnn(8).train()
    assert count_macs(model, (1, 3, 16, 16)) == cnn_macs(8, 16)
    assert count_macs(model, (4, 3, 16, 16)) == cnn_macs(8, 16, batch=4)
    assert model.training and all(m.training for m in model.modules())
    detector = DictOutput().train()
    assert count_macs(detector, (2, 4)) == 2 * (4 * 8 + 8 * 3)  # counted in eval mode: the head runs
    assert detector.training
    with pytest.raises(ValueError, match="input_shape"):
        count_macs(model, (0, 3, 16, 16))


def test_compression_summary_and_table():
    teacher, students = small_cnn(32), [small_cnn(4), small_cnn(8)]
    summary = compression_summary(teacher, students, (1, 3, 12, 12))
    assert summary["num_students"] == 2
    assert summary["teacher_params"] == cnn_params(32) and summary["student_1_params"] == cnn_params(8)
    assert summary["ensemble_params"] == cnn_params(4) + cnn_params(8)
    assert summary["ensemble_macs"] == cnn_macs(4, 12) + cnn_macs(8, 12)
    assert summary["param_ratio"] == pytest.approx(cnn_params(32) / (cnn_params(4) + cnn_params(8)))
    assert summary["mac_ratio"] == pytest.approx(cnn_macs(32, 12) / (cnn_macs(4, 12) + cnn_macs(8, 12)))
    table = compression_table(summary).splitlines()
    assert table[0] == "| network | parameters | MACs |" and len(table) == 2 + 4 + 1
    assert table[2].startswith("| teacher |") and table[-2].startswith("| ensemble |")
    assert f"{summary['param_ratio']:.2f}x" in table[-1]
    with pytest.raises(ValueError, match="students"):
        compression_summary(teacher, [], (1, 3, 12, 12))
