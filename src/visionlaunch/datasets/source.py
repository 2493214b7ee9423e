"""Indexed sources: a dataset split that decodes one sample when asked, for data that does not live in memory.

A source has a length, `labels` (numpy int64), `classes`, `name`, `source` (where the images come from), `shape`
(C, H, W of every decoded sample) and `decode(i)` -> uint8 (H, W, C) numpy array. Its per-sample index is held in
numpy arrays, never in lists of Python objects: a DataLoader worker that touches a Python object writes to its
reference count, so a list of N objects is copied page by page into every worker (pytorch#13246); a numpy array is
one object and stays shared.

`ArraySource` serves the canonical datasets (MNIST, CIFAR), which are small enough to read whole, over their
arrays; the ImageFolder source (folder_index.py) decodes one file per call. `Subset` and `CenterCrop` are views, so
the data's subsets, validation split and evaluation crop apply to a source as they do to an ImageSet.
`SampleDataset` is what the DataLoader workers of the out-of-core torch backend index. `decode_or_stand_in` is the
rule for a file that cannot be decoded when it is reached: named, and replaced by the next sample that decodes.
"""

from __future__ import annotations

import sys
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from visionlaunch.datasets.decode import UnreadableImage
from visionlaunch.datasets.imageset import ImageSet
from visionlaunch.datasets.mixed_size import ResizedCrop, resize_square
from visionlaunch.errors import VisionlaunchError


@runtime_checkable
class IndexedSource(Protocol):
    name: str
    source: str
    classes: list[str]
    labels: np.ndarray  # int64 (N,)
    shape: tuple[int, int, int]  # (C, H, W) of every decoded sample

    def __len__(self) -> int: ...

    def decode(self, i: int) -> np.ndarray: ...  # uint8 (H, W, C)


def decoded_bytes(ds) -> int:
    """Bytes of the split decoded as uint8 (N x C x H x W), known from its index without decoding a sample."""
    c, h, w = ds.shape
    return len(ds) * c * h * w


class ArraySource:
    """An ImageSet (already read, e.g. CIFAR's arrays) as an indexed source: `decode` is a view of one image.
    `streams=False`: the data cannot be read out of core at all (an archive, which is read whole into memory)."""

    def __init__(self, data: ImageSet, streams: bool = True):
        self.data, self.streams = data, streams
        self._images = data.images.permute(0, 2, 3, 1).numpy()  # (N, H, W, C) view of the NCHW tensor
        self.labels = data.labels.numpy()
        self.classes, self.name, self.source = list(data.classes), data.name, data.source
        self.shape = data.shape
        self.superclasses, self.superclass_of, self.unofficial = data.superclasses, data.superclass_of, data.unofficial

    def __len__(self) -> int:
        return len(self.labels)

    def decode(self, i: int) -> np.ndarray:
        return self._images[i]


class Subset:
    """The samples of `base` at `index` (int64 positions into it, or a bool mask), in that order."""

    def __init__(self, base, index):
        index = torch.as_tensor(index)
        index = torch.nonzero(index).flatten() if index.dtype == torch.bool else index
        self.base, self.index = base, index.numpy().astype(np.int64)
        self.labels = base.labels[self.index]
        self.classes, self.name, self.source, self.shape = base.classes, base.name, base.source, base.shape
        self.unofficial = getattr(base, "unofficial", ())

    def __len__(self) -> int:
        return len(self.index)

    def decode(self, i: int) -> np.ndarray:
        return self.base.decode(int(self.index[i]))

    def subset(self, index) -> Subset:
        return Subset(self.base, self.index[torch.as_tensor(index).numpy()])


def subset(ds, index):
    """`ds.subset(index)` for an ImageSet or a Subset, a Subset view of any other source."""
    return ds.subset(index) if hasattr(ds, "subset") else Subset(ds, index)


class CenterCrop:
    """The centre size x size square of every sample of `base` (the evaluation view of data.image_size)."""

    def __init__(self, base, size: int, resize_to: int | None = None):
        c, h, w = base.shape
        if min(h, w) < size:
            raise ValueError(f"cannot centre-crop {h}x{w} images to {size} px")
        self.base, self.size, self.resize_to = base, size, resize_to or size  # data.eval_image_size
        self.top, self.left = (h - size) // 2, (w - size) // 2
        self.labels, self.classes, self.name, self.source = base.labels, base.classes, base.name, base.source
        self.shape, self.unofficial = (c, self.resize_to, self.resize_to), getattr(base, "unofficial", ())

    def __len__(self) -> int:
        return len(self.base)

    def decode(self, i: int) -> np.ndarray:
        crop = self.base.decode(i)[self.top:self.top + self.size, self.left:self.left + self.size]
        if self.resize_to == self.size:
            return crop
        chw = torch.from_numpy(np.ascontiguousarray(crop)).permute(2, 0, 1)
        return resize_square(chw, self.resize_to).permute(1, 2, 0).numpy()


# A file that cannot be decoded is found out of core (and while a .beton is written from a folder) only when it is
# reached, maybe an hour into the work: it is then named in a WARNING and replaced by the next sample of the split
# that decodes (the same one in every epoch, on every process and after a resume), so the work goes on. This many
# unreadable samples in a row mean a damaged folder, not one bad file: that stops the work.
STAND_IN_LIMIT = 16


def decode_or_stand_in(source, index: int, warned: set[int]) -> tuple[np.ndarray, int]:
    """(pixels, the sample they are) for sample `index` of `source`: its own, or those of its stand-in. `warned`:
    the unreadable samples this process has named already (each is named once per process)."""
    first = None
    for k in range(min(STAND_IN_LIMIT, len(source))):
        j = (index + k) % len(source)
        try:
            pixels = source.decode(j)
        except UnreadableImage as exc:
            first = first or exc
            continue
        if first is not None and index not in warned:
            warned.add(index)
            print(f"WARNING: {first} Until then sample {j} of the split (its image and label) stands in for sample "
                  f"{index} wherever it is drawn.", file=sys.stderr, flush=True)
        return pixels, j
    raise VisionlaunchError(
        f"{min(STAND_IN_LIMIT, len(source))} images in a row cannot be decoded, from sample {index} of the split on: "
        f"{first} The folder looks damaged (an interrupted copy?): check it, e.g. copy it again, and rerun.")


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of one sample's random draws in one epoch: a function of (seed, epoch, sample index) only, so the
    draws are the same on any number of processes or workers, and after a resume."""
    x = (seed * 0x9E3779B97F4A7C15 + epoch * 0xBF58476D1CE4E5B9 + index * 0x94D049BB133111EB) % 2**64
    x ^= x >> 31  # one splitmix round: nearby (epoch, index) pairs get unrelated seeds
    x = (x * 0xBF58476D1CE4E5B9) % 2**64
    return (x ^ (x >> 29)) >> 1


class SampleDataset(torch.utils.data.Dataset):
    """What the out-of-core torch backend's DataLoader indexes with (sample index, epoch) pairs: one sample decoded
    to a uint8 CHW tensor and its label; for training with data.image_size, a random-resized crop (mixed_size's
    ResizedCrop) drawn from the sample's own generator, seeded by sample_seed."""

    def __init__(self, source: IndexedSource, seed: int, crop: ResizedCrop | None = None):
        self.source, self.seed, self.crop = source, seed, crop
        self.warned: set[int] = set()  # unreadable samples named by this process (each worker has its own)

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key: tuple[int, int]):
        index, epoch = key
        try:
            pixels, decoded = decode_or_stand_in(self.source, index, self.warned)
        except VisionlaunchError as exc:  # the DataLoader rebuilds a worker's error from its class and message:
            raise VisionlaunchError(str(exc)) from None  # one that any subclass's constructor may not take
        image = torch.from_numpy(np.require(pixels, requirements=("C", "W"))).permute(2, 0, 1)
        if self.crop is not None:
            generator = torch.Generator().manual_seed(sample_seed(self.seed, epoch, index))
            image = self.crop.sample(image, generator, self.crop.size_at(epoch))
        return image.contiguous(), int(self.source.labels[decoded])

