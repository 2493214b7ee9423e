"""The order of an epoch's samples: one global order, a function of (seed, epoch, sample index) only, that every
backend and every process count cuts its rank shards from (loaders.ShardedLoader).

In memory any sample is as near as any other, so the order is a full shuffle. Out of core a reader should touch a
bounded part of the data at a time (pages of a file, members of an archive, the OS page cache), so the order has
locality: the samples are cut into blocks of `block` consecutive indices, the blocks are shuffled, and the shuffled
blocks are taken `buffer` at a time (a window); the samples of one window are shuffled among themselves and the
windows follow each other. A window's samples come from exactly `buffer` blocks (at most block x buffer samples),
so a reader that holds one window of blocks at a time holds a bounded amount of data whatever the dataset's size.

The samples of a window are shuffled by the permutation the full shuffle draws, applied to the window's sample
indices in ascending order. So when one window holds everything (block x buffer >= n, or buffer=None), the local
order IS the full shuffle: a dataset that fits in one buffer is ordered the same in memory and out of core.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import torch


def _stream(seed: int, epoch: int) -> torch.Generator:
    # The full shuffle's stream since the first release: changing it would change every recorded run.
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def _block_stream(seed: int, epoch: int) -> torch.Generator:
    # A stream of its own for the block shuffle, so the window shuffles keep drawing the full shuffle's stream.
    digest = hashlib.sha256(f"visionlaunch-blocks:{int(seed)}:{int(epoch)}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


@dataclass(frozen=True)
class EpochOrder:
    """How an epoch is shuffled: `block` consecutive samples per block, `buffer` blocks per window (None: one window
    over everything, the full shuffle)."""

    block: int = 1
    buffer: int | None = None

    def __post_init__(self):
        if self.block < 1 or (self.buffer is not None and self.buffer < 1):
            raise ValueError(f"EpochOrder needs block >= 1 and buffer >= 1 (or None), got {self.block}, {self.buffer}")

    def window(self) -> int | None:
        """The most samples one window holds (None: the whole dataset)."""
        return None if self.buffer is None else self.block * self.buffer

    def __call__(self, n: int, seed: int, epoch: int) -> torch.Tensor:
        """The epoch's global order: int64 sample indices, each of 0..n-1 exactly once."""
        g = _stream(seed, epoch)
        blocks = math.ceil(n / self.block)
        if self.buffer is None or self.buffer >= blocks:  # one window: its sorted indices are 0..n-1
            return torch.randperm(n, generator=g)
        block_order = torch.randperm(blocks, generator=_block_stream(seed, epoch))
        offsets = torch.arange(self.block)
        parts = []
        for start in range(0, blocks, self.buffer):
            chosen = block_order[start:start + self.buffer].sort().values
            ids = (chosen[:, None] * self.block + offsets).flatten()
            ids = ids[ids < n]  # the last block may be short
            parts.append(ids[torch.randperm(len(ids), generator=g)])
        return torch.cat(parts)

    def describe(self) -> str:
        if self.buffer is None:
            return "full shuffle"
        return (f"local shuffle: blocks of {self.block} samples, {self.buffer} blocks per window "
                f"({self.block * self.buffer:,} samples)")


FULL_SHUFFLE = EpochOrder()
