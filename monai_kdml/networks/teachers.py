"""Several frozen networks as one teacher: the distillation target is their mean class probability.

Typical use: the five folds of a model-zoo bundle, or a few models trained with different seeds. The ensemble's
``forward`` returns ``log(mean_m softmax(z_m))`` -- the convention of :class:`~monai_kdml.networks.StudentEnsemble` --
so ``softmax`` of it is exactly the members' mean probability and :class:`~monai_kdml.losses.KDMLLoss` distils to it.
With a temperature ``T != 1`` the losses soften that mean distribution as one teacher's, ``softmax(log(p_mean) / T)``
(not the mean of each member's softened probabilities). Works for ``(B, C)`` and dense ``(B, C, *spatial)`` logits.

Example::

    members = [build_network("resnet50") for _ in range(5)]
    teacher = TeacherEnsemble(members, weights=[f"fold{f}/models/model.pt" for f in range(5)])
    trainer = KDMLTrainer(..., teacher=teacher, teacher_mode="frozen", teacher_optimizer=None)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from monai_kdml.keys import teacher_member_name
from monai_kdml.networks.ensemble import combine_student_logits, unwrap_module
from monai_kdml.networks.weights import WeightsSource, load_pretrained

__all__ = ["TeacherEnsemble"]


class TeacherEnsemble(nn.Module):
    """Frozen member networks whose mean class probability is the teacher's prediction.

    Every member is put in eval mode with ``requires_grad=False``; :class:`~monai_kdml.engines.KDMLTrainer` accepts
    it only with ``teacher_mode="frozen"``, and :class:`~monai_kdml.engines.KDMLEvaluator` scores each member as
    ``teacher_<m>`` as well as the ensemble as ``teacher``.

    Args:
        members: ``M >= 1`` networks with outputs of one shape ``(B, C, *spatial)``.
        weights: optional file per member (``None`` entries keep a member as it is), each read with
            :func:`~monai_kdml.networks.load_pretrained` (strict: a file that does not fit raises ``ValueError``).
        source: the files' naming (``"state_dict"``, ``"torchvision"``, ``"timm"``).
        key_map: prefix renames for every file (e.g. ``{"module.": ""}``).
        checkpoint_key: the checkpoint entry holding each member's state dict (``None``: detected).

    Raises:
        ValueError: no members, one module given twice, or ``weights`` of another length than ``members``.
    """

    def __init__(
        self,
        members: Sequence[nn.Module],
        weights: Sequence[str | Path | None] | None = None,
        source: WeightsSource | str = WeightsSource.STATE_DICT,
        key_map: Mapping[str, str] | None = None,
        checkpoint_key: str | None = None,
    ) -> None:
        super().__init__()
        if isinstance(members, nn.Module) or len(members) < 1:
            raise ValueError("`members` must be a sequence of at least one network.")
        plain = [unwrap_module(m) for m in members]
        if len({id(m) for m in plain}) != len(plain):
            raise ValueError("`members`: one module object is given twice; build each member with its own call.")
        if weights is not None:
            if isinstance(weights, (str, Path)) or len(weights) != len(plain):
                raise ValueError(f"`weights` must list one file (or None) per member: {len(plain)} members.")
            for m, (member, path) in enumerate(zip(plain, weights, strict=True)):
                load_pretrained(
                    member,
                    path,
                    source=source,
                    key_map=key_map,
                    checkpoint_key=checkpoint_key,
                    config_key=f"weights[{m}]",
                    name=teacher_member_name(m),
                )
        self.members = nn.ModuleList(plain)
        self.requires_grad_(False)
        self.eval()

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C_in, *spatial)`` images -> ``log`` of the members' mean probability, ``(B, C, *spatial)``."""
        return self.fuse(self.member_logits(x))

    @torch.jit.export
    def fuse(self, logits: list[Tensor]) -> Tensor:
        """The ensemble's logits from the members' logits (what the evaluator calls to avoid a second pass)."""
        return combine_student_logits(logits, "mean")

    @torch.jit.export
    def member_logits(self, x: Tensor) -> list[Tensor]:
        """Each member's logits, in order."""
        outputs: list[Tensor] = []
        for member in self.members:
            outputs.append(member(x))
        return outputs
