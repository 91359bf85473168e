"""The GPU fast paths shared by :class:`~monai_kdml.engines.KDMLTrainer` and :class:`~monai_kdml.engines.KDMLEvaluator`:
the mixed-precision dtype (and whether it needs a grad scaler) and the ``channels_last`` memory format.

Both go through PyTorch's and MONAI's own mechanisms: the autocast dtype travels in MONAI's ``amp_kwargs`` (the
keyword arguments of ``torch.autocast``), the memory format is ``Module.to(memory_format=...)`` and
``Tensor.contiguous(memory_format=...)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from monai_kdml.networks.precision import parse_dtype

__all__ = ["AMP_DTYPES", "channels_last_input", "needs_grad_scaler", "resolve_amp", "to_channels_last"]

AMP_DTYPES = ("auto", "bfloat16", "float16")
"""Values of ``amp_dtype`` (aliases such as ``"bf16"``/``"fp16"`` or a ``torch.dtype`` are accepted too)."""


def _parse_amp_dtype(value: torch.dtype | str | None) -> torch.dtype | None:
    """``None`` for ``"auto"``/``None``, else bfloat16 or float16; anything else names ``amp_dtype``."""
    if value is None or (isinstance(value, str) and value.lower() == "auto"):
        return None
    try:
        dtype = parse_dtype(value, "amp_dtype")
    except ValueError:
        dtype = None
    if dtype not in (torch.bfloat16, torch.float16):
        raise ValueError(f"`amp_dtype` must be one of {list(AMP_DTYPES)}, got {value!r}.")
    return dtype


def resolve_amp(
    amp: bool,
    amp_dtype: torch.dtype | str | None,
    amp_kwargs: Mapping[str, Any] | None,
    device: torch.device,
) -> tuple[bool, dict[str, Any]]:
    """Whether autocast runs, and the ``torch.autocast`` keyword arguments (MONAI's ``amp_kwargs``) with its dtype.

    Autocast runs on CUDA only: CPU autocast (bfloat16) is slower than float32 on most CPUs, so ``amp`` is ignored
    there. ``amp_dtype="auto"`` (or ``None``) takes ``amp_kwargs["dtype"]`` when given, else bfloat16 where the GPU
    computes in it natively (``torch.cuda.is_bf16_supported(including_emulation=False)``: Ampere and later), else
    float16.

    Args:
        amp: the engine's ``amp`` flag.
        amp_dtype: ``"auto"``, ``"bfloat16"`` or ``"float16"`` (or a ``torch.dtype``).
        amp_kwargs: further ``torch.autocast`` arguments; a ``"dtype"`` entry must agree with ``amp_dtype``.
        device: the engine's device.

    Returns:
        ``(use_amp, amp_kwargs)``; ``amp_kwargs`` holds ``"dtype"`` when ``use_amp``.

    Raises:
        ValueError: an ``amp_dtype`` that is not one of :data:`AMP_DTYPES`, or one that contradicts
            ``amp_kwargs["dtype"]``.
    """
    kwargs = dict(amp_kwargs or {})
    dtype = _parse_amp_dtype(amp_dtype)  # validated on every device, so a typo fails on a CPU test run too
    given = kwargs.get("dtype")
    if dtype is not None and given is not None and given != dtype:
        raise ValueError(f"`amp_dtype`={amp_dtype!r} contradicts `amp_kwargs`['dtype']={given!r}; give one of them.")
    use_amp = bool(amp) and device.type == "cuda"
    if use_amp:
        if dtype is None:
            dtype = given
        if dtype is None:
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16
        kwargs["dtype"] = dtype
    return use_amp, kwargs


def needs_grad_scaler(use_amp: bool, amp_kwargs: Mapping[str, Any]) -> bool:
    """A grad scaler is needed for float16 autocast only: bfloat16 has float32's exponent range, so its gradients
    do not underflow (and skipping the scaler saves its per-step host-device synchronisation)."""
    return use_amp and amp_kwargs.get("dtype", torch.float16) == torch.float16


def _memory_format(ranks: set[int], name: str) -> torch.memory_format | None:
    if 4 in ranks and 5 in ranks:
        raise ValueError(
            f"`channels_last`: {name} has both 2-D (4-D weights) and 3-D (5-D weights) convolutions; "
            "one memory format cannot serve both, so leave `channels_last` off."
        )
    return torch.channels_last if 4 in ranks else torch.channels_last_3d if 5 in ranks else None


def to_channels_last(networks: Sequence[nn.Module], names: Sequence[str]) -> None:
    """Convert each network's convolution weights, in place, to ``channels_last`` (2-D networks) or
    ``channels_last_3d`` (3-D networks) with ``Module.to(memory_format=...)``; networks without any are left alone.

    Raises:
        ValueError: a network mixing 2-D and 3-D convolutions, naming it.
    """
    for network, name in zip(networks, names, strict=True):
        fmt = _memory_format({p.dim() for p in network.parameters()}, name)
        if fmt is not None:
            network.to(memory_format=fmt)


def channels_last_input(x: Any) -> Any:
    """A 4-D tensor in ``channels_last``, a 5-D one in ``channels_last_3d`` (a copy only when not already in it);
    anything else (e.g. a list of images) as it is. The values are unchanged, only their order in memory."""
    if isinstance(x, torch.Tensor) and x.dim() in (4, 5):
        return x.contiguous(memory_format=torch.channels_last if x.dim() == 4 else torch.channels_last_3d)
    return x
