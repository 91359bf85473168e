"""RetinaNet teachers and students that share one anchor layout, built without torchvision.

MONAI's ``resnet_fpn_feature_extractor`` / ``BackboneWithFPN`` take their layer getter from torchvision, which is not a
dependency here. :class:`ResNetFPNBackbone` does the same job with plain modules: the stem and the first stages of a
MONAI :class:`~monai.networks.nets.ResNet` (random init) followed by MONAI's
:class:`~monai.networks.blocks.feature_pyramid_network.FeaturePyramidNetwork` and its extra max-pool level.

Distillation between detectors compares their outputs anchor by anchor, so every network of one run must predict on
the same anchors: same FPN levels and strides, anchors per location, classes and output keys. :class:`DetectorSpec`
holds exactly those shared settings; every network is built from it (alignment by construction) and
:func:`check_anchor_alignment` verifies networks built elsewhere.

Example::

    preset = get_preset("cpu")
    teacher, students = preset.build_teacher(), preset.build_students(2)
    anchor_generator = preset.spec.anchor_generator()
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from monai.apps.detection.networks.retinanet_network import RetinaNet
from monai.apps.detection.utils.anchor_utils import AnchorGeneratorWithAnchorShape
from monai.networks.blocks.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool
from monai.networks.nets import resnet
from monai.utils import ensure_tuple_rep, look_up_option
from torch import Tensor, nn

from monai_kdml.keys import TEACHER, student_name
from monai_kdml.networks.registry import Registry

__all__ = [
    "BACKBONES",
    "PRESETS",
    "DetectionPreset",
    "DetectorSpec",
    "NetworkConfig",
    "ResNetFPNBackbone",
    "build_retinanet",
    "check_anchor_alignment",
    "check_frame_size",
    "get_preset",
    "preset_from_dict",
    "preset_to_dict",
]

logger = logging.getLogger(__name__)

BACKBONES = ("resnet10", "resnet18", "resnet34", "resnet50")
"""MONAI ResNet factories :func:`build_retinanet` accepts by name."""


class ResNetFPNBackbone(nn.Module):
    """The stem and first stages of a MONAI ResNet + a feature pyramid; RetinaNet's ``feature_extractor``.

    Stage ``r`` of a ResNet (``layer{r}``, 1-based) has stride ``s1 * p * 2**(r-1)``, where ``s1`` is the stride of
    ``conv1`` and ``p`` is 2 with the stem max-pool, else 1. The pyramid returns one map per returned stage plus a
    max-pooled copy of the last (MONAI's ``LastLevelMaxPool``), all with ``out_channels`` channels, highest resolution
    first. Stages deeper than ``max(returned_layers)`` and the classifier are dropped.

    Args:
        backbone: a MONAI :class:`~monai.networks.nets.ResNet` (its modules are reused, not copied).
        returned_layers: 1-based stages fed to the pyramid, increasing, each in ``[1, 4]``.
        out_channels: channels of every pyramid level (RetinaNet's heads need a multiple of 8: GroupNorm(8)).
        spatial_dims: 2 or 3.

    Attributes:
        out_channels: read by :class:`~monai.apps.detection.networks.retinanet_network.RetinaNet`.
        strides: stride of each output level, ``len(returned_layers) + 1`` ints.

    Raises:
        ValueError: bad ``returned_layers``, ``out_channels`` or an anisotropic ``conv1`` stride.
    """

    def __init__(
        self,
        backbone: resnet.ResNet,
        returned_layers: Sequence[int] = (1, 2),
        out_channels: int = 64,
        spatial_dims: int = 2,
    ) -> None:
        super().__init__()
        layers = tuple(int(r) for r in returned_layers)
        if not layers or list(layers) != sorted(set(layers)) or layers[0] < 1 or layers[-1] > 4:
            raise ValueError(f"`returned_layers` must be increasing stages in [1, 4], got {returned_layers}.")
        if out_channels < 8 or out_channels % 8:
            raise ValueError(f"`out_channels` must be a positive multiple of 8 (GroupNorm heads), got {out_channels}.")
        conv1_stride = set(backbone.conv1.stride)
        if len(conv1_stride) != 1:
            raise ValueError(f"`backbone.conv1` must have one stride on every axis, got {backbone.conv1.stride}.")
        self.stem = nn.Sequential(
            backbone.conv1, backbone.bn1, backbone.act, nn.Identity() if backbone.no_max_pool else backbone.maxpool
        )
        self.stages = nn.ModuleList([getattr(backbone, f"layer{r}") for r in range(1, layers[-1] + 1)])
        self.returned_layers: list[int] = list(layers)
        self.fpn = FeaturePyramidNetwork(
            spatial_dims=spatial_dims,
            in_channels_list=[_stage_out_channels(self.stages[r - 1]) for r in layers],
            out_channels=out_channels,
            extra_blocks=LastLevelMaxPool(spatial_dims),
        )
        self.out_channels = out_channels
        stem_stride = conv1_stride.pop() * (1 if backbone.no_max_pool else 2)
        strides = [stem_stride * 2 ** (r - 1) for r in layers]
        self.strides: tuple[int, ...] = (*strides, strides[-1] * 2)

    def forward(self, x: Tensor) -> list[Tensor]:
        """``(B, C, *spatial)`` images -> pyramid maps ``(B, out_channels, *spatial / stride)``, finest first."""
        x = self.stem(x)
        features: dict[str, Tensor] = {}
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i + 1 in self.returned_layers:
                features[str(i)] = x
        return list(self.fpn(features).values())


def _stage_out_channels(stage: nn.Module) -> int:
    """Output channels of a ResNet stage: those of its last convolution (the block's or its shortcut's)."""
    convs = [m for m in stage.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d))]
    return int(convs[-1].out_channels)


def _as_shape_tuple(shapes: Sequence[Sequence[float]]) -> tuple[tuple[float, ...], ...]:
    return tuple(tuple(float(v) for v in s) for s in shapes)


@dataclass(frozen=True)
class DetectorSpec:
    """Settings every network of a KD/ML run must share so their outputs line up anchor by anchor.

    Level ``l`` of the pyramid has stride ``strides[l]`` and anchors ``strides[l] / strides[0] * base_anchor_shapes``
    (MONAI's ``feature_map_scales``); images must be divisible by ``size_divisible = strides[-1]``.

    Args:
        num_classes: foreground classes (RetinaNet has no background class).
        spatial_dims: 2 (3 is accepted by the MONAI parts but untested here).
        in_channels: image channels.
        returned_layers: ResNet stages fed to the FPN, e.g. ``(1, 2)``: strides 4, 8 and the extra level 16.
        conv1_stride: stride of the first ResNet convolution (MONAI's ``conv1_t_stride``; 2 as in ImageNet ResNets).
        base_anchor_shapes: anchor sizes ``(w, h[, d])`` in pixels at the finest level.
    """

    num_classes: int = 1
    spatial_dims: int = 2
    in_channels: int = 3
    returned_layers: tuple[int, ...] = (1, 2)
    conv1_stride: int = 2
    base_anchor_shapes: tuple[tuple[float, ...], ...] = field(default=((16, 16), (24, 24), (32, 32)))

    def __post_init__(self) -> None:
        # bundle configs pass JSON lists: store tuples so specs stay hashable and compare equal.
        object.__setattr__(self, "returned_layers", tuple(int(r) for r in self.returned_layers))
        object.__setattr__(self, "base_anchor_shapes", _as_shape_tuple(self.base_anchor_shapes))
        for name in ("num_classes", "in_channels", "conv1_stride"):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be >= 1, got {getattr(self, name)}.")
        look_up_option(self.spatial_dims, (2, 3))
        if not self.base_anchor_shapes or any(len(s) != self.spatial_dims for s in self.base_anchor_shapes):
            raise ValueError(
                f"`base_anchor_shapes` must hold {self.spatial_dims} sizes per anchor, got {self.base_anchor_shapes}."
            )
        layers = self.returned_layers
        if not layers or list(layers) != sorted(set(layers)) or layers[0] < 1 or layers[-1] > 4:
            raise ValueError(f"`returned_layers` must be increasing stages in [1, 4], got {self.returned_layers}.")

    @property
    def strides(self) -> tuple[int, ...]:
        """Stride of each pyramid level (stem max-pool included), the extra max-pooled level last."""
        strides = [self.conv1_stride * 2 * 2 ** (r - 1) for r in self.returned_layers]
        return (*strides, strides[-1] * 2)

    @property
    def feature_map_scales(self) -> tuple[int, ...]:
        """Anchor scale of each level relative to the finest: ``strides[l] // strides[0]``."""
        return tuple(s // self.strides[0] for s in self.strides)

    @property
    def size_divisible(self) -> int:
        """Image sizes must be multiples of this (the coarsest stride)."""
        return self.strides[-1]

    @property
    def num_anchors(self) -> int:
        """Anchors per location."""
        return len(self.base_anchor_shapes)

    def anchor_generator(self) -> AnchorGeneratorWithAnchorShape:
        """A MONAI anchor generator for these levels and shapes (stateless: one per consumer is fine)."""
        return AnchorGeneratorWithAnchorShape(
            feature_map_scales=self.feature_map_scales, base_anchor_shapes=self.base_anchor_shapes
        )


def build_retinanet(
    spec: DetectorSpec | None = None, backbone: str = "resnet18", fpn_channels: int = 64, widen_factor: float = 1.0
) -> RetinaNet:
    """A randomly initialised RetinaNet over a :class:`ResNetFPNBackbone`, laid out by ``spec``.

    Args:
        spec: shared settings; ``None`` means ``DetectorSpec()``.
        backbone: one of :data:`BACKBONES` (MONAI ResNets; ``resnet50`` uses bottleneck blocks).
        fpn_channels: channels of the pyramid and of both heads' convolutions (multiple of 8).
        widen_factor: scales the ResNet's stage widths (64, 128, 256, 512) -- 0.5 halves them.

    Returns:
        A RetinaNet whose ``feature_extractor.strides`` equals ``spec.strides``.
    """
    spec = spec or DetectorSpec()
    factory = getattr(resnet, look_up_option(backbone, BACKBONES))
    body = factory(
        spatial_dims=spec.spatial_dims,
        n_input_channels=spec.in_channels,
        conv1_t_stride=spec.conv1_stride,
        widen_factor=widen_factor,
        feed_forward=False,
    )
    extractor = ResNetFPNBackbone(body, spec.returned_layers, fpn_channels, spec.spatial_dims)
    return RetinaNet(
        spatial_dims=spec.spatial_dims,
        num_classes=spec.num_classes,
        num_anchors=spec.num_anchors,
        feature_extractor=extractor,
        size_divisible=spec.size_divisible,
    )


@dataclass(frozen=True)
class NetworkConfig:
    """What may differ between the networks of one run: the backbone and the width of pyramid and heads."""

    backbone: str = "resnet18"
    fpn_channels: int = 64
    widen_factor: float = 1.0


@dataclass(frozen=True)
class DetectionPreset:
    """A named teacher/student pair sharing one :class:`DetectorSpec`, and the image size it was sized for."""

    spec: DetectorSpec
    teacher: NetworkConfig
    student: NetworkConfig
    image_size: int

    def build_teacher(self) -> RetinaNet:
        """A fresh (random) teacher."""
        return build_retinanet(self.spec, **vars(self.teacher))

    def build_student(self, name: str | None = None) -> RetinaNet:
        """A fresh (random) student; ``name`` swaps its backbone (one of :data:`BACKBONES`) at the preset's pyramid
        and width, e.g. for students of different architectures in one ensemble (``build_students(..., names=)``)."""
        config = self.student if name is None else dataclasses.replace(self.student, backbone=name)
        return build_retinanet(self.spec, **vars(config))

    def build_students(self, num_students: int) -> list[RetinaNet]:
        """``num_students`` independently initialised students."""
        if num_students < 1:
            raise ValueError(f"`num_students` must be >= 1, got {num_students}.")
        return [self.build_student() for _ in range(num_students)]

    def anchor_generator(self) -> AnchorGeneratorWithAnchorShape:
        """The anchor generator of :attr:`spec`."""
        return self.spec.anchor_generator()


PRESETS: Registry[DetectionPreset] = Registry("preset")
"""Named teacher/student detector pairs; see :func:`get_preset`."""

# unit tests and smoke runs: 64 px images, a few thousand parameters per head.
PRESETS.register(
    "tiny",
    DetectionPreset(
        spec=DetectorSpec(returned_layers=(1, 2), base_anchor_shapes=((8, 8), (16, 16))),
        teacher=NetworkConfig("resnet10", fpn_channels=16, widen_factor=0.25),
        student=NetworkConfig("resnet10", fpn_channels=8, widen_factor=0.125),
        image_size=64,
    ),
)
# Kvasir-SEG boxes resized with their frame to 160 px: median side ~62 px, 5-95 % 24-123 px, max 160 px.
# Levels at strides 4/8/16 with 16-32 px base anchors cover 16-128 px.
# two CPU cores: teacher = ResNet18 stages 1-2 + 64-ch FPN, students = half-width ResNet10 + 32-ch FPN, 160 px.
PRESETS.register(
    "cpu",
    DetectionPreset(
        spec=DetectorSpec(returned_layers=(1, 2), base_anchor_shapes=((16, 16), (24, 24), (32, 32))),
        teacher=NetworkConfig("resnet18", fpn_channels=64, widen_factor=1.0),
        student=NetworkConfig("resnet10", fpn_channels=32, widen_factor=0.5),
        image_size=160,
    ),
)
# one GPU: ResNet50 -> ResNet18, MONAI's 256-channel FPN, stages 1-3 (strides 4-32), 512 px.
PRESETS.register(
    "gpu",
    DetectionPreset(
        spec=DetectorSpec(returned_layers=(1, 2, 3), base_anchor_shapes=((32, 32), (48, 48), (64, 64))),
        teacher=NetworkConfig("resnet50", fpn_channels=256, widen_factor=1.0),
        student=NetworkConfig("resnet18", fpn_channels=256, widen_factor=1.0),
        image_size=512,
    ),
)


def get_preset(name: str) -> DetectionPreset:
    """The preset called ``name`` (one of :data:`PRESETS`); a typo raises ``ValueError`` with a suggestion."""
    return PRESETS.get(name)


_ALIGNED_ATTRIBUTES = ("spatial_dims", "num_classes", "num_anchors", "size_divisible", "cls_key", "box_reg_key")


def _alignment_signature(name: str, network: nn.Module) -> dict[str, object]:
    values: dict[str, object] = {}
    for attr in _ALIGNED_ATTRIBUTES:
        if not hasattr(network, attr):
            raise ValueError(f"network `{name}` has no attribute `{attr}`; it is not a RetinaNet-like detector.")
        values[attr] = getattr(network, attr)
    values["size_divisible"] = ensure_tuple_rep(values["size_divisible"], int(values["spatial_dims"]))  # type: ignore
    extractor = getattr(network, "feature_extractor", None)
    values["strides"] = getattr(extractor, "strides", None)
    return values


def check_anchor_alignment(teacher: nn.Module | None, students: Sequence[nn.Module]) -> None:
    """Check that every network predicts on the same anchors, so outputs can be compared anchor by anchor.

    Compares ``spatial_dims``, ``num_classes``, ``num_anchors``, ``size_divisible``, ``cls_key``, ``box_reg_key``
    and the pyramid strides (``feature_extractor.strides``; when a network does not expose them the strides are not
    compared and a warning is logged).

    Args:
        teacher: the teacher, or ``None`` (then students are compared with ``student_0``).
        students: the students.

    Raises:
        ValueError: naming the first mismatching network and attribute, or a network lacking an attribute.
    """
    named = ([(TEACHER, teacher)] if teacher is not None else []) + [
        (student_name(k), s) for k, s in enumerate(students)
    ]
    if not named:
        raise ValueError("check_anchor_alignment needs at least one network.")
    ref_name, ref = named[0][0], _alignment_signature(*named[0])
    for name, network in named[1:]:
        sig = _alignment_signature(name, network)
        for attr, value in sig.items():
            if attr == "strides" and (value is None or ref[attr] is None):
                logger.warning("strides of `%s` or `%s` are unknown; not compared.", ref_name, name)
                continue
            if value != ref[attr]:
                raise ValueError(
                    f"networks `{ref_name}` and `{name}` predict on different anchors: "
                    f"`{attr}` is {ref[attr]!r} vs {value!r}."
                )


def preset_to_dict(preset: DetectionPreset) -> dict[str, Any]:
    """A JSON-ready description of ``preset`` (what a trained bundle records beside ``model.pt``)."""
    return dataclasses.asdict(preset)


def preset_from_dict(description: Mapping[str, Any]) -> DetectionPreset:
    """The :class:`DetectionPreset` a :func:`preset_to_dict` description describes.

    Raises:
        ValueError: a description that does not make a preset, naming what is wrong.
    """
    try:
        return DetectionPreset(
            spec=DetectorSpec(**description["spec"]),
            teacher=NetworkConfig(**description["teacher"]),
            student=NetworkConfig(**description["student"]),
            image_size=int(description["image_size"]),
        )
    except (KeyError, TypeError) as err:
        raise ValueError(f"not a detector description ({err!r}): {dict(description)}") from None


def check_frame_size(image_size: int, spec: DetectorSpec) -> None:
    """Raise unless ``image_size`` is a positive multiple of ``spec.size_divisible`` (what the detectors take).

    Raises:
        ValueError: naming ``image_size`` and the valid sizes.
    """
    step = spec.size_divisible
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < step or image_size % step:
        raise ValueError(
            f"`image_size` must be a positive multiple of {step} (the coarsest stride of this detector), e.g. "
            f"{max(step, 160 // step * step)}; got {image_size!r}."
        )
