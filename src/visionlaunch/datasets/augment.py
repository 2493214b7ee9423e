"""The training batch on its way to the model, on whole NCHW batches on their device (no per-sample Python).
`BatchPipeline` is the contract shared by every loader backend: uint8 NCHW in, normalised float NCHW out.

Augmentation means the usual per-image pipeline: random crop of the zero-padded image (a random translation in
[-p, p] with zero fill), a horizontal flip with probability 0.5, then cutout (one s x s zeroed square at a random
centre, clipped at the borders). Mixup (Zhang et al. 2018) and CutMix (Yun et al. 2019) pair each batch with a
seeded permutation of itself and lam ~ Beta(alpha, alpha); the targets become lam * onehot(y) + (1 - lam) *
onehot(y[perm]) (losses.py). With both alphas set, each batch uses one of the two, chosen with probability 1/2.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from visionlaunch.datasets.stats import normalization_tensors, normalize_with
from visionlaunch.errors import VisionlaunchError


def _count(value, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise VisionlaunchError(f"augment.{key} must be a whole number of pixels >= 0 (0 = off), got {value!r}.")
    return value


class BatchAugment:
    def __init__(self, crop_padding: int = 0, flip: bool = False, cutout: int = 0):
        self.crop_padding = _count(crop_padding, "crop_padding")
        self.flip = bool(flip)
        self.cutout = _count(cutout, "cutout")

    @property
    def enabled(self) -> bool:
        return bool(self.crop_padding or self.flip or self.cutout)

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Augment a uint8 or float NCHW batch into a new tensor of its dtype, shape and device. `generator` lives
        on the batch's device; the same generator state gives the same output."""
        if images.dim() != 4:
            raise ValueError(f"BatchAugment expects an NCHW batch, got shape {tuple(images.shape)}")
        if self.crop_padding or self.flip:
            images = self._translate_flip(images, generator)
        if self.cutout:
            images = self._cutout(images, generator)
        return images

    def _translate_flip(self, images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        n, dev, p = images.shape[0], images.device, self.crop_padding
        # The draws, in this order whatever the device (checkpoints restore the generator mid-run).
        flipped = torch.rand(n, generator=generator, device=dev) < 0.5 if self.flip else None
        # Offsets index the padded image: shift = offset - p in [-p, p].
        offsets = torch.randint(0, 2 * p + 1, (2, n, 1), generator=generator, device=dev) if p else None
        if dev.type == "cpu":
            return self._translate_flip_windows(images, flipped, offsets)
        return self._translate_flip_gathers(images, flipped, offsets)

    def _translate_flip_gathers(self, images: torch.Tensor, flipped, offsets) -> torch.Tensor:
        """Accelerators: two gathers (rows, then columns) move whole batches with no loop over samples."""
        n, c, h, w = images.shape
        dev, p = images.device, self.crop_padding
        # For each sample, the source row of every output row and the source column of every output column.
        rows = torch.arange(h, device=dev).expand(n, h)
        cols = torch.arange(w, device=dev).expand(n, w)
        if flipped is not None:
            cols = torch.where(flipped[:, None], (w - 1) - cols, cols)
        if offsets is not None:
            rows = rows + offsets[0]
            cols = cols + offsets[1]
            images = F.pad(images, (p, p, p, p))
        out = images.gather(2, rows[:, None, :, None].expand(n, c, h, images.shape[3]))
        return out.gather(3, cols[:, None, None, :].expand(n, c, h, w))

    def _translate_flip_windows(self, images: torch.Tensor, flipped, offsets) -> torch.Tensor:
        """CPUs: the same result as the gathers, faster there (a 64-bit index per pixel is costly on a CPU).
        Every possible crop of the padded batch is a strided view; indexing it by (sample, dy, dx) copies each
        sample's crop in one pass; the flipped ones are then mirrored."""
        n, c, h, w = images.shape
        p = self.crop_padding
        out = images
        if offsets is not None:
            padded = F.pad(images, (p, p, p, p))
            sn, sc, sh, sw = padded.stride()
            crops = padded.as_strided((n, 2 * p + 1, 2 * p + 1, c, h, w), (sn, sh, sw, sc, sh, sw))
            out = crops[torch.arange(n), offsets[0, :, 0], offsets[1, :, 0]]
        if flipped is not None:
            out = torch.where(flipped[:, None, None, None], out.flip(3), out)
        return out

    def _cutout(self, images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        n, _, h, w = images.shape
        dev, s = images.device, self.cutout
        cy = torch.randint(0, h, (n, 1), generator=generator, device=dev)
        cx = torch.randint(0, w, (n, 1), generator=generator, device=dev)
        y0, x0 = cy - s // 2, cx - s // 2
        ys, xs = torch.arange(h, device=dev), torch.arange(w, device=dev)
        in_rows = (ys >= y0) & (ys < y0 + s)  # (n, h)
        in_cols = (xs >= x0) & (xs < x0 + s)  # (n, w)
        return images.masked_fill(in_rows[:, None, :, None] & in_cols[:, None, None, :], 0)


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

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, num_classes: int,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Mixed normalised float NCHW images and (N, num_classes) float32 target probabilities."""
        n, dev = len(images), images.device
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


class BatchPipeline:
    """Augment (unless the loader did), crop, normalise and mix a training batch; normalise an evaluation one.
    `augment` is the config's augment section (crop_padding, flip, cutout, mixup_alpha, cutmix_alpha)."""

    def __init__(self, augment, mean, std, device: torch.device, seed: int,
                 channels_last: bool = False, dtype: torch.dtype = torch.float32, loader_augments: bool = False,
                 resized_crop=None):
        self.augment = BatchAugment(crop_padding=augment.crop_padding, flip=augment.flip, cutout=augment.cutout)
        self.mixer = BatchMix(mixup_alpha=augment.mixup_alpha, cutmix_alpha=augment.cutmix_alpha)
        self._mean, self._std = normalization_tensors(tuple(mean), tuple(std), device)  # once, not per batch
        self.channels_last = channels_last
        self.dtype = dtype  # float32, or the half type of mixed precision (data.half_inputs)
        self.loader_augments = loader_augments  # the ffcv backend augments in its own pipeline: not twice
        self.resized_crop = resized_crop  # data.image_size with the tensor backend: cropped here, first
        self.epoch = 0  # set_epoch: the crop's size in progressive resizing
        # Augmentation draws never touch the global RNG, so they are reproducible whatever else draws. Seeded
        # per rank, so checkpoints save it per rank.
        self.generator = torch.Generator(device=device).manual_seed(seed)

    def _layout(self, images: torch.Tensor) -> torch.Tensor:
        return images.contiguous(memory_format=torch.channels_last) if self.channels_last else images

    def train(self, images: torch.Tensor) -> torch.Tensor:
        if self.resized_crop is not None:
            images = self.resized_crop.batch(images, self.generator, self.resized_crop.size_at(self.epoch))
        if self.augment.enabled and not self.loader_augments:
            images = self.augment(images, self.generator)
        return self._layout(normalize_with(images, self._mean, self._std, self.dtype))

    def set_epoch(self, epoch: int) -> None:
        """The epoch the next training batches belong to (counted from 0): it sets the random-resized crop's size."""
        self.epoch = epoch

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
