"""How much the students disagree: a diversity measure for the student ensemble.

Mutual learning pulls the students together; an ensemble only helps while they still differ. This module measures
that difference on validation data so it can be logged next to accuracy.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from ignite.exceptions import NotComputableError
from ignite.metrics import Metric
from ignite.metrics.metric import reinit__is_reduced, sync_all_reduce

__all__ = ["StudentDisagreement", "student_disagreement"]


def student_disagreement(student_logits: Sequence[torch.Tensor]) -> torch.Tensor:
    r"""Mean total-variation distance of each student's prediction to the students' mean prediction.

    .. math::
        D = \frac{1}{K} \sum_{k=1}^{K} \mathrm{TV}(p_k, \bar p), \quad
        \mathrm{TV}(p, q) = \frac{1}{2} \sum_c |p_c - q_c|, \quad
        p_k = \mathrm{softmax}(z_k), \quad \bar p = \frac{1}{K} \sum_k p_k

    ``D`` is 0 when all students agree and at most ``1 - 1/K``, reached when each student puts all its mass on a
    different class (needs ``C >= K``).

    Args:
        student_logits: K tensors of logits, each (B, C) or dense (B, C, *spatial); dim 1 is the class dim.

    Returns:
        Per-sample (per-position for dense inputs) disagreement, shape (B,) or (B, *spatial).

    Raises:
        ValueError: no students, shapes differ, or fewer than 2 dims.

    Example:
        >>> a, b = torch.tensor([[10.0, -10.0]]), torch.tensor([[-10.0, 10.0]])
        >>> student_disagreement([a, b])  # opposite certain students: 1 - 1/2
        tensor([0.5000])
    """
    if len(student_logits) == 0:
        raise ValueError("`student_logits` is empty: need the logits of at least one student.")
    shape = student_logits[0].shape
    if len(shape) < 2:
        raise ValueError(f"`student_logits` must be (B, C) or (B, C, *spatial), got shape {tuple(shape)}.")
    for k, logits in enumerate(student_logits):
        if logits.shape != shape:
            raise ValueError(f"`student_logits[{k}]` has shape {tuple(logits.shape)}, student 0 has {tuple(shape)}.")
    probs = torch.stack([torch.softmax(logits.float(), dim=1) for logits in student_logits])  # (K, B, C, *)
    mean_prob = probs.mean(dim=0, keepdim=True)
    total_variation = 0.5 * (probs - mean_prob).abs().sum(dim=2)  # (K, B, *)
    return total_variation.mean(dim=0)


class StudentDisagreement(Metric):
    """Epoch average of :func:`student_disagreement` over all samples (and positions, for dense outputs).

    ``update`` takes the K students' logits (a sequence of (B, C, *) tensors), e.g. from
    :class:`monai_kdml.metrics.classification.StudentLogitsOutput`. Sums are all-reduced across DDP ranks.

    Args:
        output_transform: maps ``engine.state.output`` to the sequence of student logits.
        device: device of the running sums.
    """

    def __init__(self, output_transform: Callable = lambda x: x, device: str | torch.device = "cpu") -> None:
        super().__init__(output_transform=output_transform, device=device, skip_unrolling=True)

    @reinit__is_reduced
    def reset(self) -> None:
        self._sum = torch.tensor(0.0, dtype=torch.float64, device=self._device)
        self._num = torch.tensor(0, dtype=torch.long, device=self._device)

    @reinit__is_reduced
    def update(self, output: Sequence[torch.Tensor]) -> None:
        """Add the disagreement of one batch of student logits."""
        values = student_disagreement(output).detach()
        self._sum += values.sum().to(device=self._device, dtype=torch.float64)
        self._num += values.numel()

    @sync_all_reduce("_sum:SUM", "_num:SUM")
    def compute(self) -> float:
        """Mean disagreement since the last ``reset``."""
        if self._num.item() == 0:
            raise NotComputableError("StudentDisagreement must have at least one example before it can be computed.")
        return (self._sum / self._num).item()
