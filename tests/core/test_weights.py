"""load_pretrained: torchvision/timm files onto MONAI networks, key maps, checkpoint wrappers, strict errors, safety."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import torch
from torch import nn

from monai_kdml.networks import build_network, load_pretrained, read_state_dict


def randomise_norms(net: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BatchNorm statistics and affine terms, so a mis-mapped norm layer changes the outputs."""
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return net


def params(net: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def unchanged(net: nn.Module, before: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(v, before[k]) for k, v in net.state_dict().items())


@pytest.mark.parametrize("name", ["resnet18", "densenet121", "resnet50"])
def test_torchvision_weights_give_the_same_outputs(name: str, tmp_path: Path) -> None:
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    reference = randomise_norms(getattr(torchvision.models, name)(weights=None, num_classes=2)).eval()
    torch.save(reference.state_dict(), tmp_path / f"{name}.pth")
    net = build_network(name, num_classes=2)
    assert load_pretrained(net, tmp_path / f"{name}.pth", source="torchvision") is net
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected, got = reference(x), net.eval()(x)
    assert torch.allclose(got, expected, atol=1e-5), (got - expected).abs().max()


def test_imagenet_head_is_skipped_and_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    torchvision = pytest.importorskip("torchvision")
    imagenet = torchvision.models.resnet18(weights=None)  # 1000 classes
    torch.save(imagenet.state_dict(), tmp_path / "resnet18.pth")
    net = build_network("resnet18", num_classes=2)
    head_before = net.fc.weight.detach().clone()
    with caplog.at_level(logging.INFO, logger="monai_kdml.networks.weights"):
        load_pretrained(net, tmp_path / "resnet18.pth", source="torchvision")
    assert torch.equal(net.conv1.weight, imagenet.conv1.weight)
    assert torch.equal(net.layer4[1].bn2.running_var, imagenet.layer4[1].bn2.running_var)
    assert torch.equal(net.fc.weight, head_before)
    assert "['fc.weight', 'fc.bias'] kept its initialisation" in caplog.text


def test_torchvision_source_refuses_monai_default_stem(tmp_path: Path) -> None:
    torchvision = pytest.importorskip("torchvision")
    from monai.networks.nets import resnet18

    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "r18.pth")
    monai_default = resnet18(spatial_dims=2, n_input_channels=3, num_classes=2)  # stride-1 stem, shortcut bias
    with pytest.raises(ValueError, match=r"torchvision's ResNet stem.*stride \(1, 1\)"):
        load_pretrained(monai_default, tmp_path / "r18.pth", source="torchvision")


def test_key_map_strips_wrapper_prefixes(toy, tmp_path: Path) -> None:
    trained = toy.tiny_net(8, seed=0)
    wrapped = {"state_dict": {f"module.backbone.{k}": v for k, v in trained.state_dict().items()}, "epoch": 3}
    torch.save(wrapped, tmp_path / "ssl.ckpt")
    net = toy.tiny_net(8, seed=1)
    with pytest.raises(ValueError, match=r"unexpected keys \[module\.backbone\.0\.weight.*try key_map=\{'module\.'"):
        load_pretrained(net, tmp_path / "ssl.ckpt")
    load_pretrained(net, tmp_path / "ssl.ckpt", key_map={"module.": "", "backbone.": ""})
    assert unchanged(net, trained.state_dict())


def test_mismatch_lists_keys_and_loads_nothing(toy, tmp_path: Path) -> None:
    state = toy.tiny_net(8, seed=0).state_dict()
    del state["6.bias"]
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "w.pt")
    net = toy.tiny_net(8, seed=1)
    before = params(net)
    with pytest.raises(ValueError, match=r"1 missing keys \[6\.bias\]; 1 unexpected keys \[extra\.weight\]"):
        load_pretrained(net, tmp_path / "w.pt", config_key="student_weights", name="student_0")
    assert unchanged(net, before)  # never a partial load


def test_shape_mismatch_is_refused_even_when_not_strict(toy, tmp_path: Path) -> None:
    torch.save(toy.tiny_net(4, seed=0).state_dict(), tmp_path / "small.pt")
    net = toy.tiny_net(8, seed=1)
    before = params(net)
    with pytest.raises(ValueError, match=r"`w`: .*small\.pt does not hold weights.*0\.weight: file \(4, 1, 3, 3\)"):
        load_pretrained(net, tmp_path / "small.pt", strict=False, config_key="w")
    assert unchanged(net, before)


def test_not_strict_loads_what_fits(toy, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    source = toy.tiny_net(8, seed=0)
    body = {k: v for k, v in source.state_dict().items() if not k.startswith("6.")}  # backbone only
    torch.save(body, tmp_path / "body.pt")
    net = toy.tiny_net(8, num_classes=5, seed=1)
    head_before = net[6].weight.detach().clone()
    with caplog.at_level(logging.WARNING):
        load_pretrained(net, tmp_path / "body.pt", strict=False)
    assert torch.equal(net[0].weight, source[0].weight) and torch.equal(net[6].weight, head_before)
    assert "2 network parameters not in the file" in caplog.text
    with pytest.raises(ValueError, match=r"1 unexpected keys \[other\.weight\]\. Nothing was loaded"):
        load_pretrained(net, {"other.weight": torch.zeros(1)}, strict=False)


def test_checkpoint_wrappers_and_ambiguity(toy) -> None:
    teacher, student = toy.tiny_net(8, seed=0), toy.tiny_net(8, seed=1)
    for wrapper in ("state_dict", "model", "network", "teacher"):
        assert read_state_dict({wrapper: teacher.state_dict(), "epoch": 1}).keys() == teacher.state_dict().keys()
    nested = {"model": {"state_dict": teacher.state_dict()}}
    assert torch.equal(read_state_dict(nested)["0.weight"], teacher[0].weight)
    both = {"teacher": teacher.state_dict(), "network": student.state_dict()}
    with pytest.raises(ValueError, match=r"several networks \['network', 'teacher'\].*choose with `checkpoint_key`"):
        read_state_dict(both)
    net = toy.tiny_net(8, seed=2)
    load_pretrained(net, both, checkpoint_key="network")
    assert torch.equal(net[0].weight, student[0].weight)
    with pytest.raises(ValueError, match="no state dict under `checkpoint_key`='students'"):
        read_state_dict(both, checkpoint_key="students")


class Exploit:
    """A pickle that creates a directory when unpickled (stands in for any code a file could run)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def test_pickle_that_runs_code_is_refused(toy, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    torch.save({"state_dict": toy.tiny_net(8).state_dict(), "payload": Exploit(marker)}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match=r"evil\.pt was refused: it is not a plain weights file"):
        load_pretrained(toy.tiny_net(8), tmp_path / "evil.pt")
    assert not marker.exists()


def test_missing_file_and_none(toy, tmp_path: Path) -> None:
    net = toy.tiny_net(8)
    with pytest.raises(FileNotFoundError, match="`teacher_weights`: no file at"):
        load_pretrained(net, tmp_path / "nope.pt", config_key="teacher_weights")
    before = params(net)
    assert load_pretrained(net, None) is net and unchanged(net, before)
    with pytest.raises(ValueError, match=r"`source`: By 'torchvison', did you mean 'torchvision'"):
        load_pretrained(net, tmp_path / "nope.pt", source="torchvison")


def test_safetensors_file(toy, tmp_path: Path) -> None:
    safetensors = pytest.importorskip("safetensors.torch")
    trained = toy.tiny_net(8, seed=0)
    safetensors.save_file(trained.state_dict(), str(tmp_path / "model.safetensors"))
    net = load_pretrained(toy.tiny_net(8, seed=1), tmp_path / "model.safetensors")
    assert unchanged(net, trained.state_dict())


def test_timm_layout_with_imagenet_head(tmp_path: Path) -> None:
    timm = pytest.importorskip("timm")
    kwargs = {"img_size": 32, "patch_size": 8, "depth": 1}
    imagenet = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=1000, **kwargs)
    torch.save(imagenet.state_dict(), tmp_path / "vit.pth")
    net = build_network("timm:vit_tiny_patch16_224", num_classes=2, **kwargs)
    load_pretrained(net, tmp_path / "vit.pth", source="timm")  # timm's classifier ("head") skipped: 1000 vs 2
    assert torch.equal(net.pos_embed, imagenet.pos_embed) and net.head.weight.shape == (2, 192)
    with pytest.raises(ValueError, match=r"shape mismatches \[head\.weight"):
        load_pretrained(net, tmp_path / "vit.pth")  # source="state_dict" knows no head: strict


def test_torchvision_source_names_the_biased_shortcut(tmp_path: Path) -> None:
    torchvision = pytest.importorskip("torchvision")
    from monai.networks.nets import ResNet

    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "r18.pth")
    biased = ResNet("basic", [2, 2, 2, 2], [64, 128, 256, 512], spatial_dims=2, conv1_t_stride=2, num_classes=1000)
    with pytest.raises(ValueError, match=r"3 missing keys \[layer2\.0\.downsample\.0\.bias.*build_network"):
        load_pretrained(biased, tmp_path / "r18.pth", source="torchvision")


@pytest.mark.parametrize("source", ["state_dict", "torchvision"])
def test_a_torch_file_named_safetensors_is_read_as_what_it_is(tmp_path: Path, caplog, source: str) -> None:
    """Issue 15, case 20: safetensors stopped with "header too large" on a pickle named ``.safetensors``."""
    trained = build_network("resnet18", num_classes=2)
    torch.save(trained.state_dict(), tmp_path / "resnet18.safetensors")
    with caplog.at_level(logging.WARNING):
        net = load_pretrained(
            build_network("resnet18", num_classes=2), tmp_path / "resnet18.safetensors", source=source,
            config_key="teacher_weights",
        )  # fmt: skip
    assert unchanged(net, trained.state_dict())
    assert (
        "`teacher_weights`: " in caplog.text and "named like a safetensors file but holds a torch file" in caplog.text
    )


def test_a_safetensors_file_of_another_name_is_read_and_a_file_of_neither_kind_refused(toy, tmp_path: Path) -> None:
    safetensors = pytest.importorskip("safetensors.torch")
    trained = toy.tiny_net(8, seed=0)
    safetensors.save_file(trained.state_dict(), str(tmp_path / "model.pth"))
    assert unchanged(load_pretrained(toy.tiny_net(8, seed=1), tmp_path / "model.pth"), trained.state_dict())
    (tmp_path / "junk.safetensors").write_bytes(b"not weights at all")
    with pytest.raises(ValueError, match=r"`student_weights`: .*junk.safetensors is neither a safetensors file nor"):
        load_pretrained(toy.tiny_net(8), tmp_path / "junk.safetensors", config_key="student_weights")
