"""Mixup (Zhang et al. 2018) and CutMix (Yun et al. 2019) on whole training batches, with soft targets.

Each batch is paired with a seeded permutation of itself and a mixing weight lam ~ Beta(alpha, alpha):
mixup blends the two images, lam * x + (1 - lam) * x[perm]; cutmix pastes a box of x[perm] covering a 1 - lam
share of the image (lam is then set to the exact share the clipped box leaves). The targets become
lam * onehot(y) + (1 - lam) * onehot(y[perm]), for the cross-entropy on class probabilities (losses.py).
With both alphas set, each batch uses one of the two, chosen with probability 1/2.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from visionlaunch.errors import VisionlaunchError


def _alpha(value, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0 or math.isinf(value):
        raise VisionlaunchError(f"augment.{key} must be a finite number >= 0 (0 = off; typical: 0.2 for mixup, 1.0 "
                                f"for cutmix), got {value!r}.")
    return float(value)


class BatchMix:
    def __init__(self, mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0):
        self.mixup_alpha = _alpha(mixup_alpha, "mixup_alpha")
        self.cutmix_alpha = _alpha(cutmix_alpha, "cutmix_alpha")

    @property
    def enabled(self) -> bool:
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0

    def __repr__(self) -> str:
        return f"BatchMix(mixup_alpha={self.mixup_alpha}, cutmix_alpha={self.cutmix_alpha})"

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, num_classes: int,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Mixed float NCHW images and (N, num_classes) float32 target probabilities."""
        if not images.is_floating_point():
            raise ValueError("BatchMix mixes normalised float images; got dtype " + str(images.dtype))
        n, _, h, w = images.shape
        dev = images.device
        onehot = torch.zeros(n, num_classes, device=dev).scatter_(1, labels.long().view(-1, 1), 1.0)
        if not self.enabled or n < 2:
            return images, onehot
        # One seeded draw from the batch's generator drives the numpy Beta sample (torch's Beta has no generator
        # argument): the mixing is reproducible and restored with the generator's state on resume.
        draws = torch.rand(4, generator=generator, device=dev).tolist()
        use_cutmix = self.cutmix_alpha > 0 and (self.mixup_alpha == 0 or draws[0] < 0.5)
        alpha = self.cutmix_alpha if use_cutmix else self.mixup_alpha
        lam = float(np.random.default_rng(int(draws[1] * 2**53)).beta(alpha, alpha))
        perm = torch.randperm(n, generator=generator, device=dev)
        if use_cutmix:
            images, lam = _paste_box(images, perm, lam, draws[2], draws[3])
        else:
            images = lam * images + (1.0 - lam) * images[perm]
        return images, lam * onehot + (1.0 - lam) * onehot[perm]


def _paste_box(images: torch.Tensor, perm: torch.Tensor, lam: float, ry: float, rx: float
               ) -> tuple[torch.Tensor, float]:
    """Paste a box of the permuted batch, side ratio sqrt(1 - lam), centred at (ry, rx) of the image, clipped."""
    _, _, h, w = images.shape
    ratio = math.sqrt(1.0 - lam)
    bh, bw = int(h * ratio), int(w * ratio)
    cy, cx = int(ry * h), int(rx * w)
    y0, y1 = max(cy - bh // 2, 0), min(cy + bh - bh // 2, h)
    x0, x1 = max(cx - bw // 2, 0), min(cx + bw - bw // 2, w)
    out = images.clone()
    out[:, :, y0:y1, x0:x1] = images[perm, :, y0:y1, x0:x1]
    return out, 1.0 - (y1 - y0) * (x1 - x0) / (h * w)
