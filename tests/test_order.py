"""The epoch order (datasets/order.py) and the shards ShardedLoader cuts from it: every epoch is a permutation that
depends on (seed, epoch) only, the local order keeps a reader inside a bounded window of blocks, ranks interleave
to the one-process order, and a resumed epoch continues at the exact next sample."""

import pytest
import torch

from visionlaunch.datasets.loaders import ShardedLoader
from visionlaunch.datasets.order import FULL_SHUFFLE, EpochOrder

LOCAL = EpochOrder(block=8, buffer=4)


@pytest.mark.parametrize("order", [FULL_SHUFFLE, LOCAL, EpochOrder(block=1, buffer=5), EpochOrder(block=50, buffer=1)])
@pytest.mark.parametrize("n", [1, 7, 100, 1003])
def test_every_epoch_is_a_permutation(order, n):
    for epoch in range(3):
        ids = order(n, 11, epoch)
        assert ids.dtype == torch.int64
        assert sorted(ids.tolist()) == list(range(n))  # each sample exactly once


def test_the_order_depends_only_on_seed_and_epoch():
    a = LOCAL(1000, 3, 2)
    assert torch.equal(a, LOCAL(1000, 3, 2))  # recomputed anywhere, any time: the same
    assert not torch.equal(a, LOCAL(1000, 3, 1))
    assert not torch.equal(a, LOCAL(1000, 4, 2))
    assert not torch.equal(a, torch.arange(1000))


def test_the_full_shuffle_is_the_historic_permutation():
    # The README's numbers and recorded runs were made with this permutation: it must never change.
    g = torch.Generator().manual_seed(5 * 1_000_003 + 2)
    expected = torch.randperm(300, generator=g)
    assert torch.equal(FULL_SHUFFLE(300, 5, 2), expected)
    # One window holding every block is the full shuffle too, whatever the block size.
    assert torch.equal(EpochOrder(block=7, buffer=43)(300, 5, 2), expected)
    assert torch.equal(EpochOrder(block=1, buffer=300)(300, 5, 2), expected)


@pytest.mark.parametrize("n", [1024, 1003])
def test_the_window_bound_holds(n):
    ids = LOCAL(n, 0, 1)
    blocks = (ids // LOCAL.block).tolist()
    window = LOCAL.window()
    # Reading in order, a window of block x buffer consecutive positions draws from at most `buffer` blocks when
    # every block is full, and never from more than 2 x buffer (it overlaps two windows at most) when one is short.
    for start in range(0, n, window):
        touched = len(set(blocks[start:start + window]))
        assert touched <= (LOCAL.buffer if n % LOCAL.block == 0 else 2 * LOCAL.buffer)
    for start in range(n - window):  # any stretch of one window's length, not only aligned ones
        assert len(set(blocks[start:start + window])) <= 2 * LOCAL.buffer
    # ... while the full shuffle's first window reaches almost every block.
    assert len(set((FULL_SHUFFLE(n, 0, 1)[:window] // LOCAL.block).tolist())) > 2 * LOCAL.buffer


def test_the_local_order_still_mixes_the_data():
    ids = LOCAL(1024, 0, 0)
    assert (ids[1:] - ids[:-1]).abs().float().mean() > 4  # not consecutive runs
    assert (ids[:512].float().mean() - 512).abs() < 400  # the blocks themselves are shuffled: not front to back
    assert set((ids[:32] // 8).tolist()) != set(range(4))


def _loader(rank, world, batch, order=LOCAL, n=203, start_batch=0, epoch=1):
    loader = ShardedLoader(n, batch, train=True, seed=7, rank=rank, world=world, order=order)
    loader.set_epoch(epoch, start_batch)
    return loader


@pytest.mark.parametrize("order", [FULL_SHUFFLE, LOCAL])
def test_two_ranks_interleave_to_the_one_rank_order(order):
    one = _loader(0, 1, 10, order).remaining()[:len(_loader(0, 1, 10, order)) * 10]
    shards = [_loader(r, 2, 5, order).remaining() for r in range(2)]
    steps = len(_loader(0, 2, 5, order))
    assert steps == len(_loader(0, 1, 10, order))
    for k in range(steps):  # step k of both ranks together covers step k of one process
        both = torch.cat([s[k * 5:(k + 1) * 5] for s in shards])
        assert sorted(both.tolist()) == sorted(one[k * 10:(k + 1) * 10].tolist())
    interleaved = torch.stack([shards[0], shards[1]], dim=1).flatten()
    assert torch.equal(interleaved, order(203, 7, 1)[:len(interleaved)])


@pytest.mark.parametrize("world", [1, 2, 3])
def test_resuming_at_a_batch_gives_the_exact_tail(world):
    for rank in range(world):
        whole = _loader(rank, world, 6).remaining()
        for start in (0, 1, 5, len(_loader(rank, world, 6))):
            assert torch.equal(_loader(rank, world, 6, start_batch=start).remaining(), whole[start * 6:])
