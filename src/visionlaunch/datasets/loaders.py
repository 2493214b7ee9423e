"""Loader backends. Each yields batches of (uint8 images NCHW, int64 labels) on the training device; the
trainer's `BatchPipeline` then augments and normalises whole batches there, so every backend means the same
augmentation and the model never knows which one fed it.

Sharding under several processes: each epoch one seeded permutation (identical on every rank) is cut into
`world` disjoint shards, rank r taking positions r, r+world, ... . Training shards are trimmed to a common length
so every rank runs the same number of steps (at most world-1 samples a epoch are left out, a different few each
epoch); evaluation shards are not trimmed, so every test sample is counted exactly once.
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


class TensorLoader:
    """The whole uint8 dataset resident on `device`; batches are index gathers, no per-sample Python work."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, *, train: bool, seed: int,
                 device: torch.device, rank: int = 0, world: int = 1, max_steps: int | None = None):
        self.images = images.to(device)
        self.labels = labels.to(device)
        self.batch_size = batch_size
        self.train = train
        self.seed = seed
        self.rank, self.world = rank, world
        self.max_steps = max_steps
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

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
        for step in range(len(self)):
            idx = index[step * self.batch_size:(step + 1) * self.batch_size]
            yield self.images[idx], self.labels[idx]


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

    def _indices(self) -> torch.Tensor:
        order = epoch_permutation(self.n, self.seed, self.epoch, shuffle=self.train)
        return shard_indices(order, self.rank, self.world, even=self.train)

    def __iter__(self):
        return iter(self._indices().tolist())

    def __len__(self) -> int:
        return len(self._indices())


class TorchLoader:
    """The standard DataLoader (worker processes, pinned memory) as the baseline users know."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, *, train: bool, seed: int,
                 device: torch.device, rank: int = 0, world: int = 1, num_workers: int = 2,
                 max_steps: int | None = None):
        self.device = device
        self.max_steps = max_steps
        self.sampler = _ShardSampler(len(labels), train=train, seed=seed, rank=rank, world=world)
        self.loader = DataLoader(
            _IndexedTensors(images, labels), batch_size=batch_size, sampler=self.sampler, drop_last=train,
            num_workers=num_workers, pin_memory=device.type == "cuda", persistent_workers=num_workers > 0)

    def set_epoch(self, epoch: int) -> None:
        self.sampler.epoch = epoch

    def __len__(self) -> int:
        return min(len(self.loader), self.max_steps) if self.max_steps else len(self.loader)

    def __iter__(self):
        for step, (images, labels) in enumerate(self.loader):
            if step >= len(self):
                break
            yield images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)


def make_loader(kind: str, images: torch.Tensor, labels: torch.Tensor, batch_size: int, **kwargs):
    if kind == "tensor":
        kwargs.pop("num_workers", None)
        return TensorLoader(images, labels, batch_size, **kwargs)
    if kind == "torch":
        return TorchLoader(images, labels, batch_size, **kwargs)
    raise ValueError(f"unknown loader {kind!r}")
