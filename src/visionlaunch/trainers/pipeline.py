"""The batch contract shared by every loader backend: uint8 NCHW in, normalised float NCHW out, augmented
on whole batches on the training device."""

from __future__ import annotations

import torch

from visionlaunch.config import AugmentConfig
from visionlaunch.datasets import BatchAugment, normalize


class BatchPipeline:
    def __init__(self, augment: AugmentConfig, mean, std, device: torch.device, seed: int):
        self.augment = BatchAugment(crop_padding=augment.crop_padding, flip=augment.flip, cutout=augment.cutout)
        self.mean, self.std = tuple(mean), tuple(std)
        # A generator on the batch's device: augmentation draws never touch the global RNG, so they are
        # reproducible and independent of what else consumes random numbers.
        self.generator = torch.Generator(device=device).manual_seed(seed)

    def train(self, images: torch.Tensor) -> torch.Tensor:
        if self.augment.enabled:
            images = self.augment(images, self.generator)
        return normalize(images, self.mean, self.std)

    def eval(self, images: torch.Tensor) -> torch.Tensor:
        return normalize(images, self.mean, self.std)
