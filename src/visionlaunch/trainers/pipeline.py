"""The batch contract shared by every loader backend: uint8 NCHW in, normalised float NCHW out, augmented
on whole batches on the training device."""

from __future__ import annotations

import torch

from visionlaunch.config import AugmentConfig
from visionlaunch.datasets import BatchAugment, BatchMix
from visionlaunch.datasets.stats import normalization_tensors, normalize_with


class BatchPipeline:
    def __init__(self, augment: AugmentConfig, mean, std, device: torch.device, seed: int,
                 channels_last: bool = False, dtype: torch.dtype = torch.float32, loader_augments: bool = False,
                 resized_crop=None):
        self.augment = BatchAugment(crop_padding=augment.crop_padding, flip=augment.flip, cutout=augment.cutout)
        self.mixer = BatchMix(mixup_alpha=augment.mixup_alpha, cutmix_alpha=augment.cutmix_alpha)
        self.mean, self.std = tuple(mean), tuple(std)
        self._mean, self._std = normalization_tensors(self.mean, self.std, device)  # once, not per batch
        self.channels_last = channels_last
        self.dtype = dtype  # float32, or the half type of mixed precision (data.half_inputs)
        # The ffcv backend augments inside its own pipeline; augmenting again here would do it twice.
        self.loader_augments = loader_augments
        # data.image_size with the tensor backend: the random-resized crop of whole batches, before the rest.
        self.resized_crop = resized_crop
        # A generator on the batch's device: augmentation draws never touch the global RNG, so they are
        # reproducible and independent of what else consumes random numbers. It is per rank (seeded with the
        # rank), so checkpoints save it per rank: see state_dict.
        self.generator = torch.Generator(device=device).manual_seed(seed)

    def _layout(self, images: torch.Tensor) -> torch.Tensor:
        return images.contiguous(memory_format=torch.channels_last) if self.channels_last else images

    def train(self, images: torch.Tensor) -> torch.Tensor:
        if self.resized_crop is not None:
            images = self.resized_crop.batch(images, self.generator)
        if self.augment.enabled and not self.loader_augments:
            images = self.augment(images, self.generator)
        return self._layout(normalize_with(images, self._mean, self._std, self.dtype))

    def train_targets(self, images: torch.Tensor, labels: torch.Tensor, num_classes: int
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """A training batch ready for the model, and its targets: the labels, or with mixup/cutmix the mixed
        batch and its class probabilities."""
        images = self.train(images)
        if not self.mixer.enabled:
            return images, labels
        images, targets = self.mixer(images, labels, num_classes, self.generator)
        return self._layout(images), targets

    def eval(self, images: torch.Tensor) -> torch.Tensor:
        return self._layout(normalize_with(images, self._mean, self._std, self.dtype))

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
