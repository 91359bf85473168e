"""Deployment files of a network: TorchScript, ONNX and a ``torch.export`` program, each checked against eager.

:func:`export_network` writes ``<stem>.ts`` (MONAI's :func:`~monai.networks.utils.convert_to_torchscript` and
:func:`~monai.data.save_net_with_metadata`, as ``ckpt_export`` does), ``<stem>.onnx`` (MONAI's
:func:`~monai.networks.utils.convert_to_onnx`, input ``image``, output ``pred``, a dynamic batch axis) and
``<stem>.pt2`` (:func:`torch.export.export` with a dynamic batch axis, :func:`torch.export.save`). Every file embeds
the bundle metadata (``metadata.json`` extra file, ONNX ``metadata_props``), is loaded back the way a user loads it
(``torch.jit.load``, an ``onnxruntime`` session, ``torch.export.load``) and run on a batch of another size than the
one it was traced with; the largest absolute difference from the eager network is logged, and one above the tolerance
raises. The ONNX file needs no monai-kdml, MONAI or torch to run.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

__all__ = [
    "EXPORT_FORMATS",
    "RUNTIMES",
    "ExportCheck",
    "OnnxNetwork",
    "check_runtime",
    "export_checkpoint",
    "export_network",
    "onnx_session",
    "trained_metadata",
]

logger = logging.getLogger(__name__)

EXPORT_FORMATS = ("ts", "onnx", "pt2")
"""File suffixes :func:`export_network` writes: TorchScript, ONNX, a ``torch.export`` program."""
RUNTIMES = ("torch", "onnx")
"""What runs a bundle's inference: the eager PyTorch network or its exported ONNX file in ONNX Runtime."""
INPUT_NAME, OUTPUT_NAME = "image", "pred"  # MONAI's network_data_format keys (``_meta_#network_data_format``)


@dataclass(frozen=True)
class ExportCheck:
    """One exported file and how far its output is from the eager network's on the same batch."""

    path: Path
    max_abs_diff: float


def onnx_session(path: str | Path, threads: int | None = None, providers: Sequence[str] | None = None) -> Any:
    """An ``onnxruntime.InferenceSession`` on ``path`` (CPU unless ``providers`` says otherwise).

    Args:
        path: the ``.onnx`` file.
        threads: intra-op threads (``None``: onnxruntime's default, one per core).
        providers: execution providers, e.g. ``["CUDAExecutionProvider", "CPUExecutionProvider"]``.

    Raises:
        ImportError: onnxruntime is missing, naming the extra that installs it.
    """
    try:
        import onnxruntime as ort
    except ImportError as error:
        raise ImportError('running an ONNX file needs onnxruntime: pip install "monai-kdml[deploy]"') from error
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=list(providers or ["CPUExecutionProvider"]))


def _metadata_bytes(meta: Mapping[str, Any] | None) -> dict[str, str]:
    return {} if meta is None else {"metadata.json": json.dumps(meta)}


def _write_torchscript(network: nn.Module, path: Path, example: Tensor, meta: Mapping[str, Any] | None) -> Any:
    from monai.data import save_net_with_metadata
    from monai.networks.utils import convert_to_torchscript

    with warnings.catch_warnings():  # torch 2.14 deprecates TorchScript; the file is written for existing users
        warnings.simplefilter("ignore", FutureWarning)
        scripted = convert_to_torchscript(network, inputs=[example])
        save_net_with_metadata(scripted, str(path.with_suffix("")), include_config_vals=False, meta_values=meta or {})
        return torch.jit.load(str(path))


def _write_onnx(
    network: nn.Module, path: Path, example: Tensor, meta: Mapping[str, Any] | None, extra: Mapping[str, str]
) -> Any:
    import onnx
    from monai.networks.utils import convert_to_onnx

    quiet = [logging.getLogger(name) for name in ("onnxscript", "onnx_ir")]  # INFO lines per rewrite rule
    levels = [logger.level for logger in quiet]
    for one in quiet:
        one.setLevel(logging.WARNING)
    try:
        model = convert_to_onnx(
            network,
            inputs=[example],
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=1024)},),
            use_trace=True,
            dynamo=True,
            verbose=False,
        )
    finally:
        for one, level in zip(quiet, levels, strict=True):
            one.setLevel(level)
    for key, value in {**_metadata_bytes(meta), **extra}.items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return onnx_session(path)


def _write_program(network: nn.Module, path: Path, example: Tensor, meta: Mapping[str, Any] | None) -> Any:
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.export.export(network, (example,), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(path), extra_files=_metadata_bytes(meta))
    return torch.export.load(str(path)).module()


def export_network(
    network: nn.Module,
    stem: str | Path,
    input_shape: Sequence[int],
    formats: Sequence[str] = EXPORT_FORMATS,
    meta: Mapping[str, Any] | None = None,
    onnx_metadata: Mapping[str, str] | None = None,
    atol: float = 1e-4,
    rtol: float = 1e-5,
    seed: int = 0,
) -> dict[str, ExportCheck]:
    """Write ``network`` in each of ``formats`` beside ``stem`` and check each file against the eager network.

    Args:
        network: a module taking one ``(B, C, *spatial)`` float tensor and returning one tensor (dicts are not
            exportable to ONNX by MONAI's tools: wrap them first).
        stem: path without suffix, e.g. ``models/ensemble``: writes ``models/ensemble.ts``, ``.onnx``, ``.pt2``.
        input_shape: ``(B, C, *spatial)`` of the example used to trace (``B >= 2``: torch.export fixes a batch of
            1); the check runs on batch ``B + 1``.
        formats: a subset of :data:`EXPORT_FORMATS`.
        meta: bundle metadata stored in every file (``metadata.json`` extra file, ONNX ``metadata_props``).
        onnx_metadata: more ONNX ``metadata_props`` (string values), e.g. what a decoder needs to read the output.
        atol, rtol: every output value must be within ``atol + rtol * |eager value|`` of eager (``rtol`` matters for
            outputs in pixels, such as boxes; probabilities are held to ``atol``).
        seed: seed of the random example and check inputs.

    Returns:
        Per format, the written path and its measured difference.

    Raises:
        ValueError: an unknown format, or a file whose output differs from eager by more than the tolerance.
    """
    unknown = sorted(set(formats) - set(EXPORT_FORMATS))
    if unknown:
        raise ValueError(f"unknown export format(s) {unknown}: choose from {list(EXPORT_FORMATS)}.")
    network = network.eval()
    generator = torch.Generator().manual_seed(seed)
    shape = [max(2, int(input_shape[0])), *(int(s) for s in input_shape[1:])]  # batch 1 would be specialised
    example = torch.rand(shape, generator=generator)
    check_input = torch.rand([shape[0] + 1, *shape[1:]], generator=generator)  # another batch size: dynamic axis
    with torch.no_grad():
        want = network(check_input).float().numpy()
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    results: dict[str, ExportCheck] = {}
    for fmt in formats:
        path = stem.with_name(f"{stem.name}.{fmt}")
        with torch.no_grad():
            if fmt == "ts":
                got = _write_torchscript(network, path, example, meta)(check_input).numpy()
            elif fmt == "pt2":
                got = _write_program(network, path, example, meta)(check_input).numpy()
            else:
                session = _write_onnx(network, path, example, meta, onnx_metadata or {})
                got = session.run([OUTPUT_NAME], {INPUT_NAME: check_input.numpy()})[0]
        error = np.abs(np.asarray(got, dtype=np.float64) - want)
        diff = float(error.max()) if want.size else 0.0
        logger.info("Exported %s: max |diff| from the eager network = %.3g (batch %d)", path, diff, shape[0] + 1)
        if not (error <= atol + rtol * np.abs(want)).all():
            raise ValueError(
                f"{path} differs from the eager network by up to {diff:.3g} (atol {atol:g}, rtol {rtol:g})"
            )
        results[fmt] = ExportCheck(path, diff)
    return results


def check_runtime(runtime: str) -> str:
    """``runtime`` if it is one of :data:`RUNTIMES`, else a ``ValueError`` naming the choices."""
    if runtime not in RUNTIMES:
        raise ValueError(f"`runtime` must be one of {list(RUNTIMES)}, got {runtime!r}.")
    return runtime


class OnnxNetwork(nn.Module):
    """An exported ``.onnx`` file run by ONNX Runtime, usable where a bundle expects its network.

    ``forward`` feeds the input tensor to the file's ``image`` input and returns its ``pred`` output as a float
    tensor on the input's device (no gradients). The session opens on the first call, so a configuration can build
    this module before the file is exported.

    Args:
        path: the ``.onnx`` file (e.g. written by :func:`export_network`).
        threads: ONNX Runtime intra-op threads (``None``: one per core).
        providers: ONNX Runtime execution providers (default: CPU).
    """

    def __init__(self, path: str | Path, threads: int | None = None, providers: Sequence[str] | None = None) -> None:
        super().__init__()
        self.path, self.threads, self.providers = Path(path), threads, providers
        self._session: Any = None

    def forward(self, images: Tensor) -> Tensor:
        if self._session is None:
            if not self.path.is_file():
                raise FileNotFoundError(
                    f"{self.path} does not exist: export it first (python -m monai.bundle run export ...)."
                )
            self._session = onnx_session(self.path, self.threads, self.providers)
        array = images.detach().float().cpu().numpy()
        out = self._session.run([OUTPUT_NAME], {INPUT_NAME: array})[0]
        return torch.from_numpy(np.ascontiguousarray(out)).to(images.device)


def trained_metadata(meta: Mapping[str, Any], image_size: int) -> dict[str, Any]:
    """A bundle's metadata with the input ``spatial_shape`` of the trained run (``[S, S]``, from its record)."""
    out = json.loads(json.dumps(dict(meta)))
    out["network_data_format"]["inputs"]["image"]["spatial_shape"] = [int(image_size), int(image_size)]
    return out


def export_checkpoint(
    network: nn.Module,
    ckpt_file: str | Path,
    stem: str | Path,
    image_size: int,
    meta: Mapping[str, Any] | None = None,
    formats: Sequence[str] = EXPORT_FORMATS,
    atol: float = 1e-4,
) -> dict[str, ExportCheck]:
    """Load ``ckpt_file`` (a state dict, e.g. a bundle's ``models/model.pt``) into ``network`` and export it.

    Writes ``<stem>.ts/.onnx/.pt2`` (see :func:`export_network`) and, with ``meta``, ``metadata.json`` beside them:
    the bundle's metadata with the trained input size, as MONAI's ``--meta_file`` for this run.

    Args:
        network: the bundle's ``network_def``.
        ckpt_file: its weights.
        stem: output path without suffix.
        image_size: the trained side ``S``; the example input is ``(2, C, S, S)`` (``C`` from ``meta``, else 3).
        meta: the bundle's metadata (``_meta_`` of its configuration).
        formats, atol: see :func:`export_network`.
    """
    state = torch.load(str(ckpt_file), map_location="cpu", weights_only=True)
    network.load_state_dict(state)
    channels = 3
    if meta is not None:
        meta = trained_metadata(meta, image_size)
        channels = int(meta["network_data_format"]["inputs"]["image"]["num_channels"])
        Path(stem).parent.mkdir(parents=True, exist_ok=True)
        (Path(stem).parent / "metadata.json").write_text(json.dumps(meta, indent=4))
    return export_network(network.cpu(), stem, (2, channels, image_size, image_size), formats, meta, atol=atol)
