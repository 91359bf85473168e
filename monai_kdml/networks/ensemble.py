"""The deployable model: an ensemble of the small students, kept apart from the training machinery."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import cast

import torch
import torch.nn.functional as F
from monai.utils import look_up_option
from torch import Tensor, nn

__all__ = ["StudentEnsemble", "check_combine", "combine_student_logits", "unwrap_module"]

_COMBINE_MODES = ("mean", "vote")


def check_combine(combine: str, key: str = "combine") -> str:
    """``combine`` when it is ``"mean"`` or ``"vote"`` (MONAI's look-up suggests the closest otherwise).

    Raises:
        ValueError: naming ``key``.
    """
    try:
        return str(look_up_option(combine, _COMBINE_MODES))
    except ValueError as err:
        raise ValueError(f"`{key}`: {err}") from None


def combine_student_logits(logits: list[Tensor], combine: str = "mean", eps: float = 1e-8) -> Tensor:
    """Fuse per-student logits into ensemble logits whose softmax is the ensemble's class probability.

    - ``mean``: ``log(mean_k softmax(z_k))``, computed as ``logsumexp_k(log_softmax(z_k)) - log K`` (stays finite).
    - ``vote``: ``log(max(fraction of students voting for each class, eps))``.

    Returning log-probabilities keeps the MONAI convention that a network outputs logits: the usual
    ``Activations(softmax=True)`` post-transform turns them into the ensemble probability, exactly.

    Args:
        logits: ``K`` tensors of one shape ``(B, C, *spatial)``; dim 1 holds the classes.
        combine: ``"mean"`` or ``"vote"``.
        eps: floor of the vote fraction before the log.

    Returns:
        Ensemble logits of the input shape.
    """
    stacked = torch.stack(logits, dim=0).float()
    if combine == "mean":
        return torch.logsumexp(F.log_softmax(stacked, dim=2), dim=0) - math.log(len(logits))
    if combine == "vote":
        votes = F.one_hot(stacked.argmax(dim=2), stacked.shape[2]).movedim(-1, 2).float()
        return torch.log(votes.mean(dim=0).clamp_min(eps))
    raise ValueError("unknown combine mode: expected 'mean' or 'vote'.")


def unwrap_module(module: nn.Module) -> nn.Module:
    """The plain module under ``DistributedDataParallel``/``DataParallel`` or ``torch.compile`` wrappers."""
    while True:
        if isinstance(module, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            module = cast(nn.Module, module.module)
        elif hasattr(module, "_orig_mod"):  # torch.compile's OptimizedModule
            module = cast(nn.Module, module._orig_mod)
        else:
            return module


class StudentEnsemble(nn.Module):
    """The students as one network: ``forward`` returns ensemble logits (see :func:`combine_student_logits`).

    It holds the plain student modules (DDP/compile wrappers are removed), so its ``state_dict`` loads into a bundle's
    ``network_def`` built on any machine, and it is ``torch.jit.script``-able for deployment.

    Args:
        students: ``K >= 1`` classification or segmentation networks with outputs of one shape ``(B, C, *spatial)``.
        combine: ``"mean"`` (average class probabilities, the default) or ``"vote"`` (majority vote).

    Example::

        ensemble = StudentEnsemble([s0, s1], combine="mean")
        prob = torch.softmax(ensemble(x), dim=1)  # mean of the students' probabilities
    """

    def __init__(self, students: Sequence[nn.Module], combine: str = "mean") -> None:
        super().__init__()
        if len(students) < 1:
            raise ValueError("`students` must hold at least one network.")
        self.students = nn.ModuleList([unwrap_module(s) for s in students])
        self.combine: str = check_combine(combine)

    def forward(self, x: Tensor) -> Tensor:
        return self.fuse(self.member_logits(x))

    @torch.jit.export
    def fuse(self, logits: list[Tensor]) -> Tensor:
        """The ensemble's logits from the students' logits (what evaluators call to avoid a second pass)."""
        return combine_student_logits(logits, self.combine)

    @torch.jit.export
    def member_logits(self, x: Tensor) -> list[Tensor]:
        """Each student's logits, in order (for disagreement and per-student reports)."""
        outputs: list[Tensor] = []
        for student in self.students:
            outputs.append(student(x))
        return outputs
