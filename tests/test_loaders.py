"""Loader backends: each seeded epoch visits every sample once (per rank too), labels stay attached, and both
backends agree on order and sharding."""

import pytest
import torch

from visionlaunch.datasets.loaders import TensorLoader, TorchLoader
from visionlaunch.trainers.data import make_loader

N = 103


def _data():
    images = torch.arange(N, dtype=torch.uint8).view(N, 1, 1, 1).expand(N, 1, 2, 2).contiguous()
    labels = torch.arange(N, dtype=torch.int64)  # label == pixel value: lets us check they stay attached
    return images, labels


@pytest.mark.parametrize("kind", ["tensor", "torch"])
def test_eval_epoch_visits_every_sample_once_in_order(kind):
    images, labels = _data()
    loader = make_loader(kind, images, labels, 10, train=False, seed=0, device=torch.device("cpu"), num_workers=0)
    seen = torch.cat([y for _, y in loader])
    assert seen.tolist() == list(range(N))
    assert len(loader) == 11


@pytest.mark.parametrize("kind", ["tensor", "torch"])
def test_train_epoch_is_seeded_shuffled_and_labels_stay_attached(kind):
    images, labels = _data()
    make = lambda: make_loader(kind, images, labels, 10, train=True, seed=3, device=torch.device("cpu"),
                               num_workers=0)
    a, b = make(), make()
    batches = list(a)
    assert len(batches) == len(a) == N // 10  # last partial batch dropped
    ys = torch.cat([y for _, y in batches])
    assert len(set(ys.tolist())) == len(ys)  # no repeats
    assert ys.tolist() != sorted(ys.tolist())  # shuffled
    for x, y in batches:
        assert torch.equal(x[:, 0, 0, 0].long(), y)
    assert torch.equal(ys, torch.cat([y for _, y in b]))  # same seed, same order
    a.set_epoch(1)
    assert not torch.equal(ys, torch.cat([y for _, y in a]))  # a new epoch, a new order


def test_both_backends_give_the_same_batches():
    images, labels = _data()
    kw = dict(train=True, seed=5, device=torch.device("cpu"))
    t = [y for _, y in TensorLoader(images, labels, 8, **kw)]
    d = [y for _, y in TorchLoader(images, labels, 8, num_workers=0, **kw)]
    assert all(torch.equal(a, b) for a, b in zip(t, d)) and len(t) == len(d)


@pytest.mark.parametrize("kind", ["tensor", "torch"])
@pytest.mark.parametrize("train", [True, False])
def test_ranks_get_disjoint_shards_that_cover_the_epoch(kind, train):
    images, labels = _data()
    world = 3
    shards = []
    for rank in range(world):
        loader = make_loader(kind, images, labels, 1, train=train, seed=1, device=torch.device("cpu"), rank=rank,
                             world=world, num_workers=0)
        shards.append(torch.cat([y for _, y in loader]).tolist())
    flat = [i for s in shards for i in s]
    assert len(flat) == len(set(flat))  # disjoint
    if train:  # equal step counts; at most world-1 samples left out
        assert len({len(s) for s in shards}) == 1 and N - len(flat) < world
    else:  # evaluation counts every sample exactly once
        assert sorted(flat) == list(range(N))


def test_max_steps_cuts_the_epoch():
    images, labels = _data()
    loader = TensorLoader(images, labels, 10, train=True, seed=0, device=torch.device("cpu"), max_steps=2)
    assert len(loader) == 2 and len(list(loader)) == 2
