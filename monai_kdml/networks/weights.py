"""Initialise a network from weights users already have: a torchvision or timm file, or any checkpoint.

One rule for every file: read it safely (``torch.load(weights_only=True)``, or safetensors), take the state dict out of
a checkpoint wrapper, rename keys (a documented prefix map, then the source's own naming), check every name and shape
against the network, and only then load -- a mismatch raises a ``ValueError`` listing the first offending keys and
leaves the network untouched (never a partial load).

Sources (``source=``):

- ``"state_dict"``: keys already named as in the network (after ``key_map``).
- ``"torchvision"``: a torchvision ``resnet18/34/50`` or ``densenet121`` state dict onto the MONAI ResNet/DenseNet of
  :func:`monai_kdml.networks.build_network` (torchvision layout). ResNet names are identical; DenseNet layers gain
  MONAI's ``.layers`` level and ``classifier`` becomes ``class_layers.out``.
- ``"timm"``: timm's own layout (what ``timm_model.state_dict()`` saves) onto a ``timm:`` network.

The classifier head (``fc`` / ``class_layers.out`` / timm's ``pretrained_cfg["classifier"]``, or ``head=`` for any
source) is loaded only when its shapes match, else it keeps its random init and the log says so: ImageNet's 1000
classes rarely are the task's.

Example::

    net = build_network("resnet50", num_classes=2)
    load_pretrained(net, "resnet50-0676ba61.pth", source="torchvision")  # fc (1000 classes) stays random
    load_pretrained(net, "ssl_run.ckpt", key_map={"module.": "", "backbone.": ""}, strict=False)
"""

from __future__ import annotations

import logging
import pickle
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.networks.nets import DenseNet, ResNet
from monai.utils import StrEnum, look_up_option
from torch import Tensor, nn

from monai_kdml.networks.ensemble import unwrap_module

__all__ = ["CHECKPOINT_KEYS", "WeightsSource", "apply_key_map", "load_pretrained", "read_state_dict"]

logger = logging.getLogger(__name__)

CHECKPOINT_KEYS = ("state_dict", "model", "network", "teacher")
"""Checkpoint entries that may hold the state dict (PyTorch Lightning, timm/MONAI ``model``, bundles)."""

_SHOWN = 5  # keys listed per kind of mismatch
_DENSE_LAYER = re.compile(r"^(.*denselayer\d+)\.(norm|relu|conv)\.?([12])\.(\w+)$")  # norm1. and legacy norm.1.


class WeightsSource(StrEnum):
    """How the file's parameter names relate to the network's (see the module docstring)."""

    STATE_DICT = "state_dict"
    TORCHVISION = "torchvision"
    TIMM = "timm"


def read_state_dict(
    weights: str | Path | Mapping[str, Any], checkpoint_key: str | None = None, config_key: str = "weights"
) -> dict[str, Tensor]:
    """The state dict in a weights file (or an already loaded checkpoint dict).

    ``.safetensors`` files are read with safetensors; anything else with ``torch.load(weights_only=True)``, which
    refuses pickles that would construct arbitrary objects or run code. A checkpoint dict is unwrapped through
    ``checkpoint_key``, or else through the one entry of :data:`CHECKPOINT_KEYS` it holds (repeatedly: Lightning's
    ``{"state_dict": ...}`` inside ``{"model": ...}`` works).

    Args:
        weights: a file path, or a mapping already in memory.
        checkpoint_key: the entry holding the state dict, when the file holds several networks.
        config_key: the config key quoted in errors.

    Raises:
        FileNotFoundError: no file at ``weights``.
        ValueError: a refused or unreadable file, a missing ``checkpoint_key``, no or several candidate entries.
    """
    where = f"`{config_key}`: {weights}" if isinstance(weights, (str, Path)) else f"`{config_key}`"
    obj = _read_file(Path(weights), where, config_key) if isinstance(weights, (str, Path)) else weights
    if checkpoint_key is not None:
        if not isinstance(obj, Mapping) or not isinstance(obj.get(checkpoint_key), Mapping):
            keys = sorted(obj) if isinstance(obj, Mapping) else type(obj).__name__
            raise ValueError(f"{where} has no state dict under `checkpoint_key`='{checkpoint_key}' (entries: {keys}).")
        obj = obj[checkpoint_key]
    while not (isinstance(obj, Mapping) and obj and all(isinstance(v, Tensor) for v in obj.values())):
        if not isinstance(obj, Mapping) or not obj:
            raise ValueError(f"{where} holds no tensors (a {type(obj).__name__}), so no weights to load.")
        found = [k for k in CHECKPOINT_KEYS if isinstance(obj.get(k), Mapping)]
        if len(found) != 1:
            what = f"several networks {found}" if found else f"no state dict under any of {list(CHECKPOINT_KEYS)}"
            raise ValueError(f"{where} holds {what} (entries: {sorted(map(str, obj))}); choose with `checkpoint_key`.")
        obj = obj[found[0]]
    return dict(obj)


def _read_file(path: Path, where: str, config_key: str) -> Any:
    """Read by content, not by name: a ``torch.save`` file named ``.safetensors`` (or the reverse) is read as what it
    is, with a WARNING naming the file; a file that is neither is refused in one line."""
    if not path.is_file():
        raise FileNotFoundError(f"`{config_key}`: no file at {path}.")
    kind = _file_format(path)
    named = "safetensors" if path.suffix == ".safetensors" else "torch"
    if kind is None and named == "safetensors":
        raise ValueError(f"{where} is neither a safetensors file nor a torch.save file (its first bytes fit neither).")
    if kind is not None and kind != named:
        logger.warning("%s: named like a %s file but holds a %s file; read as the latter.", where, named, kind)
    if kind == "safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise ModuleNotFoundError(f"{where}: reading a safetensors file needs the package `safetensors`.") from None
        try:
            return load_file(str(path))
        except Exception as err:  # safetensors' own error type (SafetensorError) is not importable everywhere
            raise ValueError(f"{where} is not a readable safetensors file: {err}") from None
    try:
        with path.open("rb") as f:  # a file object: torch.load hands a path named .safetensors to safetensors
            return torch.load(f, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(
            f"{where} was refused: it is not a plain weights file (torch.load(weights_only=True) would have to run "
            f"code or build arbitrary objects, e.g. a whole saved module). Save `network.state_dict()` instead. "
            f"({str(err).splitlines()[0]})"
        ) from None
    except (RuntimeError, EOFError, OSError) as err:
        raise ValueError(f"{where} is not a readable torch.save file: {err}") from None


def _file_format(path: Path) -> str | None:
    """``"torch"`` (a zip or a pickle, as ``torch.save`` writes), ``"safetensors"`` (an 8-byte header length, then
    JSON), or ``None``."""
    with path.open("rb") as f:
        head = f.read(9)
    if head.startswith((b"PK\x03\x04", b"\x80")):
        return "torch"
    if len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < path.stat().st_size:
        return "safetensors"
    return None


def apply_key_map(state: Mapping[str, Tensor], key_map: Mapping[str, str] | None) -> dict[str, Tensor]:
    """Rename keys by prefix: each ``old -> new`` pair, in order, replaces a leading ``old`` of every key once.

    ``{"module.": "", "backbone.": ""}`` turns ``module.backbone.conv1.weight`` into ``conv1.weight``.

    Raises:
        ValueError: two keys renamed to the same name.
    """
    renamed: dict[str, Tensor] = {}
    for key, value in state.items():
        new = key
        for old, repl in (key_map or {}).items():
            if new.startswith(old):
                new = repl + new[len(old) :]
        if new in renamed:
            raise ValueError(f"`key_map`: two keys are renamed to '{new}' (the second is '{key}').")
        renamed[new] = value
    return renamed


def _from_torchvision(state: dict[str, Tensor], network: nn.Module) -> tuple[dict[str, Tensor], tuple[str, ...]]:
    """torchvision names -> MONAI names, and the network's head prefix; refuses layouts torchvision weights misfit."""
    if isinstance(network, ResNet):
        strides, kernel = tuple(network.conv1.stride), tuple(network.conv1.kernel_size)
        if set(strides) != {2} or set(kernel) != {7} or network.no_max_pool:
            raise ValueError(
                f"source='torchvision' needs torchvision's ResNet stem (7x7 stride-2 conv1 and max-pool), got "
                f"conv1 {kernel} stride {strides}, max-pool {not network.no_max_pool}: build the network with "
                "monai_kdml.networks.build_network or conv1_t_stride=2, bias_downsample=False."
            )
        return state, ("fc.",)
    if isinstance(network, DenseNet):
        renamed = {}
        for key, value in state.items():
            key = _DENSE_LAYER.sub(r"\1.layers.\2\3.\4", key)
            renamed["class_layers.out." + key[len("classifier.") :] if key.startswith("classifier.") else key] = value
        return renamed, ("class_layers.out.",)
    raise ValueError(
        f"source='torchvision' maps onto MONAI ResNet or DenseNet networks, got {type(network).__name__}; "
        "use source='state_dict' with a `key_map`."
    )


def _timm_head(network: nn.Module) -> tuple[str, ...]:
    cfg = getattr(network, "pretrained_cfg", None) or getattr(network, "default_cfg", None) or {}
    head = cfg.get("classifier") if isinstance(cfg, Mapping) else None
    if not head:
        return ()
    return tuple(f"{h}." for h in ((head,) if isinstance(head, str) else head))


def _listed(keys: Sequence[str]) -> str:
    more = f", ... {len(keys) - _SHOWN} more" if len(keys) > _SHOWN else ""
    return "[" + ", ".join(keys[:_SHOWN]) + more + "]"


def _common_prefix_hint(file_keys: Sequence[str], net_keys: Sequence[str]) -> str:
    firsts = {k.split(".", 1)[0] for k in file_keys}
    if len(firsts) == 1 and "." in file_keys[0] and not any(k.startswith(f"{next(iter(firsts))}.") for k in net_keys):
        prefix = f"{next(iter(firsts))}."
        return f" Every key of the file starts with '{prefix}': try key_map={{'{prefix}': ''}}."
    return ""


def load_pretrained(
    network: nn.Module,
    weights: str | Path | Mapping[str, Any] | None,
    source: WeightsSource | str = WeightsSource.STATE_DICT,
    key_map: Mapping[str, str] | None = None,
    strict: bool = True,
    checkpoint_key: str | None = None,
    head: str | Sequence[str] | None = None,
    config_key: str = "weights",
    name: str = "network",
) -> nn.Module:
    """Fill ``network`` (in place) from a weights file; see the module docstring for sources and the rule.

    Args:
        network: the network to fill (DDP/compile wrappers are looked through).
        weights: a file path (``torch.save`` or ``.safetensors``) or a loaded mapping; ``None`` returns the network
            unchanged (so configs can default ``teacher_weights`` to ``null``).
        source: ``"state_dict"``, ``"torchvision"`` or ``"timm"``.
        key_map: prefix renames applied to the file's keys first (see :func:`apply_key_map`).
        strict: every network parameter must be in the file and every file tensor must be used (head aside).
            ``False`` allows missing and unused keys (logged; e.g. a backbone into a detector); shapes must always
            match, and at least one tensor must load.
        checkpoint_key: the checkpoint entry holding the state dict (see :func:`read_state_dict`).
        head: key prefixes (network names) loaded only when their shapes match; default: the source's classifier.
        config_key: the config key quoted in errors.
        name: what the network is, for errors ("teacher", "student_0").

    Returns:
        ``network`` itself, so a config can write ``load_pretrained(@teacher_def, @teacher_weights)``.

    Raises:
        FileNotFoundError: no file.
        ValueError: a refused file, unknown ``source``, a layout the source cannot map, or keys/shapes that do not
            fit (the first few of each listed); the network is then unchanged.
    """
    if weights is None:
        return network
    where = f"`{config_key}`: {weights}" if isinstance(weights, (str, Path)) else f"`{config_key}`"
    try:
        kind = WeightsSource(look_up_option(source, WeightsSource))
    except ValueError as err:
        raise ValueError(f"`source`: {err}") from None
    target = unwrap_module(network)
    state = apply_key_map(read_state_dict(weights, checkpoint_key, config_key), key_map)
    heads: tuple[str, ...] = ()
    if kind == WeightsSource.TORCHVISION:
        state, heads = _from_torchvision(state, target)
    elif kind == WeightsSource.TIMM:
        heads = _timm_head(target)
    if head is not None:
        heads = (head,) if isinstance(head, str) else tuple(head)
    own = target.state_dict()

    def in_head(key: str) -> bool:
        return any(key.startswith(h) for h in heads)

    mismatched = [
        f"{k}: file {tuple(v.shape)} vs network {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and v.shape != own[k].shape and not in_head(k)
    ]
    # BatchNorm fills in a missing counter itself (older torchvision files have none)
    missing = [k for k in own if k not in state and not in_head(k) and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own and not in_head(k)]
    loadable = {k: v for k, v in state.items() if k in own and v.shape == own[k].shape}
    if mismatched or (strict and (missing or unexpected)) or not loadable:
        problems = [f"{len(v)} {label} {_listed(v)}" for label, v in _problem_lists(missing, unexpected, mismatched)]
        hint = _common_prefix_hint(list(state), list(own)) if unexpected else ""
        if kind == WeightsSource.TORCHVISION:
            hint += " torchvision layout: build the network with monai_kdml.networks.build_network."
        raise ValueError(
            f"{where} does not hold weights for the {name} (source='{kind}'): "
            + ("; ".join(problems) or "no tensor matches")
            + f". Nothing was loaded.{hint}"
        )
    target.load_state_dict(loadable, strict=False)
    skipped = [k for k in own if in_head(k) and k not in loadable]
    logger.info("%s: loaded %d tensors into the %s (source=%s).", where, len(loadable), name, kind)
    if skipped:
        logger.info("%s: head %s kept its initialisation (shape differs or absent in the file).", where, skipped)
    if missing or unexpected:
        logger.warning(
            "%s: strict=False: %d %s parameters not in the file %s, %d file tensors unused %s.",
            *(where, len(missing), name, _listed(missing), len(unexpected), _listed(unexpected)),
        )
    return network


def _problem_lists(missing: list[str], unexpected: list[str], mismatched: list[str]) -> list[tuple[str, list[str]]]:
    labels = ("missing keys", "unexpected keys", "shape mismatches")
    return [(label, keys) for label, keys in zip(labels, (missing, unexpected, mismatched), strict=True) if keys]
