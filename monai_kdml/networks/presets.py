"""Classification networks by name, and teacher-student pairs of them, shared by the bundles and examples.

Presets echo the paper's three teacher-student versions (a large and a small network of one family, and across
families), add a CPU demo pair and a frozen foundation-model teacher. Every network is built from random weights
(nothing is downloaded); :func:`monai_kdml.networks.load_pretrained` fills it from a local file.

The ResNets and DenseNet121 have torchvision's layout (7x7 stride-2 first convolution, 3x3 stride-2 max-pool, shortcut
type B without bias), so ImageNet weights map onto them one to one; in 3D the same layout gives the same 4x stem
reduction. ``resnet10_slim`` and ``densenet_small`` are CPU-demo sizes with no published weights.

``timm:<model>`` names any `timm <https://github.com/huggingface/pytorch-image-models>`_ model (optional
dependency; 2D only), always with ``pretrained=False``: weights come from a local file, never from the network.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from monai.networks.nets import DenseNet, ResNet
from monai.utils import look_up_option
from torch import nn

from monai_kdml.networks.registry import Registry

__all__ = [
    "NETWORKS",
    "PRESETS",
    "TIMM_PREFIX",
    "NetworkFactory",
    "TeacherStudentPreset",
    "build_network",
    "get_preset",
]

TIMM_PREFIX = "timm:"
"""Network names starting with this build a timm model: ``"timm:vit_small_patch16_224"``."""

NetworkFactory = Callable[..., nn.Module]
"""``f(spatial_dims, in_channels, num_classes, **kwargs) -> nn.Module``."""

NETWORKS: Registry[NetworkFactory] = Registry("network name")
"""Classification network factories by name; see :func:`build_network`."""

_RESNET_LAYOUTS: dict[str, tuple[str, list[int]]] = {
    "resnet10": ("basic", [1, 1, 1, 1]),
    "resnet18": ("basic", [2, 2, 2, 2]),
    "resnet34": ("basic", [3, 4, 6, 3]),
    "resnet50": ("bottleneck", [3, 4, 6, 3]),
}


def _torchvision_resnet(block: str, layers: list[int]) -> NetworkFactory:
    def build(spatial_dims: int, in_channels: int, num_classes: int, **kwargs: Any) -> nn.Module:
        # torchvision's layout (MONAI's defaults differ: stride-1 stem and a bias in the shortcut convolution)
        layout = {"conv1_t_size": 7, "conv1_t_stride": 2, "shortcut_type": "B", "bias_downsample": False}
        return ResNet(
            block,
            layers,
            [64, 128, 256, 512],
            spatial_dims=spatial_dims,
            n_input_channels=in_channels,
            num_classes=num_classes,
            **{**layout, **kwargs},
        )

    return build


def _resnet10_slim(spatial_dims: int, in_channels: int, num_classes: int, **kwargs: Any) -> nn.Module:
    # ResNet10 at a quarter of the width (0.3 M parameters) with MONAI's stride-1 stem: the CPU demo's student
    return ResNet(
        "basic",
        [1, 1, 1, 1],
        [16, 32, 64, 128],
        spatial_dims=spatial_dims,
        n_input_channels=in_channels,
        num_classes=num_classes,
        **kwargs,
    )


def _densenet121(spatial_dims: int, in_channels: int, num_classes: int, **kwargs: Any) -> nn.Module:
    # MONAI's DenseNet already has torchvision's stem; only parameter names differ (see load_pretrained)
    return DenseNet(spatial_dims, in_channels, num_classes, block_config=(6, 12, 24, 16), **kwargs)


def _densenet_small(spatial_dims: int, in_channels: int, num_classes: int, **kwargs: Any) -> nn.Module:
    # DenseNet with 4 dense blocks of 2-4 layers and growth 16 (0.2 M parameters)
    kwargs = {"init_features": 32, "growth_rate": 16, "block_config": (2, 4, 4, 2), **kwargs}
    return DenseNet(spatial_dims, in_channels, num_classes, **kwargs)


def _timm_model(name: str, spatial_dims: int, in_channels: int, num_classes: int, **kwargs: Any) -> nn.Module:
    try:
        import timm
    except ImportError:
        raise ModuleNotFoundError(
            f"network '{TIMM_PREFIX}{name}' needs the optional package `timm`: pip install timm "
            "(or pip install 'monai-kdml[pretrained]')."
        ) from None
    if spatial_dims != 2:
        raise ValueError(f"network '{TIMM_PREFIX}{name}': timm models are 2D, got `spatial_dims`={spatial_dims}.")
    if kwargs.pop("pretrained", False):
        raise ValueError(
            f"network '{TIMM_PREFIX}{name}': nothing is downloaded (`pretrained` must be False); load a local file "
            "with monai_kdml.networks.load_pretrained(network, path, source='timm')."
        )
    if not timm.is_model(name):
        try:
            look_up_option(name, timm.list_models(), print_all_options=False)
        except ValueError as err:
            raise ValueError(f"`network name`: timm has no model '{name}'. {err}") from None
    model: nn.Module = timm.create_model(
        name, pretrained=False, num_classes=num_classes, in_chans=in_channels, **kwargs
    )
    return model


for _name, (_block, _layers) in _RESNET_LAYOUTS.items():
    NETWORKS.register(_name, _torchvision_resnet(_block, _layers))
NETWORKS.register("resnet10_slim", _resnet10_slim)
NETWORKS.register("densenet121", _densenet121)
NETWORKS.register("densenet_small", _densenet_small)


def build_network(
    name: str, spatial_dims: int = 2, in_channels: int = 3, num_classes: int = 2, **kwargs: Any
) -> nn.Module:
    """A freshly initialised network (each call builds new, independent, random weights).

    Args:
        name: a name of :data:`NETWORKS` (e.g. ``"resnet18"``, ``"resnet10_slim"``) or ``"timm:<model>"``.
        spatial_dims: 2 for tiles, 3 for volumes (timm models: 2 only).
        in_channels: image channels (3 for H&E RGB).
        num_classes: output logits (2 for MSI vs MSS).
        kwargs: passed to the MONAI network (e.g. ``dropout_prob``) or to ``timm.create_model`` (e.g. ``img_size``).

    Raises:
        ValueError: unknown name (with a suggestion), or a timm model asked for ``pretrained=True``.
        ModuleNotFoundError: a ``timm:`` name without timm installed.
    """
    if name.startswith(TIMM_PREFIX):
        return _timm_model(name[len(TIMM_PREFIX) :], spatial_dims, in_channels, num_classes, **kwargs)
    return NETWORKS.get(name)(spatial_dims, in_channels, num_classes, **kwargs)


def _known_network(name: str) -> bool:
    return name.startswith(TIMM_PREFIX) or name in NETWORKS


@dataclass(frozen=True)
class TeacherStudentPreset:
    """A named teacher-student pair.

    Args:
        teacher: network name for the teacher (see :func:`build_network`).
        student: network name for every student.
        note: what the pair is for.
    """

    teacher: str
    student: str
    note: str


def _check_preset(name: str, preset: TeacherStudentPreset) -> None:
    for role in ("teacher", "student"):
        if not _known_network(getattr(preset, role)):
            raise ValueError(f"preset '{name}': unknown {role} network '{getattr(preset, role)}'.")


PRESETS: Registry[TeacherStudentPreset] = Registry("preset", check=_check_preset)
"""Named teacher-student pairs; see :func:`get_preset`."""

PRESETS.register("resnet50-resnet18", TeacherStudentPreset("resnet50", "resnet18", "paper-like, one family, 224 px"))
PRESETS.register("resnet34-resnet10", TeacherStudentPreset("resnet34", "resnet10", "one family, deeper compression"))
PRESETS.register(
    "densenet121-densenet_small",
    TeacherStudentPreset("densenet121", "densenet_small", "dense connectivity, 39x fewer parameters per student"),
)
PRESETS.register("demo", TeacherStudentPreset("resnet18", "resnet10_slim", "CPU demo: fits a 2-core run in minutes"))
PRESETS.register(
    "vit_small-resnet18",
    TeacherStudentPreset(
        "timm:vit_small_patch16_224",
        "resnet18",
        "frozen foundation-model teacher (timm, weights from a local file, 224 px) into ResNet18 students",
    ),
)


def get_preset(name: str) -> TeacherStudentPreset:
    """The preset called ``name``; an unknown name raises ``ValueError`` naming ``preset`` and the closest name."""
    return PRESETS.get(name)
