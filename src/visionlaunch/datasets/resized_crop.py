"""Random-resized crop (the training view of data.image_size), one meaning for every loader backend.

A crop box covers a fraction of the image's area drawn uniformly from `scale` and has an aspect ratio drawn
log-uniformly from `ratio`, at a uniform position; it is resized (bilinear) to size x size. This is torchvision's
RandomResizedCrop, with its ten attempts drawn at once for a whole batch: a sample takes its first box that fits
the image, or the whole image when none does (for the square stored images and a ratio range around 1, the
whole image is torchvision's fallback too).

* tensor backend: `ResizedCrop.batch` crops a whole uint8 batch on its device with one affine grid sample.
* torch backend: `ResizedCropDataset` draws the same kind of box per sample and crops it with torchvision's
  transforms v2 (`resized_crop`, antialiased), in the DataLoader workers.
* ffcv backend: FFCV's RandomResizedCropRGBImageDecoder with the same scale and ratio (ffcv_builders/loader.py).

The interpolation differs slightly: the batched grid sample does not antialias; it never needs to much, since a
crop of the stored square (image_size / 0.875) is shrunk by at most 0.875.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

ATTEMPTS = 10
RATIO = (3 / 4, 4 / 3)


def draw_boxes(n: int, height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float],
               generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """(n, 4) int64 boxes (top, left, box height, box width). Always the same number of draws, so a generator
    that is saved and restored (checkpoints) gives the same boxes again."""
    area = height * width
    u = torch.rand(4, n, ATTEMPTS, generator=generator, device=device, dtype=torch.float64)
    target = area * (scale[0] + (scale[1] - scale[0]) * u[0])
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * u[1])
    w = torch.sqrt(target * aspect).round().long()
    h = torch.sqrt(target / aspect).round().long()
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.long().argmax(dim=1, keepdim=True)  # the first attempt that fits (0 when none does)
    found = fits.any(dim=1)
    pick = lambda t: t.gather(1, first).squeeze(1)  # noqa: E731
    h = torch.where(found, pick(h), torch.full_like(found, height, dtype=torch.long))
    w = torch.where(found, pick(w), torch.full_like(found, width, dtype=torch.long))
    top = (pick(u[2]) * (height - h + 1)).floor().long().clamp(max=height - 1)
    left = (pick(u[3]) * (width - w + 1)).floor().long().clamp(max=width - 1)
    top = torch.where(found, top, torch.zeros_like(top))
    left = torch.where(found, left, torch.zeros_like(left))
    return torch.stack([top, left, h, w], dim=1)


@dataclass(frozen=True)
class ResizedCrop:
    size: int
    scale: tuple[float, float] = (0.25, 1.0)
    ratio: tuple[float, float] = RATIO

    def batch(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Crop every image of a uint8 (or float) NCHW batch to its own random box, resized to size x size."""
        n, _, height, width = images.shape
        boxes = draw_boxes(n, height, width, self.scale, self.ratio, generator, images.device).to(torch.float32)
        top, left, h, w = boxes.unbind(1)
        # Output pixel centres spread evenly over the box, in grid_sample's [-1, 1] coordinates (align_corners=False).
        theta = torch.zeros(n, 2, 3, device=images.device)
        theta[:, 0, 0] = w / width
        theta[:, 0, 2] = (2 * left + w) / width - 1
        theta[:, 1, 1] = h / height
        theta[:, 1, 2] = (2 * top + h) / height - 1
        grid = F.affine_grid(theta, [n, images.shape[1], self.size, self.size], align_corners=False)
        out = F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
        if images.dtype == torch.uint8:
            return out.round_().clamp_(0, 255).to(torch.uint8)
        return out.to(images.dtype)

    def sample(self, image: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """One CHW image, cropped with torchvision's transforms v2."""
        from torchvision.transforms.v2 import functional as TF

        top, left, h, w = draw_boxes(1, image.shape[-2], image.shape[-1], self.scale, self.ratio, generator)[0].tolist()
        return TF.resized_crop(image, top, left, h, w, [self.size, self.size], antialias=True)


class ResizedCropDataset(Dataset):
    """uint8 images, each returned as a fresh random-resized crop (the torch backend's training set).

    The draws come from a generator of this process, seeded from torch.initial_seed(): in DataLoader workers that
    is the worker's own seed (drawn from the loader's seeded generator), in the main process (num_workers=0) the
    run's seed; the global random stream (dropout) is never touched.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, crop: ResizedCrop):
        self.images, self.labels, self.crop = images, labels, crop
        self._generator: torch.Generator | None = None
        self._pid = -1

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        if self._pid != os.getpid():  # a new worker process: its own stream
            self._generator = torch.Generator().manual_seed(torch.initial_seed() % 2**63)
            self._pid = os.getpid()
        return self.crop.sample(self.images[i], self._generator), self.labels[i]
