"""export_network: three files, each with the metadata, each loaded back and checked against eager on another batch
size; a file outside the tolerance stops the export; OnnxNetwork runs a file where a bundle expects its network."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from torch import nn

from monai_kdml.networks.export import OnnxNetwork, check_runtime, export_network

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning", "ignore::FutureWarning")
META = {"network_data_format": {"inputs": {"image": {"num_channels": 3, "spatial_shape": [16, 16]}}}}


def tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.LogSoftmax(1))


def test_every_format_is_written_checked_and_carries_the_metadata(tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.INFO)
    net = tiny()
    checks = export_network(net, tmp_path / "net", (1, 3, 16, 16), meta=META)
    assert {fmt: c.path.name for fmt, c in checks.items()} == {"ts": "net.ts", "onnx": "net.onnx", "pt2": "net.pt2"}
    assert all(c.max_abs_diff <= 1e-4 for c in checks.values())
    assert caplog.text.count("max |diff| from the eager network") == 3 and "(batch 3)" in caplog.text
    x = torch.rand(7, 3, 16, 16)  # any batch: the batch axis is dynamic in every file
    with torch.no_grad():
        want = net(x)
        extra = {"metadata.json": ""}
        assert torch.allclose(torch.jit.load(str(tmp_path / "net.ts"), _extra_files=extra)(x), want, atol=1e-6)
        assert torch.allclose(torch.export.load(str(tmp_path / "net.pt2")).module()(x), want, atol=1e-6)
        assert torch.allclose(OnnxNetwork(tmp_path / "net.onnx")(x), want, atol=1e-5)
    assert json.loads(extra["metadata.json"]) == META
    import onnx

    props = {p.key: p.value for p in onnx.load(str(tmp_path / "net.onnx")).metadata_props}
    assert json.loads(props["metadata.json"]) == META


def test_a_file_outside_the_tolerance_stops_the_export(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"net.pt2 differs from the eager network by up to"):
        export_network(tiny(), tmp_path / "net", (2, 3, 16, 16), formats=("pt2",), atol=-1.0, rtol=0.0)
    with pytest.raises(ValueError, match="unknown export format"):
        export_network(tiny(), tmp_path / "net", (2, 3, 16, 16), formats=("tflite",))


def test_runtime_choice_and_a_missing_onnx_file_are_named(tmp_path: Path) -> None:
    assert check_runtime("onnx") == "onnx"
    with pytest.raises(ValueError, match=r"`runtime` must be one of \['torch', 'onnx'\], got 'trt'"):
        check_runtime("trt")
    with pytest.raises(FileNotFoundError, match=r"missing\.onnx does not exist: export it first"):
        OnnxNetwork(tmp_path / "missing.onnx")(torch.rand(1, 3, 8, 8))
