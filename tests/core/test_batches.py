"""A training batch of one sample never ends a run (issue 15 cases 16 and 17)."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from monai_kdml.data import check_single_sample_batches, drop_last_batch_of_one
from monai_kdml.networks import build_network


@pytest.mark.parametrize(
    ("num_samples", "batch_size", "drop"), [(9, 8, True), (10, 8, False), (8, 8, False), (1, 8, False), (5, 1, False)]
)
def test_only_a_last_batch_of_one_is_dropped(num_samples: int, batch_size: int, drop: bool) -> None:
    assert drop_last_batch_of_one(num_samples, batch_size) is drop


def test_a_real_network_trains_every_batch_of_a_split_of_one_more_than_the_batch_size(caplog) -> None:
    network = build_network("resnet18").train()  # the demo teacher: its last BatchNorm sees 1 x 1 maps at 32 px
    data = TensorDataset(torch.rand(9, 3, 32, 32), torch.randint(0, 2, (9,)))
    with caplog.at_level("INFO"):
        loader = DataLoader(data, batch_size=4, shuffle=True, drop_last=drop_last_batch_of_one(9, 4, "tiles"))
    assert [len(x) for x, _ in loader] == [4, 4] and "1 sample per epoch, 2 batches of 4 trained" in caplog.text
    for images, _ in loader:
        network(images)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):  # what the rule avoids
        network(torch.rand(1, 3, 32, 32))


def test_batch_size_1_is_refused_only_where_batch_norm_would_see_one_value() -> None:
    teacher, students = build_network("resnet18"), [build_network("resnet10_slim")]  # the demo preset
    with pytest.raises(ValueError, match=r"`batch_size` 1: the teacher's BatchNorm layer `.*` sees a 1 x 1 map"):
        check_single_sample_batches(1, teacher, students, 32)
    assert teacher.training and students[0].training  # modes restored
    check_single_sample_batches(1, teacher, students, 64)  # 2 x 2 maps: four values per channel
    check_single_sample_batches(2, teacher, students, 32)
    check_single_sample_batches(1, teacher, students, 32, frozen_teacher=True)  # the student trains on 1 x 1 maps
    with pytest.raises(ValueError, match="the student_1's"):
        check_single_sample_batches(1, teacher, [*students, build_network("resnet18")], 32, frozen_teacher=True)
