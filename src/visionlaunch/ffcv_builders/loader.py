"""The ffcv loader backend: an FFCV Loader behind the contract and the sample order of TensorLoader and
TorchLoader (ShardedLoader's rank shards replace FFCV's traversal orders; FFCV's `distributed=True` would pad
evaluation shards with repeated samples and count some test images twice).

Different from the others: augmentation (translate, flip, cutout) runs in FFCV's compiled CPU worker threads with
numba's unseeded generator (`augments = True`: the batch pipeline does not augment again; a resumed run sees the
same samples but other augmentations). FFCV reuses its batch buffers: a batch is valid until a few more have been
taken; `clone=True` copies each batch for callers that keep them.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import replace

import numpy as np
import torch

from visionlaunch.datasets.loaders import ShardedLoader
from visionlaunch.datasets.mixed_size import RATIO
from visionlaunch.ffcv_builders import require_ffcv
from visionlaunch.ffcv_builders.manifest import check_beton


class FfcvLoader(ShardedLoader):
    augments = True  # flip/translate/cutout happen in the FFCV pipeline

    def __init__(self, path, batch_size: int, *, device: torch.device, num_workers: int = 2, crop_padding: int = 0,
                 flip: bool = False, cutout: int = 0, channels_last: bool = False, clone: bool = False,
                 verify: bool = True, resized_crop=None, **sharding):
        require_ffcv()
        from ffcv.fields.basics import IntDecoder
        from ffcv.fields.ndarray import NDArrayDecoder
        from ffcv.fields.rgb_image import RandomResizedCropRGBImageDecoder, SimpleRGBImageDecoder
        from ffcv.loader import Loader, OrderOption
        from ffcv.reader import Reader
        from ffcv.transforms import RandomHorizontalFlip, RandomTranslate, ToDevice, ToTensor, ToTorchImage

        if verify:  # FFCV itself would read a damaged file's garbage offsets (or hang in a worker): refuse it first
            check_beton(path)
        reader = Reader(str(path))
        super().__init__(int(reader.num_samples), batch_size, **sharding)
        self.device, self.clone = device, clone
        grayscale = type(reader.handlers["image"]).__name__ == "NDArrayField"
        self.resized_crop, self.decoder = (resized_crop if self.train else None), None
        if self.resized_crop is not None:  # data.image_size (always RGB): decoded straight into the crop
            self.decoder = RandomResizedCropRGBImageDecoder((resized_crop.size_at(0),) * 2,
                                                            scale=tuple(resized_crop.scale), ratio=RATIO)
            image = [self.decoder]
        else:
            image = [NDArrayDecoder() if grayscale else SimpleRGBImageDecoder()]
        if self.train:  # the order of BatchAugment: translate, flip, then cutout
            if crop_padding:
                image.append(RandomTranslate(padding=crop_padding, fill=(0,) * (1 if grayscale else 3)))
            if flip:
                image.append(RandomHorizontalFlip())
            if cutout:
                image.append(_clipped_cutout(cutout))
        image.append(ToTensor())
        label = [IntDecoder(), ToTensor()]
        if device.type != "cpu":
            image.append(ToDevice(device, non_blocking=True))
            label.append(ToDevice(device, non_blocking=True))
        image.append(ToTorchImage(channels_last=channels_last))
        with _lean_page_cache_reader():
            self.loader = Loader(
                str(path), batch_size=batch_size, num_workers=max(1, num_workers), os_cache=True,
                order=OrderOption.SEQUENTIAL, drop_last=self.train, batches_ahead=3,
                # progressive resizing changes the decoder's output size between epochs: compiled again each epoch
                recompile=self.resized_crop is not None and self.resized_crop.ramp is not None,
                pipelines={"image": image, "label": label})
        # Our order in place of FFCV's: the Loader asks its traversal order for each epoch's sample indices.
        self.loader.traversal_order = self
        self.loader.first_traversal_order = self.sample_order(0)

    def sample_order(self, ffcv_epoch: int) -> np.ndarray:
        """FFCV's traversal-order protocol: what this epoch still visits (FFCV's own epoch count is not ours)."""
        return self.remaining().numpy().astype(np.uint64)

    def __iter__(self):
        steps = len(self) - self.start_batch
        if steps <= 0:
            return
        if self.decoder is not None:  # the epoch's crop size, as FFCV's train_imagenet.py sets it per epoch
            self.decoder.output_size = (self.resized_crop.size_at(self.epoch),) * 2
        epoch_iter = iter(self.loader)
        try:
            for _ in range(steps):
                images, labels = next(epoch_iter)
                # Labels are tiny: always a copy, since FFCV reuses this (N, 1) buffer for later batches.
                labels = labels.reshape(-1).to(torch.int64, copy=True)
                yield (images.clone() if self.clone else images), labels
        finally:
            epoch_iter.close()  # stops FFCV's reader thread when the epoch is cut short


@contextlib.contextmanager
def _lean_page_cache_reader():
    """FFCV's Loader, while it is built, reading through `LeanOSCache` instead of its OSCacheManager."""
    import ffcv.loader.loader as ffcv_loader

    original = ffcv_loader.OSCacheManager
    ffcv_loader.OSCacheManager = lean_os_cache()
    try:
        yield
    finally:
        ffcv_loader.OSCacheManager = original


@functools.cache
def lean_os_cache():
    """FFCV's page-cache reader (os_cache=True) without the per-sample Python dictionaries its base class builds
    for the process cache and the QUASI_RANDOM order, neither of which is used here: about 460 bytes a sample in
    every process (0.6 GB per rank for ImageNet's 1.28M images). Reading needs only the allocation table's
    addresses and sizes, as sorted numpy arrays. Defined on first use: its base class needs ffcv imported."""
    from ffcv.memory_managers.os_cache import OSCacheContext, OSCacheManager

    class LeanOSCache(OSCacheManager):
        def __init__(self, reader):  # noqa: super().__init__ is the part left out
            self.reader = reader
            table = reader.alloc_table
            order = np.argsort(table["ptr"])
            self.ptrs, self.sizes = table["ptr"][order], table["size"][order]
            self.context = OSCacheContext(self)

    return LeanOSCache


def _clipped_cutout(size: int):
    """An FFCV operation that zeroes one `size` x `size` square per image of an (N, H, W, C) uint8 batch, centred
    at a uniform pixel and clipped at the borders: BatchAugment's cutout. FFCV's own Cutout keeps the square
    inside the image. Defined here, on first use, because its base class needs ffcv imported."""
    from ffcv.pipeline.compiler import Compiler
    from ffcv.pipeline.operation import Operation

    class ClippedCutout(Operation):
        def generate_code(self):
            parallel_range = Compiler.get_iterator()

            def cutout(images, *_):
                n, h, w = images.shape[0], images.shape[1], images.shape[2]
                for i in parallel_range(n):
                    y0 = np.random.randint(0, h) - size // 2
                    x0 = np.random.randint(0, w) - size // 2
                    images[i, max(y0, 0):min(y0 + size, h), max(x0, 0):min(x0 + size, w)] = 0
                return images

            cutout.is_parallel = True
            return cutout

        def declare_state_and_memory(self, previous_state):
            return replace(previous_state, jit_mode=True), None  # in place: no new memory

    return ClippedCutout()
