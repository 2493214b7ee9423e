"""The ffcv loader backend: an FFCV Loader behind the same contract as TensorLoader and TorchLoader.

Same contract: batches of (uint8 NCHW images, int64 labels) on the training device, `set_epoch(epoch,
start_batch)`, `len()`, `max_steps`. Same order: FFCV's own traversal orders are replaced by the epoch's seeded
permutation cut into rank shards (datasets/loaders.py), so the three backends visit the same samples in the
same order on every rank; FFCV's `distributed=True` would pad evaluation shards with repeated samples the way
DistributedSampler does, and counts some test images twice. A resumed epoch simply starts its order at
`start_batch`, so mid-epoch resume continues at the exact sample.

Different from the others: augmentation (translate, flip, cutout) runs inside the FFCV pipeline, in its
compiled worker threads on the CPU, with numba's random generator: `augments = True` tells the trainer's
BatchPipeline not to augment a second time, and the draws are not seeded (a resumed run sees the same samples
but other augmentations). Normalisation stays in BatchPipeline, the same arithmetic for every backend.
FFCV reuses its batch buffers: a batch is valid until a few more batches have been taken; `clone=True` copies
each batch for callers that keep them.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from visionlaunch.datasets.loaders import epoch_permutation, shard_indices
from visionlaunch.ffcv_builders.manifest import check_beton
from visionlaunch.ffcv_builders.requirements import require_ffcv


class FfcvLoader:
    augments = True  # flip/translate/cutout happen in the FFCV pipeline
    note = None

    def __init__(self, path, batch_size: int, *, train: bool, seed: int, device: torch.device, rank: int = 0,
                 world: int = 1, num_workers: int = 2, max_steps: int | None = None, crop_padding: int = 0,
                 flip: bool = False, cutout: int = 0, channels_last: bool = False, clone: bool = False,
                 os_cache: bool = True, batches_ahead: int = 3, verify: bool = True, resized_crop=None):
        require_ffcv()
        from ffcv.loader import Loader, OrderOption

        self.path = Path(path)
        if verify:  # FFCV itself would read a damaged file's garbage offsets (or hang in a worker): refuse it first
            check_beton(self.path)
        self.batch_size, self.train, self.seed = batch_size, train, seed
        self.device, self.rank, self.world = device, rank, world
        self.max_steps, self.clone = max_steps, clone
        self.epoch, self.start_batch = 0, 0
        self.loader = Loader(
            str(self.path), batch_size=batch_size, num_workers=max(1, num_workers), os_cache=os_cache,
            order=OrderOption.SEQUENTIAL, drop_last=train, batches_ahead=batches_ahead,
            pipelines=self._pipelines(train, crop_padding, flip, cutout, channels_last,
                                      resized_crop if train else None))
        self.num_samples = int(self.loader.reader.num_samples)
        # Our order in place of FFCV's: the Loader asks it for each epoch's sample indices.
        self.loader.traversal_order = _ShardOrder(self)
        self.loader.first_traversal_order = self._shard()

    def _pipelines(self, train: bool, crop_padding: int, flip: bool, cutout: int, channels_last: bool,
                   resized_crop=None) -> dict:
        from ffcv.fields.basics import IntDecoder
        from ffcv.fields.ndarray import NDArrayDecoder
        from ffcv.fields.rgb_image import RandomResizedCropRGBImageDecoder, SimpleRGBImageDecoder
        from ffcv.transforms import RandomHorizontalFlip, RandomTranslate, ToDevice, ToTensor, ToTorchImage

        from visionlaunch.ffcv_builders.ops import ClippedCutout

        reader_fields = self._field_types()
        grayscale = reader_fields["image"] == "NDArrayField"
        channels = 1 if grayscale else 3
        image = [NDArrayDecoder() if grayscale else SimpleRGBImageDecoder()]
        if resized_crop is not None:  # data.image_size: FFCV decodes straight into the random-resized crop
            if grayscale:
                raise ValueError(f"{self.path} holds grayscale arrays; the random-resized crop needs an RGB field")
            image = [RandomResizedCropRGBImageDecoder((resized_crop.size,) * 2, scale=tuple(resized_crop.scale),
                                                      ratio=tuple(resized_crop.ratio))]
        if train:  # the order of BatchAugment: translate, flip, then cutout
            if crop_padding:
                image.append(RandomTranslate(padding=crop_padding, fill=(0,) * channels))
            if flip:
                image.append(RandomHorizontalFlip())
            if cutout:
                image.append(ClippedCutout(cutout))
        image.append(ToTensor())
        label = [IntDecoder(), ToTensor()]
        if self.device.type != "cpu":
            image.append(ToDevice(self.device, non_blocking=True))
            label.append(ToDevice(self.device, non_blocking=True))
        image.append(ToTorchImage(channels_last=channels_last))
        return {"image": image, "label": label}

    def _field_types(self) -> dict:
        from ffcv.reader import Reader

        reader = Reader(str(self.path))
        return {name: type(handler).__name__ for name, handler in reader.handlers.items()}

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch's order; iteration then begins at batch `start_batch` (a resumed epoch)."""
        self.epoch, self.start_batch = epoch, start_batch

    def _shard(self) -> np.ndarray:
        order = epoch_permutation(self.num_samples, self.seed, self.epoch, shuffle=self.train)
        return shard_indices(order, self.rank, self.world, even=self.train).numpy().astype(np.uint64)

    def __len__(self) -> int:
        n = self.num_samples // self.world if self.train else len(self._shard())
        steps = n // self.batch_size if self.train else math.ceil(n / self.batch_size)
        return min(steps, self.max_steps) if self.max_steps else steps

    def __iter__(self):
        steps = len(self) - self.start_batch
        if steps <= 0:
            return
        self.loader.next_epoch = self.epoch
        epoch_iter = iter(self.loader)
        try:
            for _ in range(steps):
                images, labels = next(epoch_iter)
                # Labels are tiny: always a copy, since FFCV reuses this (N, 1) buffer for later batches.
                labels = labels.reshape(-1).to(torch.int64, copy=True)
                yield (images.clone() if self.clone else images), labels
        finally:
            epoch_iter.close()  # stops FFCV's reader thread when the epoch is cut short


class _ShardOrder:
    """FFCV traversal order = our rank shard of the epoch's seeded permutation, from batch `start_batch` on."""

    def __init__(self, owner: FfcvLoader):
        self.owner = owner

    def sample_order(self, epoch: int) -> np.ndarray:
        owner = self.owner
        owner.epoch = epoch
        return owner._shard()[owner.start_batch * owner.batch_size:]
