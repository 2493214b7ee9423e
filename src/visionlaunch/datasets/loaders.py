"""The loader backends (tensor, torch in memory, torch out of core; ffcv in ffcv_builders/loader.py) and the core
they share, `ShardedLoader`: which samples each step of an epoch takes on this rank. Every backend yields (uint8 NCHW
images, int64 labels) on the training device; the batch pipeline (augment.py) then augments and normalises them, the
same for every backend.

Each epoch one global order of the samples (order.py: a function of seed, epoch and sample index only, identical
on every rank; a full shuffle in memory, a shuffle with locality out of core) is cut into `world` shards, rank r
taking positions r, r+world, ... . Training shards are trimmed to a common length, so every rank runs the same
number of steps (at most world-1 samples an epoch left out); evaluation shards are not, so every test sample counts exactly once. With a
per-process batch of B / world, step k of all ranks covers positions [k*B, (k+1)*B): the samples of step k of one
process with batch B. `set_epoch(epoch, start_batch)` resumes an epoch at exactly the batch a checkpoint stopped at.
"""

from __future__ import annotations

import itertools
import math

import torch
from torch.utils.data import DataLoader, TensorDataset

from visionlaunch.datasets.mixed_size import ResizedCropDataset
from visionlaunch.datasets.order import FULL_SHUFFLE, EpochOrder
from visionlaunch.datasets.source import IndexedSource, SampleDataset
from visionlaunch.errors import VisionlaunchError


def epoch_steps(n: int, batch_size: int, *, train: bool, rank: int = 0, world: int = 1) -> int:
    """Batches in rank `rank`'s epoch over `n` samples. Training drops the last partial batch (a batch of 1
    breaks BatchNorm and skews the step size); evaluation keeps it, so every sample is counted."""
    shard = n // world if train else len(range(rank, n, world))
    return shard // batch_size if train else math.ceil(shard / batch_size)


class ShardedLoader:
    """Epoch order, rank shard and epoch length: the rules every backend follows (its subclasses take these
    arguments as `**sharding`). `max_steps` (train.max_steps_per_epoch) cuts every epoch to at most that many
    batches; `order` says how a training epoch is shuffled (the full shuffle unless the data is read out of core)."""

    augments = False  # batches come raw; the batch pipeline augments them (the ffcv backend says True)
    crops = False  # ... and makes the random-resized crop of data.image_size
    note = None  # a line for the user about how the data is held (the tensor backend's spill to CPU memory)

    def __init__(self, n: int, batch_size: int, *, train: bool, seed: int, rank: int = 0, world: int = 1,
                 max_steps: int | None = None, order: EpochOrder = FULL_SHUFFLE):
        self.num_samples, self.batch_size, self.train, self.seed = n, batch_size, train, seed
        self.rank, self.world, self.max_steps, self.order = rank, world, max_steps, order
        self.epoch, self.start_batch = 0, 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def remaining(self) -> torch.Tensor:
        """This rank's positions of the epoch's global order (in order when not training), from batch
        `start_batch` on: what a (resumed) epoch still visits."""
        if self.train:
            order = self.order(self.num_samples, self.seed, self.epoch)
        else:
            order = torch.arange(self.num_samples)
        shard = order[self.rank::self.world]
        if self.train:
            shard = shard[: self.num_samples // self.world]
        return shard[self.start_batch * self.batch_size:]

    def __len__(self) -> int:
        steps = epoch_steps(self.num_samples, self.batch_size, train=self.train, rank=self.rank, world=self.world)
        return min(steps, self.max_steps) if self.max_steps else steps


# The dataset may take at most this share of the accelerator's free memory: the model, its activations and the
# optimizer state need the rest.
DEVICE_SHARE = 0.5


class TensorLoader(ShardedLoader):
    """The whole uint8 dataset resident on `device`; batches are index gathers, no per-sample Python work. When it
    does not fit (DEVICE_SHARE of the free accelerator memory, or `memory_budget` bytes), it stays in pinned CPU
    memory and each gathered batch is copied over; `note` then says so."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, *, device: torch.device,
                 memory_budget: int | None = None, **sharding):
        super().__init__(len(labels), batch_size, **sharding)
        self.device = device
        need = images.nbytes + labels.nbytes
        budget = memory_budget
        if budget is None and device.type == "cuda":  # on the CPU, memory already holds the decoded dataset
            budget = int(torch.cuda.mem_get_info(device)[0] * DEVICE_SHARE)
        self.resident = budget is None or need <= budget
        if self.resident:
            self.images, self.labels = images.to(device), labels.to(device)
        else:
            pin = device.type == "cuda"  # pinned pages let the per-batch copies run asynchronously
            self.images = images.pin_memory() if pin else images
            self.labels = labels.pin_memory() if pin else labels
            self.note = (f"NOTE: the dataset ({need / 2**20:,.0f} MiB as uint8) does not fit in the "
                         f"{budget / 2**20:,.0f} MiB the tensor loader may use on {device}; it stays in "
                         f"{'pinned ' if pin else ''}CPU memory and each batch is copied over (slower). Use a device "
                         "with more memory, data.loader=ffcv, or a subset (data.train_subset).")

    def __iter__(self):
        index = self.remaining().to(self.images.device)
        for step in range(len(self) - self.start_batch):
            idx = index[step * self.batch_size:(step + 1) * self.batch_size]
            images, labels = self.images[idx], self.labels[idx]  # resident: already on the device, .to() is a no-op
            if not self.resident and self.device.type == "cuda":
                images, labels = images.pin_memory(), labels.pin_memory()
            yield images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)


class _RemainingSampler(torch.utils.data.Sampler):
    """The DataLoader's order: what the owning loader's epoch still visits."""

    def __init__(self, owner: ShardedLoader, with_epoch: bool = False):
        self.owner, self.with_epoch = owner, with_epoch

    def __iter__(self):
        # One index at a time from the epoch's order (a numpy array): a list of a million Python ints, or of
        # (sample, epoch) pairs, would be a peak of 100 MiB and more.
        index, epoch = self.owner.remaining().numpy(), self.owner.epoch
        # (sample, epoch) pairs for SampleDataset and ResizedCropDataset, whose crops depend on the epoch: persistent
        # workers keep the dataset object they were started with, so the epoch has to travel with each index.
        return ((int(i), epoch) for i in index) if self.with_epoch else (int(i) for i in index)


class TorchLoader(ShardedLoader):
    """The standard DataLoader (worker processes, pinned memory) as the baseline users know."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, *, device: torch.device,
                 num_workers: int = 2, resized_crop=None, **sharding):
        super().__init__(len(labels), batch_size, **sharding)
        # data.image_size: each training sample is cropped in the workers with torchvision's transforms v2.
        self.crops = self.train and resized_crop is not None
        dataset = ResizedCropDataset(images, labels, resized_crop) if self.crops else TensorDataset(images, labels)
        self._start(dataset, device, num_workers, with_epoch=self.crops)  # the epoch sets the crop's size

    def _start(self, dataset, device: torch.device, num_workers: int, with_epoch: bool = False) -> None:
        self.device = device
        # Its own generator: DataLoader draws a worker base seed per epoch, which must not advance the global RNG
        # (dropout uses it), or a resumed run would draw different dropout masks than an uninterrupted one.
        self.loader = DataLoader(
            dataset, batch_size=self.batch_size, sampler=_RemainingSampler(self, with_epoch), drop_last=self.train,
            num_workers=num_workers, pin_memory=device.type == "cuda", persistent_workers=num_workers > 0,
            generator=torch.Generator().manual_seed(self.seed))

    def __iter__(self):
        for images, labels in itertools.islice(self.loader, max(len(self) - self.start_batch, 0)):
            yield images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)


class SourceLoader(TorchLoader):
    """Out of core: DataLoader workers decode one sample per item from an indexed source (source.py), in the epoch
    order `order` (a local shuffle, so that reads stay within a window of the data). Training with data.image_size,
    each sample's random-resized crop is drawn from its own generator seeded by (seed, epoch, sample index), so the
    batches are the same on any number of processes and workers, and a run resumed mid-epoch continues bit for bit."""

    def __init__(self, source: IndexedSource, batch_size: int, *, device: torch.device, num_workers: int = 2,
                 resized_crop=None, **sharding):
        ShardedLoader.__init__(self, len(source), batch_size, **sharding)
        self.crops = self.train and resized_crop is not None
        self._start(SampleDataset(source, self.seed, resized_crop if self.crops else None), device, num_workers,
                    with_epoch=True)

    def __iter__(self):
        try:
            yield from super().__iter__()
        except VisionlaunchError as exc:  # a file that cannot be decoded, found by a worker: its message alone
            text = str(exc)
            if "Original Traceback" in text:  # DataLoader re-raises a worker's error with the worker's traceback
                text = text.rstrip().rsplit("VisionlaunchError: ", 1)[-1]
            raise VisionlaunchError(text) from None
