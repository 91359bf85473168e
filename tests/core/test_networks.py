"""Network registry and presets: lookup errors, torchvision layout of the ResNets, timm names (optional)."""

from __future__ import annotations

import sys

import pytest
import torch
from torch import nn

from monai_kdml.networks import NETWORKS, PRESETS, Registry, build_network, get_preset


def test_registry_lookup_names_key_and_suggests() -> None:
    registry: Registry[int] = Registry("colour")
    registry.register("red", 1)
    registry.register("green", 2)
    assert registry.get("red") == 1 and registry.names() == ["red", "green"]
    assert sorted(registry) == ["green", "red"] and "red" in registry and len(registry) == 2
    with pytest.raises(ValueError, match=r"`colour`: By 'rde', did you mean 'red'"):
        registry.get("rde")
    with pytest.raises(ValueError, match="already registered"):
        registry.register("red", 3)


def test_registry_check_runs_at_registration() -> None:
    def positive(name: str, item: int) -> None:
        if item <= 0:
            raise ValueError(f"{name} must be positive")

    registry: Registry[int] = Registry("size", check=positive)
    with pytest.raises(ValueError, match="must be positive"):
        registry.register("zero", 0)
    assert "zero" not in registry


def test_preset_typo_names_the_config_key() -> None:
    with pytest.raises(ValueError, match=r"`preset`: By 'dmeo', did you mean 'demo'"):
        get_preset("dmeo")
    with pytest.raises(ValueError, match=r"`network name`.*resnet18"):
        build_network("resnet81")


def test_presets_name_known_networks() -> None:
    for name in PRESETS:
        preset = get_preset(name)
        for network in (preset.teacher, preset.student):
            assert network.startswith("timm:") or network in NETWORKS, (name, network)


@pytest.mark.parametrize("name", ["resnet10", "resnet18", "resnet34", "resnet50"])
def test_resnets_have_torchvision_layout(name: str) -> None:
    net = build_network(name, num_classes=3)
    assert net.conv1.stride == (2, 2) and net.conv1.kernel_size == (7, 7) and not net.no_max_pool
    shortcuts = [m for n, m in net.named_modules() if n.endswith("downsample.0")]
    assert shortcuts and all(m.bias is None for m in shortcuts)
    # stride 2 stem + max-pool: a 64 px tile reaches layer1 at 16 px (MONAI's default stem would give 32 px)
    features: list[torch.Tensor] = []
    net.layer1.register_forward_hook(lambda _m, _i, out: features.append(out))
    assert net.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 3)
    assert features[0].shape[-2:] == (16, 16)


def test_resnet_builds_in_3d() -> None:
    net = build_network("resnet18", spatial_dims=3, in_channels=1, num_classes=2).eval()
    assert net(torch.randn(1, 1, 32, 32, 32)).shape == (1, 2)


def test_demo_sizes_keep_their_architecture() -> None:
    slim = build_network("resnet10_slim")
    assert slim.conv1.stride == (1, 1)  # no pretrained weights exist for it; the demo's stride-1 stem stays
    assert sum(p.numel() for p in build_network("densenet_small").parameters()) < 300_000


def test_build_network_passes_keyword_arguments() -> None:
    net = build_network("densenet_small", num_classes=2, dropout_prob=0.5)
    assert any(isinstance(m, (nn.Dropout, nn.Dropout2d)) and m.p == 0.5 for m in net.modules())


class TestTimm:
    def test_timm_name_builds_random_model(self) -> None:
        pytest.importorskip("timm")
        net = build_network("timm:vit_tiny_patch16_224", num_classes=2, img_size=32, patch_size=8, depth=1)
        assert net.eval()(torch.randn(2, 3, 32, 32)).shape == (2, 2)

    def test_pretrained_download_is_refused(self) -> None:
        pytest.importorskip("timm")
        with pytest.raises(ValueError, match="nothing is downloaded"):
            build_network("timm:vit_tiny_patch16_224", pretrained=True)

    def test_unknown_timm_model_suggests(self) -> None:
        pytest.importorskip("timm")
        with pytest.raises(ValueError, match=r"did you mean 'vit_small_patch16_224'"):
            build_network("timm:vit_smal_patch16_224")

    def test_missing_timm_names_the_package(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setitem(sys.modules, "timm", None)  # import timm now raises ImportError
        with pytest.raises(ModuleNotFoundError, match=r"optional package `timm`: pip install timm"):
            build_network("timm:vit_small_patch16_224")
