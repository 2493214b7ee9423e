"""Loader backends. Each yields batches of (uint8 images NCHW, int64 labels) on the training device; the
trainer's `BatchPipeline` then augments and normalises whole batches there, so every backend means the same
augmentation and the model never knows which one fed it.

Sharding under several processes: each epoch one seeded permutation (identical on every rank) is cut into
`world` disjoint shards, rank r taking positions r, r+world, ... . Training shards are trimmed to a common length
so every rank runs the same number of steps (at most world-1 samples a epoch are left out, a different few each
epoch); evaluation shards are not trimmed, so every test sample is counted exactly once.

With a per-process batch of train.batch_size / world, optimizer step k of every rank together covers positions
[k*B, (k+1)*B) of the epoch's permutation: the same samples as step k of a single process with batch B.
`set_epoch(epoch, start_batch)` starts an epoch part way through, at exactly the batch a checkpoint stopped at.
"""

from __future__ import annotations

import math

import torch
from torch.utils.data import DataLoader, Dataset


def epoch_permutation(n: int, seed: int, epoch: int, shuffle: bool) -> torch.Tensor:
    if not shuffle:
        return torch.arange(n)
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


def shard_indices(order: torch.Tensor, rank: int, world: int, even: bool) -> torch.Tensor:
    shard = order[rank::world]
    if even:
        shard = shard[: len(order) // world]
    return shard


# The dataset may take at most this share of the accelerator's free memory: the model, its activations and the
# optimizer state need the rest.
DEVICE_SHARE = 0.5


def device_budget(device: torch.device) -> int | None:
    """Bytes a resident dataset may take on `device`; None when there is no limit to check (CPU memory already
    holds the decoded dataset)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * DEVICE_SHARE)
    return None


class TensorLoader:
    """The whole uint8 dataset resident on `device`; batches are index gathers, no per-sample Python work.

    When it does not fit (more than DEVICE_SHARE of the free accelerator memory, or `memory_budget` bytes), it
    stays in pinned CPU memory and each gathered batch is copied to the device; `note` then says so.
    """

    augments = False  # batches come raw; the trainer's BatchPipeline augments them
    crops = False  # ... and makes the random-resized crop of data.image_size

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, *, train: bool, seed: int,
                 device: torch.device, rank: int = 0, world: int = 1, max_steps: int | None = None,
                 memory_budget: int | None = None):
        self.device = device
        need = images.nbytes + labels.nbytes
        budget = memory_budget if memory_budget is not None else device_budget(device)
        self.resident = budget is None or need <= budget
        self.note = None
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
        self.batch_size = batch_size
        self.train = train
        self.seed = seed
        self.rank, self.world = rank, world
        self.max_steps = max_steps
        self.epoch = 0
        self.start_batch = 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch's order; iteration then begins at batch `start_batch` (a resumed epoch)."""
        self.epoch = epoch
        self.start_batch = start_batch

    def _shard(self) -> torch.Tensor:
        order = epoch_permutation(len(self.labels), self.seed, self.epoch, shuffle=self.train)
        return shard_indices(order, self.rank, self.world, even=self.train)

    def __len__(self) -> int:
        n = len(self.labels) // self.world if self.train else len(self._shard())
        # Training drops the last partial batch: a batch of 1 breaks BatchNorm and skews the step size.
        steps = n // self.batch_size if self.train else math.ceil(n / self.batch_size)
        return min(steps, self.max_steps) if self.max_steps else steps

    def __iter__(self):
        index = self._shard().to(self.images.device)
        for step in range(self.start_batch, len(self)):
            idx = index[step * self.batch_size:(step + 1) * self.batch_size]
            if self.resident:
                yield self.images[idx], self.labels[idx]
            else:
                images, labels = self.images[idx], self.labels[idx]
                if self.device.type == "cuda":
                    images, labels = images.pin_memory(), labels.pin_memory()
                yield images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)


class _IndexedTensors(Dataset):
    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        return self.images[i], self.labels[i]


class _ShardSampler(torch.utils.data.Sampler):
    """Same order and sharding rule as TensorLoader, so both backends visit the same samples per rank."""

    def __init__(self, n: int, *, train: bool, seed: int, rank: int, world: int):
        self.n, self.train, self.seed, self.rank, self.world = n, train, seed, rank, world
        self.epoch = 0
        self.start = 0  # samples of the epoch's shard to skip (a resumed epoch)

    def _indices(self) -> torch.Tensor:
        order = epoch_permutation(self.n, self.seed, self.epoch, shuffle=self.train)
        return shard_indices(order, self.rank, self.world, even=self.train)

    def __iter__(self):
        return iter(self._indices()[self.start:].tolist())

    def __len__(self) -> int:
        return max(0, len(self._indices()) - self.start)


class TorchLoader:
    """The standard DataLoader (worker processes, pinned memory) as the baseline users know."""

    augments = False
    note = None

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, *, train: bool, seed: int,
                 device: torch.device, rank: int = 0, world: int = 1, num_workers: int = 2,
                 max_steps: int | None = None, resized_crop=None):
        self.device = device
        self.max_steps = max_steps
        self.batch_size, self.train = batch_size, train
        self.start_batch = 0
        self.sampler = _ShardSampler(len(labels), train=train, seed=seed, rank=rank, world=world)
        # data.image_size: each training sample is cropped in the workers with torchvision's transforms v2.
        self.crops = bool(train and resized_crop is not None)
        if self.crops:
            from visionlaunch.datasets.resized_crop import ResizedCropDataset
            dataset = ResizedCropDataset(images, labels, resized_crop)
        else:
            dataset = _IndexedTensors(images, labels)
        # Its own generator: DataLoader draws a worker base seed per epoch, which must not advance the global RNG
        # (dropout uses it), or a resumed run would draw different dropout masks than an uninterrupted one.
        self.loader = DataLoader(
            dataset, batch_size=batch_size, sampler=self.sampler, drop_last=train,
            num_workers=num_workers, pin_memory=device.type == "cuda", persistent_workers=num_workers > 0,
            generator=torch.Generator().manual_seed(seed))

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch's order; iteration then begins at batch `start_batch` (a resumed epoch)."""
        self.sampler.epoch = epoch
        self.start_batch = start_batch
        self.sampler.start = start_batch * self.batch_size

    def __len__(self) -> int:
        n = len(self.sampler._indices())
        steps = n // self.batch_size if self.train else math.ceil(n / self.batch_size)
        return min(steps, self.max_steps) if self.max_steps else steps

    def __iter__(self):
        for step, (images, labels) in enumerate(self.loader, start=self.start_batch):
            if step >= len(self):
                break
            yield images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)


def make_loader(kind: str, images: torch.Tensor, labels: torch.Tensor, batch_size: int, *, beton=None,
                verify_beton: bool = True, augment=None, channels_last: bool = False, **kwargs):
    """A loader backend by name. `beton` (the split's .beton file; `verify_beton=False` when the caller has just
    checked it against its manifest), `augment` (an AugmentConfig) and `channels_last` are for the ffcv backend,
    which augments in its own pipeline; the others ignore them. `resized_crop` (a ResizedCrop, training with
    data.image_size) is made by the torch and ffcv loaders, and by the trainer's BatchPipeline for tensor."""
    if kind == "tensor":
        kwargs.pop("num_workers", None)
        kwargs.pop("resized_crop", None)
        return TensorLoader(images, labels, batch_size, **kwargs)
    if kind == "torch":
        return TorchLoader(images, labels, batch_size, **kwargs)
    if kind == "ffcv":
        from visionlaunch.ffcv_builders.loader import FfcvLoader
        if beton is None:
            raise ValueError("the ffcv loader needs the split's .beton file (beton=...)")
        aug = {} if augment is None else dict(crop_padding=augment.crop_padding, flip=augment.flip,
                                               cutout=augment.cutout)
        if not kwargs.get("train"):
            kwargs.pop("resized_crop", None)
        loader = FfcvLoader(beton, batch_size, channels_last=channels_last, verify=verify_beton, **aug, **kwargs)
        if loader.num_samples != len(labels):
            raise ValueError(f"{beton} holds {loader.num_samples} samples, the split {len(labels)}")
        return loader
    raise ValueError(f"unknown loader {kind!r}")
