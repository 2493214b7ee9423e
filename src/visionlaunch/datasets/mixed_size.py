"""Photos of every size (data.image_size): each decoded once to a fixed-size stored square, then cropped to
image_size x image_size: at random for training, in the centre for evaluation.

Decoding is the one decoder's (decode.py: EXIF orientation applied, alpha dropped keeping the colour beneath, 16-bit
scaled), in RGB (grayscale repeats its channel); then each image is resized the shorter side to the stored
size image_size / 0.875 (73 px for 64, 256 for 224: the usual resize-then-crop ratio) and keeps its centre square;
the ends of a non-square photo's longer side never reach a crop. Images smaller than that are upscaled; more than
data.max_upscale times is refused, naming the file.

The random-resized crop is torchvision's RandomResizedCrop (area share drawn uniformly from `scale`, aspect ratio
log-uniformly from 3/4..4/3, ten attempts, else the whole image) with one meaning for every backend: the tensor
backend crops whole batches on their device with one affine grid sample (`ResizedCrop.batch`, not antialiased,
which a shrink of at most 0.875 hardly needs), the torch backend crops each sample with torchvision's transforms v2
in the DataLoader workers (`ResizedCropDataset`), the ffcv backend uses FFCV's RandomResizedCropRGBImageDecoder.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from torch.utils.data import TensorDataset
# Imported once, in the parent: importing it in each DataLoader worker on its first crop failed under load with a
# KeyError inside torchvision's own imports (seen once in test_out_of_core).
from torchvision.transforms.v2 import functional as TF
from tqdm.auto import tqdm

from visionlaunch.datasets.decode import decode_image, with_channels
from visionlaunch.datasets.imageset import ImageSet
from visionlaunch.errors import VisionlaunchError

CROP_FRACTION = 0.875  # image_size / stored size
ATTEMPTS = 10
RATIO = (3 / 4, 4 / 3)


def stored_size(image_size: int) -> int:
    return int(round(image_size / CROP_FRACTION))


def _rgb(payload, display: str, stored: int) -> Image.Image:
    # A JPEG may be decoded at a reduced scale that still covers `stored` (the result is shrunk to it anyway).
    return Image.fromarray(with_channels(decode_image(payload, display, reduce_to=stored), 3), "RGB")


def _square(rgb: Image.Image, stored: int) -> np.ndarray:
    """Centre square of the shorter side, resized to stored x stored (antialiased when shrinking): uint8 CHW."""
    square = ImageOps.fit(rgb, (stored, stored), method=Image.Resampling.BICUBIC)
    return np.asarray(square).transpose(2, 0, 1)


def eval_geometry(image_size: int, eval_size: int | None = None, ratio: float = CROP_FRACTION) -> tuple[int, int]:
    """(side of evaluation's centre crop of the stored square, side that crop is resized to): data.eval_crop_ratio
    of the stored square, resized to data.eval_image_size (FFCV's CenterCropRGBImageDecoder). With the defaults the
    crop is the centre image_size square itself, not resized."""
    return max(1, int(round(ratio * stored_size(image_size)))), eval_size or image_size


def resize_square(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (N)CHW squares resized to size x size (bilinear, antialiased when shrinking), uint8; unchanged when
    already that size."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    batch = images if images.dim() == 4 else images[None]
    out = torch.empty((*batch.shape[:2], size, size), dtype=torch.uint8)
    for i in range(0, len(batch), 256):  # in chunks: a whole test set in float32 would be 4x its size
        part = F.interpolate(batch[i:i + 256].float(), size=(size, size), mode="bilinear", align_corners=False,
                             antialias=True)
        out[i:i + 256] = part.round_().clamp_(0, 255).to(torch.uint8)
    return out if images.dim() == 4 else out[0]


def evaluation_view(payload, display: str, image_size: int, eval_size: int | None = None,
                    ratio: float = CROP_FRACTION) -> np.ndarray:
    """One file as evaluation sees it (uint8 3 x S x S, S the eval size): for predictions on new files, pixel for
    pixel what the test set's decoding, centre crop and resize give."""
    stored = stored_size(image_size)
    side, size = eval_geometry(image_size, eval_size, ratio)
    offset = (stored - side) // 2
    square = _square(_rgb(payload, display, stored), stored)
    crop = np.ascontiguousarray(square[:, offset:offset + side, offset:offset + side])
    return resize_square(torch.from_numpy(crop), size).numpy()


def decode_squares(items: Sequence, image_size: int, max_upscale: float, *, progress: bool = True,
                   desc: str = "decoding images") -> tuple[np.ndarray, str]:
    """Decode `items` (each with `.display` and `.payload`: bytes or a path) to uint8 (N, 3, S, S), S the stored
    size; and a note on the images that were upscaled (empty when none)."""
    stored = stored_size(image_size)
    out = np.empty((len(items), 3, stored, stored), dtype=np.uint8)
    upscaled = []  # (shorter side, file) of every image enlarged
    for i, item in enumerate(tqdm(items, desc=desc, unit=" img", disable=not progress)):
        rgb = _rgb(item.payload, item.display, stored)
        short = min(rgb.size)
        if short * max_upscale < stored:
            w, h = rgb.size
            raise VisionlaunchError(
                f"{item.display} is {w}x{h} pixels (width x height): too small for data.image_size={image_size}, "
                f"which resizes the shorter side to {stored} px, {stored / short:.1f} times its size, and "
                f"data.max_upscale={max_upscale:g} allows at most {max_upscale:g}. Remove the image, use a smaller "
                "data.image_size, or raise data.max_upscale to accept it upscaled.")
        out[i] = _square(rgb, stored)
        if short < stored:
            upscaled.append((short, item.display))
    if not upscaled:
        return out, ""
    short, display = min(upscaled, key=lambda u: u[0])  # the first of the smallest
    return out, (f"{len(upscaled)} of {len(items)} images upscaled to {stored} px on the shorter side (smallest: "
                 f"{short} px, {display})")


def center_crop(ds: ImageSet, image_size: int, resize_to: int | None = None) -> ImageSet:
    """The centre image_size x image_size square of every stored image (resized to `resize_to` when given): the
    evaluation view."""
    _, h, w = ds.shape
    if min(h, w) < image_size:  # a negative offset would slice a strip of the image, not a square
        raise ValueError(f"cannot centre-crop {h}x{w} images to {image_size} px")
    top, left = (h - image_size) // 2, (w - image_size) // 2
    images = ds.images[:, :, top:top + image_size, left:left + image_size].contiguous()
    if resize_to:
        images = resize_square(images, resize_to)
    return dataclasses.replace(ds, images=images)  # keeps labels, classes, superclasses, provenance


def draw_boxes(n: int, height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float],
               generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """(n, 4) int64 boxes (top, left, box height, box width), each the first of its ATTEMPTS draws that fits, else
    the whole image. Always the same number of draws, so a restored generator (checkpoints) gives the same boxes."""
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


@dataclasses.dataclass(frozen=True)
class SizeRamp:
    """Progressive resizing (the resolution: section): the training crop's side in each epoch, FFCV's
    get_resolution of train_imagenet.py. `start` px up to epoch `start_epoch`, `end` px from epoch `end_epoch` on,
    between them the linear interpolation rounded to the nearest multiple of `step` (numpy's rounding: halves to
    even). Epochs are counted from 0, as FFCV counts them. A function of the epoch alone, so a resumed run and any
    number of processes crop at the same size."""
    start: int
    end: int
    start_epoch: int
    end_epoch: int
    step: int = 32

    def size_at(self, epoch: int) -> int:
        if epoch <= self.start_epoch:
            return self.start
        if epoch >= self.end_epoch:
            return self.end
        interp = np.interp([epoch], [self.start_epoch, self.end_epoch], [self.start, self.end])[0]
        return int(np.round(interp / self.step)) * self.step


@dataclasses.dataclass(frozen=True)
class ResizedCrop:
    size: int
    scale: tuple[float, float] = (0.25, 1.0)
    ramp: SizeRamp | None = None  # progressive resizing: the size of each epoch, in place of `size`

    def size_at(self, epoch: int) -> int:
        """The crop's side in epoch `epoch` (counted from 0)."""
        return self.size if self.ramp is None else self.ramp.size_at(epoch)

    def batch(self, images: torch.Tensor, generator: torch.Generator | None = None, size: int | None = None
              ) -> torch.Tensor:
        """Crop every image of a uint8 (or float) NCHW batch to its own random box, resized to size x size
        (`size`: the epoch's, default self.size)."""
        size = size or self.size
        n, _, height, width = images.shape
        boxes = draw_boxes(n, height, width, self.scale, RATIO, generator, images.device).to(torch.float32)
        top, left, h, w = boxes.unbind(1)
        # Output pixel centres spread evenly over the box, in grid_sample's [-1, 1] coordinates (align_corners=False).
        theta = torch.zeros(n, 2, 3, device=images.device)
        theta[:, 0, 0] = w / width
        theta[:, 0, 2] = (2 * left + w) / width - 1
        theta[:, 1, 1] = h / height
        theta[:, 1, 2] = (2 * top + h) / height - 1
        grid = F.affine_grid(theta, [n, images.shape[1], size, size], align_corners=False)
        out = F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
        if images.dtype == torch.uint8:
            return out.round_().clamp_(0, 255).to(torch.uint8)
        return out.to(images.dtype)

    def sample(self, image: torch.Tensor, generator: torch.Generator | None = None, size: int | None = None
               ) -> torch.Tensor:
        """One CHW image, cropped with torchvision's transforms v2 (`size`: the epoch's, default self.size)."""
        size = size or self.size
        top, left, h, w = draw_boxes(1, image.shape[-2], image.shape[-1], self.scale, RATIO, generator)[0].tolist()
        return TF.resized_crop(image, top, left, h, w, [size, size], antialias=True)


class ResizedCropDataset(TensorDataset):
    """uint8 images, each returned as a fresh random-resized crop (the torch backend's training set), indexed with
    (sample index, epoch) pairs: the epoch sets the crop's size (progressive resizing), and it has to travel with
    each index because persistent workers keep the dataset object they were started with.

    The draws come from a generator of this process, seeded from torch.initial_seed(): in DataLoader workers that
    is the worker's own seed (drawn from the loader's seeded generator), in the main process (num_workers=0) the
    run's seed; the global random stream (dropout) is never touched.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, crop: ResizedCrop):
        super().__init__(images, labels)
        self.crop, self._generator, self._pid = crop, None, -1

    def __getitem__(self, key: tuple[int, int]):
        i, epoch = key
        if self._pid != os.getpid():  # a new worker process: its own stream
            self._generator = torch.Generator().manual_seed(torch.initial_seed() % 2**63)
            self._pid = os.getpid()
        image, label = super().__getitem__(i)
        return self.crop.sample(image, self._generator, self.crop.size_at(epoch)), label
