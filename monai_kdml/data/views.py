"""Random views of a batch on its device: one per student, so peers that learn from each other still see different
images (a way to keep a student ensemble diverse; see ``KDMLTrainer(student_transform=...)``)."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["BatchAugment"]


class BatchAugment:
    """Per-sample random flips, 90-degree turns and intensity changes of a ``(B, C, *spatial)`` batch, drawn afresh
    on each call.

    The draws mirror MONAI's dictionary transforms of the bundles, applied sample by sample without a data loader:

    - ``RandFlip``: each spatial axis is flipped with probability ``flip_prob``;
    - ``RandRotate90``: with probability ``rotate90_prob`` the first two spatial axes are turned by ``k * 90``
      degrees, ``k`` uniform in 1..3 (square images only);
    - ``RandScaleIntensity`` / ``RandShiftIntensity``: with probability ``intensity_prob`` each,
      ``x * (1 + f)``, ``f ~ U[-scale, scale]``, and ``x + o``, ``o ~ U[-shift, shift]``;
    - ``RandAdjustContrast``: ``min + range * ((x - min) / range)^g`` per sample, ``g ~ U[gamma]``, with
      probability ``intensity_prob`` (``gamma=None``: off).

    Geometric draws move pixels, so give ``flip_prob = rotate90_prob = 0`` when the loss compares outputs position
    by position (segmentation, detection heads): only photometric changes then keep teacher and peers aligned.
    Random numbers come from torch's default CPU generator (seeded by ``set_determinism`` and
    :class:`~monai_kdml.handlers.EpochSeedHandler`, and saved in training checkpoints), so runs repeat exactly.

    Args:
        flip_prob: probability of flipping each spatial axis.
        rotate90_prob: probability of a 90/180/270-degree turn of the first two spatial axes.
        intensity_prob: probability of each intensity change.
        scale: largest relative intensity scaling.
        shift: largest intensity offset.
        gamma: ``(low, high)`` gamma range, or ``None``.

    Raises:
        ValueError: a probability outside [0, 1], a negative ``scale``/``shift``, or a gamma range not in ``(0, inf)``.

    Example::

        views = BatchAugment(flip_prob=0.5, rotate90_prob=0.5)
        x0, x1 = views(images), views(images)  # two independent random views
    """

    def __init__(
        self,
        flip_prob: float = 0.5,
        rotate90_prob: float = 0.5,
        intensity_prob: float = 0.5,
        scale: float = 0.1,
        shift: float = 0.05,
        gamma: tuple[float, float] | None = None,
    ) -> None:
        probabilities = {"flip_prob": flip_prob, "rotate90_prob": rotate90_prob, "intensity_prob": intensity_prob}
        for name, value in probabilities.items():
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"`{name}` must be in [0, 1], got {value}.")
        if scale < 0 or shift < 0:
            raise ValueError(f"`scale` and `shift` must be >= 0, got {scale} and {shift}.")
        if gamma is not None and not (len(gamma) == 2 and 0 < gamma[0] <= gamma[1]):
            raise ValueError(f"`gamma` must be (low, high) with 0 < low <= high, got {gamma}.")
        self.flip_prob, self.rotate90_prob, self.intensity_prob = flip_prob, rotate90_prob, intensity_prob
        self.scale, self.shift = scale, shift
        self.gamma = None if gamma is None else (float(gamma[0]), float(gamma[1]))

    def __call__(self, images: Tensor) -> Tensor:
        """A new random view of ``images`` ``(B, C, *spatial)`` (float), same shape, device and dtype."""
        if images.ndim < 3:
            raise ValueError(f"BatchAugment needs (B, C, *spatial) images, got shape {tuple(images.shape)}.")
        x = images.as_tensor() if hasattr(images, "as_tensor") else images
        batch, spatial = x.shape[0], x.ndim - 2
        out = x.clone()
        if self.flip_prob > 0:
            for axis in range(spatial):
                flip = torch.rand(batch) < self.flip_prob
                if flip.any():
                    index = flip.nonzero().flatten().to(x.device)
                    out[index] = out[index].flip(axis + 2)
        if self.rotate90_prob > 0 and spatial >= 2:
            if x.shape[2] != x.shape[3]:
                raise ValueError(f"90-degree turns need square images, got spatial shape {tuple(x.shape[2:])}.")
            turn = torch.rand(batch) < self.rotate90_prob
            ks = torch.randint(1, 4, (batch,))
            for k in (1, 2, 3):
                index = (turn & (ks == k)).nonzero().flatten().to(x.device)
                if index.numel():
                    out[index] = torch.rot90(out[index], k, dims=(2, 3))
        if self.intensity_prob > 0:
            shape = (batch,) + (1,) * (x.ndim - 1)
            on = (torch.rand(batch) < self.intensity_prob).float()
            factor = 1 + on * (torch.rand(batch) * 2 - 1) * self.scale
            on = (torch.rand(batch) < self.intensity_prob).float()
            offset = on * (torch.rand(batch) * 2 - 1) * self.shift
            out = out * factor.view(shape).to(out) + offset.view(shape).to(out)
            if self.gamma is not None:
                on = torch.rand(batch) < self.intensity_prob
                low, high = self.gamma
                g = torch.where(on, low + torch.rand(batch) * (high - low), torch.ones(batch)).view(shape).to(out)
                dims = tuple(range(1, x.ndim))
                lo, hi = out.amin(dim=dims, keepdim=True), out.amax(dim=dims, keepdim=True)
                span = (hi - lo).clamp_min(1e-7)
                out = ((out - lo) / span).clamp_min(0).pow(g) * span + lo
        return out
