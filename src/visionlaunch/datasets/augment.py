"""Batched augmentation on whole NCHW batches, on whatever device the batch is on (no per-sample Python).

The same meaning as the usual per-image pipeline: random crop of the zero-padded image (= a random translation
in [-p, p] on both axes with zero fill), then a horizontal flip with probability 0.5, then cutout (one s x s
zeroed square at a random centre, clipped at the borders).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

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

    def __repr__(self) -> str:
        return f"BatchAugment(crop_padding={self.crop_padding}, flip={self.flip}, cutout={self.cutout})"

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Augment a batch (uint8 or float, NCHW); returns a new tensor of the same dtype, shape and device.

        `generator` must live on the batch's device; the same generator state gives the same output.
        """
        if not self.enabled:
            return images
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
