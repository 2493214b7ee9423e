"""ImageSet, train/val split, normalisation constants and normalize()."""

import math

import pytest
import torch

from visionlaunch.datasets import ImageSet, normalization_stats, normalize, train_val_split
from visionlaunch.errors import VisionlaunchError


def toy(counts=(600, 300, 100), name="imagefolder", channels=1):
    """An ImageSet whose image i holds the number i (in its first two pixels), so samples can be traced."""
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    labels = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))]
    n = len(labels)
    images = torch.zeros(n, channels, 2, 2, dtype=torch.uint8)
    images[:, 0, 0, 0] = torch.arange(n) % 256
    images[:, 0, 0, 1] = torch.arange(n) // 256
    return ImageSet(images=images, labels=labels, classes=[f"c{i}" for i in range(len(counts))], name=name,
                    source="toy")


def ids(ds):
    return (ds.images[:, 0, 0, 0].long() + 256 * ds.images[:, 0, 0, 1].long()).tolist()


def test_imageset_basics():
    ds = toy()
    assert len(ds) == 1000 and ds.shape == (1, 2, 2)
    part = ds.subset(torch.tensor([5, 1, 7]))
    assert ids(part) == [5, 1, 7] and part.classes == ds.classes and part.name == ds.name
    assert part.images.is_contiguous()
    mask = ds.labels == 2
    assert len(ds.subset(mask)) == 100
    assert "n=1000" in repr(ds) and "tensor" not in repr(ds)
    with pytest.raises(ValueError):
        ImageSet(images=ds.images.float(), labels=ds.labels, classes=ds.classes, name="x", source="")
    with pytest.raises(ValueError):
        ImageSet(images=ds.images, labels=ds.labels, classes=["only one"], name="x", source="")


@pytest.mark.parametrize("val_size, n_val", [(100, 100), (0.25, 250), (0, 0), (0.0, 0), (1, 1), (999, 999),
                                             (100.0, 100), (1.0, 1), (0.0001, 1)])
def test_split_sizes_disjoint_and_complete(val_size, n_val):
    ds = toy()
    train, val = train_val_split(ds, val_size, seed=0)
    assert len(val) == n_val and len(train) == 1000 - n_val
    assert set(ids(train)).isdisjoint(ids(val)) and sorted(ids(train) + ids(val)) == list(range(1000))
    assert val.classes == ds.classes and train.name == val.name == ds.name


def test_split_is_seeded():
    ds = toy()
    a_train, a_val = train_val_split(ds, 0.2, seed=7)
    b_train, b_val = train_val_split(ds, 0.2, seed=7)
    assert ids(a_val) == ids(b_val) and ids(a_train) == ids(b_train)
    assert ids(train_val_split(ds, 0.2, seed=8)[1]) != ids(a_val)
    assert "seed 7" in a_val.source


def test_split_is_stratified():
    ds = toy((600, 300, 100))
    _, val = train_val_split(ds, 100, seed=1)
    assert val.labels.bincount().tolist() == [60, 30, 10]
    # Inexact quotas still sum to the request, each class within one of its exact share.
    _, val = train_val_split(ds, 7, seed=1)
    counts = val.labels.bincount(minlength=3).tolist()
    assert sum(counts) == 7 and all(abs(c - 7 * n / 1000) < 1 for c, n in zip(counts, (600, 300, 100)))


@pytest.mark.parametrize("bad", [-1, 1000, 5000, 1.5, 2.5, -0.1, True, "10", math.nan, None])
def test_bad_val_sizes(bad):
    with pytest.raises(VisionlaunchError, match="data.val_size"):
        train_val_split(toy(), bad, seed=0)


def test_published_normalization_constants():
    mnist = toy(name="mnist")
    assert normalization_stats(mnist) == ((0.1307,), (0.3081,))
    assert normalization_stats(toy(name="mnist_sample")) == ((0.1307,), (0.3081,))
    assert normalization_stats(toy(name="cifar10", channels=3)) == ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
    assert normalization_stats(toy(name="cifar100", channels=3)) == ((0.5071, 0.4865, 0.4409),
                                                                    (0.2673, 0.2564, 0.2762))


def test_measured_normalization_stats_for_imagefolder():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (50, 3, 5, 7), generator=g, dtype=torch.uint8)
    images[:, 2] //= 4  # a darker blue channel: the stats must be per channel
    ds = ImageSet(images=images, labels=torch.zeros(50, dtype=torch.long), classes=["a"], name="imagefolder", source="")
    mean, std = normalization_stats(ds)
    x = images.double() / 255
    assert mean == pytest.approx(x.mean(dim=(0, 2, 3)).tolist(), abs=1e-9)
    assert std == pytest.approx(x.std(dim=(0, 2, 3), unbiased=False).tolist(), abs=1e-9)
    assert mean[2] < mean[0] / 2


def test_normalize_uint8_and_float():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (4, 3, 5, 5), generator=g, dtype=torch.uint8)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    out = normalize(images, mean, std)
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    assert out.dtype == torch.float32 and out.shape == images.shape
    assert torch.allclose(out, (images.float() / 255 - m) / s, atol=1e-6)
    as_float = images.float() / 255
    kept = as_float.clone()
    assert torch.allclose(normalize(as_float, mean, std), out, atol=1e-6)  # float input is taken as [0, 1]
    assert torch.equal(as_float, kept)  # and never modified in place
    half = normalize(images, mean, std, dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16 and torch.allclose(half.float(), out, atol=0.05)


def test_normalize_checks_channels():
    with pytest.raises(VisionlaunchError, match="1 mean and 1 std values but the images have 3 channel"):
        normalize(torch.zeros(1, 3, 2, 2, dtype=torch.uint8), (0.5,), (0.2,))
    with pytest.raises(VisionlaunchError, match="positive"):
        normalize(torch.zeros(1, 1, 2, 2, dtype=torch.uint8), (0.5,), (0.0,))
