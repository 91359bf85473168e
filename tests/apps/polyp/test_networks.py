"""Aligned RetinaNet teachers/students: backbone strides, the shared spec, presets, alignment checks, TorchScript."""

from __future__ import annotations

import io

import pytest
import torch
from monai.networks.nets import resnet

from monai_kdml.apps.polyp.networks import (
    PRESETS,
    DetectorSpec,
    ResNetFPNBackbone,
    build_retinanet,
    check_anchor_alignment,
    get_preset,
)

TINY = DetectorSpec(base_anchor_shapes=((8, 8), (16, 16)))


def _resnet10(**kwargs) -> resnet.ResNet:
    return resnet.resnet10(spatial_dims=2, n_input_channels=3, conv1_t_stride=2, widen_factor=0.25, **kwargs)


@pytest.mark.parametrize(("returned_layers", "strides"), [((1, 2), (4, 8, 16)), ((2, 3), (8, 16, 32))])
def test_backbone_levels_have_the_announced_strides_and_channels(returned_layers, strides):
    backbone = ResNetFPNBackbone(_resnet10(), returned_layers, out_channels=16)
    maps = backbone(torch.rand(2, 3, 64, 96))
    assert backbone.strides == strides
    assert [tuple(m.shape) for m in maps] == [(2, 16, 64 // s, 96 // s) for s in strides]
    # stages deeper than the last returned one are dropped
    assert len(backbone.stages) == returned_layers[-1]


def test_backbone_reads_bottleneck_widths_and_handles_no_max_pool():
    body = resnet.resnet50(spatial_dims=2, n_input_channels=3, conv1_t_stride=1, widen_factor=0.125, no_max_pool=True)
    backbone = ResNetFPNBackbone(body, (1, 2), out_channels=8)
    assert backbone.strides == (1, 2, 4)
    assert [m.shape[-1] for m in backbone(torch.rand(1, 3, 16, 16))] == [16, 8, 4]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"returned_layers": (2, 1)}, "returned_layers"),
        ({"returned_layers": (0, 1)}, "returned_layers"),
        ({"returned_layers": (1, 5)}, "returned_layers"),
        ({"out_channels": 12}, "out_channels"),
    ],
)
def test_backbone_rejects_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ResNetFPNBackbone(_resnet10(), **kwargs)


def test_spec_derives_strides_scales_and_divisibility():
    spec = DetectorSpec(returned_layers=(1, 2, 3), conv1_stride=2, base_anchor_shapes=((32, 32), (16, 48)))
    assert spec.strides == (4, 8, 16, 32)
    assert spec.feature_map_scales == (1, 2, 4, 8)
    assert spec.size_divisible == 32
    assert spec.num_anchors == 2
    assert spec.anchor_generator().num_anchors_per_location() == [2, 2, 2, 2]


def test_spec_from_json_lists_equals_spec_from_tuples():
    from_json = DetectorSpec(returned_layers=[1, 2], base_anchor_shapes=[[8, 8], [16, 16]])
    assert from_json == TINY
    assert hash(from_json) == hash(TINY)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"base_anchor_shapes": ((8, 8, 8),)}, "base_anchor_shapes"),
        ({"returned_layers": ()}, "returned_layers"),
        ({"num_classes": 0}, "num_classes"),
    ],
)
def test_spec_rejects_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DetectorSpec(**kwargs)


def test_build_retinanet_follows_the_spec():
    spec = DetectorSpec(num_classes=3, base_anchor_shapes=((8, 8), (16, 16)))
    net = build_retinanet(spec, "resnet10", fpn_channels=8, widen_factor=0.25)
    out = net(torch.rand(2, 3, 32, 48))
    assert net.feature_extractor.strides == spec.strides
    assert net.size_divisible == (16, 16) and net.num_anchors == 2 and net.num_classes == 3
    assert [tuple(m.shape) for m in out[net.cls_key]] == [(2, 6, 32 // s, 48 // s) for s in spec.strides]
    assert [m.shape[1] for m in out[net.box_reg_key]] == [8, 8, 8]


def test_build_retinanet_rejects_unknown_backbone():
    with pytest.raises(ValueError, match="resnet18"):
        build_retinanet(TINY, "resnet81")


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_build_aligned_teacher_and_students_with_smaller_students(name):
    preset = get_preset(name)
    teacher, students = preset.build_teacher(), preset.build_students(2)
    check_anchor_alignment(teacher, students)
    assert students[0] is not students[1]
    assert preset.image_size % preset.spec.size_divisible == 0

    def size(m):
        return sum(p.numel() for p in m.parameters())

    assert size(students[0]) < size(teacher)
    # independently initialised students (the ensemble's diversity starts here)
    assert not torch.equal(
        students[0].classification_head.cls_logits.weight, students[1].classification_head.cls_logits.weight
    )


def test_get_preset_suggests_on_typo():
    with pytest.raises(ValueError, match="cpu"):
        get_preset("cpuu")


def test_alignment_error_names_network_and_attribute():
    teacher = build_retinanet(TINY, "resnet10", 8, 0.25)
    good = build_retinanet(TINY, "resnet10", 8, 0.125)
    other_classes = build_retinanet(
        DetectorSpec(num_classes=2, base_anchor_shapes=TINY.base_anchor_shapes), "resnet10", 8, 0.25
    )
    with pytest.raises(ValueError, match=r"`teacher` and `student_1`.*num_classes"):
        check_anchor_alignment(teacher, [good, other_classes])
    other_levels = build_retinanet(
        DetectorSpec(returned_layers=(2, 3), base_anchor_shapes=TINY.base_anchor_shapes), "resnet10", 8, 0.25
    )
    with pytest.raises(ValueError, match=r"`student_0` and `student_1`.*size_divisible"):
        check_anchor_alignment(None, [good, other_levels])
    other_anchors = build_retinanet(DetectorSpec(base_anchor_shapes=((8, 8),)), "resnet10", 8, 0.25)
    with pytest.raises(ValueError, match="num_anchors"):
        check_anchor_alignment(teacher, [other_anchors])
    with pytest.raises(ValueError, match="`student_0` has no attribute `spatial_dims`"):
        check_anchor_alignment(teacher, [torch.nn.Linear(2, 2)])


def test_alignment_compares_strides_even_when_divisibility_matches():
    teacher = build_retinanet(TINY, "resnet10", 8, 0.25)
    student = build_retinanet(TINY, "resnet10", 8, 0.25)
    student.feature_extractor.strides = (2, 4, 16)
    with pytest.raises(ValueError, match="strides"):
        check_anchor_alignment(teacher, [student])


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # TorchScript warns in recent torch, still works
def test_retinanet_scripts_and_round_trips():
    net = build_retinanet(TINY, "resnet10", 8, 0.25).eval()
    scripted = torch.jit.script(net)
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    buffer.seek(0)
    loaded = torch.jit.load(buffer)
    x = torch.rand(1, 3, 32, 32)
    eager, again = net(x), loaded(x)
    for key in (net.cls_key, net.box_reg_key):
        assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(eager[key], again[key], strict=True))
