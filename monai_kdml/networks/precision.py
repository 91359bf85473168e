"""Run a frozen network in lower precision while everything around it stays float32.

A large frozen teacher only runs forward passes, so its parameters can live in bfloat16 (half the memory) and its
matrix products run in bfloat16 where the hardware supports it; the losses still see float32 logits.
:func:`run_in_dtype` does this in place with two forward hooks, so the same module object works in the trainer, the
evaluator and in checkpoints (its ``state_dict`` keys are unchanged; its values are in the new dtype).

Example::

    run_in_dtype(teacher.requires_grad_(False).eval(), torch.bfloat16)
    logits = teacher(images)  # images cast to bfloat16 on the way in, logits back to float32 on the way out
"""

from __future__ import annotations

from typing import Any

import torch
from monai.utils import look_up_option
from torch import nn

__all__ = ["parse_dtype", "run_in_dtype"]

_DTYPES: dict[str, torch.dtype] = {
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "float32": torch.float32,
    "fp32": torch.float32,
}
_HOOKS_ATTR = "_kdml_dtype_hooks"


def parse_dtype(value: torch.dtype | str | None, name: str = "teacher_dtype") -> torch.dtype | None:
    """A floating dtype from ``torch.bfloat16``, ``"bfloat16"``/``"bf16"``, ``"float16"``/``"fp16"``, ... or ``None``.

    Raises:
        ValueError: not one of these, naming ``name`` (with a suggestion).
    """
    if value is None or (isinstance(value, torch.dtype) and value in _DTYPES.values()):
        return value
    if isinstance(value, str):
        try:
            dtype: torch.dtype = look_up_option(value.lower().removeprefix("torch."), _DTYPES)
            return dtype
        except ValueError as err:
            raise ValueError(f"`{name}`: {err}") from None
    raise ValueError(f"`{name}` must be one of {sorted(_DTYPES)} or None, got {value!r}.")


def _cast(x: Any, dtype: torch.dtype, only_from: torch.dtype | None = None) -> Any:
    if isinstance(x, torch.Tensor):
        if x.is_floating_point() and (only_from is None or x.dtype == only_from):
            return x.to(dtype)
        return x
    if isinstance(x, dict):
        return {k: _cast(v, dtype, only_from) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_cast(v, dtype, only_from) for v in x)
    return x


def run_in_dtype(network: nn.Module, dtype: torch.dtype | str) -> nn.Module:
    """Cast ``network`` to ``dtype`` in place; its forward then takes any float input and returns float32.

    Parameters and floating buffers are cast (BatchNorm statistics included); a forward pre-hook casts floating
    inputs to ``dtype`` and a forward hook casts outputs in ``dtype`` back to float32 (nested lists/dicts too, e.g.
    detection heads). Calling it again replaces the hooks; ``dtype=float32`` undoes it (values keep the rounding).
    Meant for frozen networks: gradients through bfloat16 weights are not what training wants.

    Args:
        network: the module to convert (changed in place).
        dtype: e.g. ``torch.bfloat16`` or ``"bf16"``.

    Returns:
        ``network`` itself.
    """
    low = parse_dtype(dtype, "dtype")
    if low is None:
        raise ValueError("`dtype` must be a floating dtype, got None.")
    for handle in getattr(network, _HOOKS_ATTR, ()):
        handle.remove()
    network.to(low)
    if low == torch.float32:
        setattr(network, _HOOKS_ATTR, ())
        return network

    def cast_inputs(
        _module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        return _cast(args, low), _cast(kwargs, low)

    def cast_outputs(_module: nn.Module, _args: tuple[Any, ...], output: Any) -> Any:
        return _cast(output, torch.float32, only_from=low)

    handles = (
        network.register_forward_pre_hook(cast_inputs, with_kwargs=True),
        network.register_forward_hook(cast_outputs),
    )
    setattr(network, _HOOKS_ATTR, handles)
    return network
