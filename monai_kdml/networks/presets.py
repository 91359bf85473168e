"""Teacher-student pairs of MONAI classification networks, shared by the bundles and examples.

Presets echo the paper's three teacher-student versions (a large and a small network of one family, and across
families) and add a CPU demo pair. Every network is a plain MONAI network built from random weights (nothing is
downloaded) and is ``torch.jit.script``-able.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from monai.networks.nets import DenseNet, ResNet, resnet10, resnet18, resnet34, resnet50
from monai.utils import look_up_option
from torch import nn

__all__ = ["NETWORKS", "PRESETS", "TeacherStudentPreset", "build_network", "get_preset"]


def _resnet(factory: Callable[..., ResNet]) -> Callable[[int, int, int], nn.Module]:
    def build(spatial_dims: int, in_channels: int, num_classes: int) -> nn.Module:
        return factory(spatial_dims=spatial_dims, n_input_channels=in_channels, num_classes=num_classes)

    return build


def _resnet10_slim(spatial_dims: int, in_channels: int, num_classes: int) -> nn.Module:
    # ResNet10 at a quarter of the width (0.3 M parameters): the CPU demo's student
    return ResNet(
        "basic",
        [1, 1, 1, 1],
        [16, 32, 64, 128],
        spatial_dims=spatial_dims,
        n_input_channels=in_channels,
        num_classes=num_classes,
    )


def _densenet121(spatial_dims: int, in_channels: int, num_classes: int) -> nn.Module:
    return DenseNet(spatial_dims, in_channels, num_classes, block_config=(6, 12, 24, 16))


def _densenet_small(spatial_dims: int, in_channels: int, num_classes: int) -> nn.Module:
    # DenseNet with 4 dense blocks of 2-4 layers and growth 16 (0.2 M parameters)
    return DenseNet(spatial_dims, in_channels, num_classes, init_features=32, growth_rate=16, block_config=(2, 4, 4, 2))


NETWORKS: dict[str, Callable[[int, int, int], nn.Module]] = {
    "resnet10": _resnet(resnet10),
    "resnet18": _resnet(resnet18),
    "resnet34": _resnet(resnet34),
    "resnet50": _resnet(resnet50),
    "resnet10_slim": _resnet10_slim,
    "densenet121": _densenet121,
    "densenet_small": _densenet_small,
}


@dataclass(frozen=True)
class TeacherStudentPreset:
    """A named teacher-student pair.

    Args:
        teacher: key of :data:`NETWORKS` for the teacher.
        student: key of :data:`NETWORKS` for every student.
        note: what the pair is for.
    """

    teacher: str
    student: str
    note: str


PRESETS: dict[str, TeacherStudentPreset] = {
    "resnet50-resnet18": TeacherStudentPreset("resnet50", "resnet18", "paper-like, one family, GPU, 224 px"),
    "resnet34-resnet10": TeacherStudentPreset("resnet34", "resnet10", "one family, deeper compression"),
    "densenet121-densenet_small": TeacherStudentPreset(
        "densenet121", "densenet_small", "dense connectivity, 39x fewer parameters per student"
    ),
    "demo": TeacherStudentPreset("resnet18", "resnet10_slim", "CPU demo: fits a 2-core run in minutes"),
}


def get_preset(name: str) -> TeacherStudentPreset:
    """The preset called ``name``; an unknown name raises ``ValueError`` listing the choices."""
    try:
        return look_up_option(name, PRESETS)
    except ValueError as err:
        raise ValueError(f"`preset`: {err}") from None


def build_network(name: str, spatial_dims: int = 2, in_channels: int = 3, num_classes: int = 2) -> nn.Module:
    """A freshly initialised network from :data:`NETWORKS` (each call builds new, independent weights).

    Args:
        name: e.g. ``"resnet18"`` or ``"resnet10_slim"``.
        spatial_dims: 2 for tiles, 3 for volumes.
        in_channels: image channels (3 for H&E RGB).
        num_classes: output logits (2 for MSI vs MSS).
    """
    try:
        factory = look_up_option(name, NETWORKS)
    except ValueError as err:
        raise ValueError(f"network name: {err}") from None
    return factory(spatial_dims, in_channels, num_classes)
