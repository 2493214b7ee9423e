"""The ffcv backend: .beton round trips give back the exact pixels and labels (real MNIST, an RGB set), the FFCV
loader follows the same seeded, rank-sharded order as the tensor and torch backends (so every sample is seen
exactly once per epoch, with its own label), its augmentations have the same statistics, and damaged, foreign,
stale or half-written files are refused.

numba compiles every new FFCV pipeline (13-15 s for the first one in a process on the 2-core VM), so the files
and loaders are module fixtures and every test has a timeout: an error inside an FFCV worker hangs instead of
raising.
"""

import os

import numpy as np
import pytest
import torch

from tests.conftest import require_ffcv, require_shared_data
from visionlaunch.datasets import BatchAugment, load_dataset
from visionlaunch.datasets.loaders import TensorLoader, TorchLoader
from visionlaunch.trainers.data import make_loader

pytestmark = pytest.mark.timeout(300)
CPU = torch.device("cpu")
SIDE = 15  # coded images: pixel (y, x) holds 1 + y * SIDE + x (<= 225, fits uint8; 0 = fill)


def coded_images(n: int, channels: int = 3) -> np.ndarray:
    pos = 1 + np.arange(SIDE * SIDE, dtype=np.uint8).reshape(SIDE, SIDE)
    return np.ascontiguousarray(np.broadcast_to(pos[None, :, :, None], (n, SIDE, SIDE, channels)))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Betons written once: the real MNIST test split (grayscale), a random RGB set, and coded RGB images."""
    require_ffcv()
    from visionlaunch.ffcv_builders import write_beton, write_imageset

    root = tmp_path_factory.mktemp("ffcv")
    data = require_shared_data()
    mnist = load_dataset("mnist", "test", root=data, cache_dir=root / "cache", progress=False)
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (700, 32, 32, 3), dtype=np.uint8)
    rgb_labels = rng.integers(0, 100, 700)
    n_coded = 3000
    coded_labels = np.arange(n_coded) % 10
    out = {"root": root, "mnist": mnist, "rgb": (rgb, rgb_labels), "coded_n": n_coded}
    out["mnist_beton"] = root / "mnist-test.beton"
    write_imageset(mnist, out["mnist_beton"], split="test", progress=False)
    out["rgb_beton"] = root / "rgb.beton"
    write_beton(rgb, rgb_labels, out["rgb_beton"], num_classes=100, dataset="rgb", split="train", progress=False)
    out["rgb_jpeg"] = root / "rgb-jpeg.beton"
    write_beton(rgb, rgb_labels, out["rgb_jpeg"], num_classes=100, dataset="rgb", split="train", encoding="jpeg",
                jpeg_quality=95, progress=False)
    out["coded_beton"] = root / "coded.beton"
    write_beton(coded_images(n_coded), coded_labels, out["coded_beton"], num_classes=10, dataset="coded",
                split="train", progress=False)
    return out


def _read_all(path, **kwargs):
    from visionlaunch.ffcv_builders import FfcvLoader

    loader = FfcvLoader(path, 256, train=False, seed=0, device=CPU, clone=True, **kwargs)
    images, labels = zip(*loader)
    return torch.cat(images), torch.cat(labels)


def test_round_trip_real_mnist_is_exact(files):
    images, labels = _read_all(files["mnist_beton"])
    assert images.dtype == torch.uint8 and images.shape == (10000, 1, 28, 28)
    assert torch.equal(images, files["mnist"].images) and torch.equal(labels, files["mnist"].labels)


def test_round_trip_rgb_is_exact_raw_and_close_as_jpeg(files):
    rgb, rgb_labels = files["rgb"]
    images, labels = _read_all(files["rgb_beton"])
    assert torch.equal(images, torch.from_numpy(rgb).permute(0, 3, 1, 2)) and labels.tolist() == rgb_labels.tolist()
    images, labels = _read_all(files["rgb_jpeg"])
    assert labels.tolist() == rgb_labels.tolist()
    error = (images.float() - torch.from_numpy(rgb).permute(0, 3, 1, 2).float()).abs().mean()
    assert 0 < error < 60  # lossy, and random noise is JPEG's worst case, but the images are still the same ones


def test_manifest_describes_the_file(files):
    from visionlaunch.ffcv_builders import check_beton
    from visionlaunch.ffcv_builders.writer import imageset_arrays
    from visionlaunch.ffcv_builders.manifest import source_digest

    m = check_beton(files["mnist_beton"], dataset="mnist", split="test",
                    source_sha256=source_digest(*imageset_arrays(files["mnist"])))
    assert (m.count, m.shape, m.num_classes, m.encoding) == (10000, [28, 28, 1], 10, "raw")
    assert m.beton_bytes == files["mnist_beton"].stat().st_size


def _label_loaders(files, train, rank=0, world=1, batch=64):
    """The three backends over the same samples: labels are the sample index, so order is visible."""
    mnist = files["mnist"]
    idx = torch.arange(len(mnist))
    kw = dict(train=train, seed=7, device=CPU, rank=rank, world=world)
    from visionlaunch.ffcv_builders import FfcvLoader
    return {"tensor": TensorLoader(mnist.images, idx, batch, **kw),
            "torch": TorchLoader(mnist.images, idx, batch, num_workers=0, **kw),
            "ffcv": FfcvLoader(files["mnist_beton"], batch, **kw)}


@pytest.fixture(scope="module")
def train_loaders(files):
    return _label_loaders(files, train=True)


def test_seeded_epochs_match_the_other_backends_and_keep_labels_attached(files, train_loaders):
    mnist = files["mnist"]
    for epoch in (0, 1):
        orders = {}
        for kind in ("tensor", "torch"):  # labels are sample indices here
            loader = train_loaders[kind]
            loader.set_epoch(epoch)
            batches = list(loader)
            assert len(batches) == len(loader) == 10000 // 64  # the last partial batch is dropped
            for x, y in batches:
                assert torch.equal(x, mnist.images[y])  # each image comes with its own index
            orders[kind] = torch.cat([y for _, y in batches])
            assert len(set(orders[kind].tolist())) == len(orders[kind]) == 10000 // 64 * 64  # each sample once
        assert torch.equal(orders["tensor"], orders["torch"])
        assert not torch.equal(orders["tensor"], orders["tensor"].sort().values)  # shuffled
        # FFCV reads the .beton (real labels): the same images, with their labels, in the same order.
        ffcv = train_loaders["ffcv"]
        ffcv.set_epoch(epoch)
        batches = [(x.clone(), y) for x, y in ffcv]
        assert len(batches) == len(ffcv) == 10000 // 64
        assert torch.equal(torch.cat([x for x, _ in batches]), mnist.images[orders["tensor"]])
        assert torch.equal(torch.cat([y for _, y in batches]), mnist.labels[orders["tensor"]])


def test_resume_mid_epoch_continues_at_the_exact_batch(files, train_loaders):
    t, f = train_loaders["tensor"], train_loaders["ffcv"]
    mnist_labels = files["mnist"].labels
    t.set_epoch(2)
    full = [mnist_labels[y] for _, y in t]
    f.set_epoch(2, start_batch=100)
    rest = [y for _, y in f]
    assert len(rest) == len(full) - 100
    assert all(torch.equal(a, b) for a, b in zip(rest, full[100:]))


def test_evaluation_and_rank_shards_cover_every_sample_exactly_once(files):
    from visionlaunch.ffcv_builders import FfcvLoader

    mnist = files["mnist"]
    # Evaluation keeps the last partial batch (drop_last=False) and reads in file order.
    loader = FfcvLoader(files["mnist_beton"], 300, train=False, seed=0, device=CPU, rank=1, world=2, clone=True)
    images = torch.cat([x for x, _ in loader])
    assert torch.equal(images, mnist.images[1::2])  # rank 1 of 2: positions 1, 3, 5, ... all 5,000 of them
    # Training shards of 2 ranks: disjoint, equal length, together the whole epoch.
    shards = []
    for rank in range(2):
        f = FfcvLoader(files["mnist_beton"], 50, train=True, seed=3, device=CPU, rank=rank, world=2)
        f.set_epoch(1)
        t = TensorLoader(mnist.images, torch.arange(len(mnist)), 50, train=True, seed=3, device=CPU, rank=rank,
                         world=2)
        t.set_epoch(1)
        order = torch.cat([y for _, y in t])
        assert torch.equal(torch.cat([y for _, y in f]), mnist.labels[order])
        shards.append(set(order.tolist()))
    assert not shards[0] & shards[1] and len(shards[0]) == len(shards[1]) == 5000


def _augmentation_draws(images: torch.Tensor, p: int):
    """(flipped, dy, dx) of each augmented coded image (see coded_images), read back from its pixel values."""
    x = images[:, 0].long()  # (N, H, W); every channel is the same
    n = len(x)
    rows = torch.arange(SIDE).view(1, SIDE, 1).expand(n, SIDE, SIDE)
    cols = torch.arange(SIDE).view(1, 1, SIDE).expand(n, SIDE, SIDE)
    src_y, src_x = (x - 1) // SIDE, (x - 1) % SIDE
    valid = x > 0
    flipped, dy, dx = [], [], []
    for i in range(n):
        v = valid[i]
        sy, sx, r, c = src_y[i][v], src_x[i][v], rows[i][v], cols[i][v]
        d_y = (sy - r).unique()
        forward, backward = (sx - c).unique(), (sx + c).unique()
        assert len(d_y) == 1 and (len(forward) == 1 or len(backward) == 1), "not a rigid shift/flip"
        flip = len(forward) != 1
        flipped.append(flip)
        dy.append(int(d_y))
        dx.append(int(backward) - (SIDE - 1) if flip else int(forward))
    return torch.tensor(flipped), torch.tensor(dy), torch.tensor(dx)


@pytest.fixture(scope="module")
def augmented(files):
    """2 px translate + flip, then cutout alone, through every backend, on the same coded images."""
    from visionlaunch.ffcv_builders import FfcvLoader

    n = files["coded_n"]
    coded = torch.from_numpy(coded_images(n)).permute(0, 3, 1, 2).contiguous()
    labels = torch.arange(n) % 10
    out = {}
    for name, aug in (("shift_flip", dict(crop_padding=2, flip=True)), ("cutout", dict(cutout=6))):
        batch_aug, gen = BatchAugment(**aug), torch.Generator().manual_seed(0)
        for kind in ("tensor", "torch"):
            loader = make_loader(kind, coded, labels, 500, train=True, seed=0, device=CPU, num_workers=0)
            out[kind, name] = torch.cat([batch_aug(x, gen) for x, _ in loader])
        ffcv = FfcvLoader(files["coded_beton"], 500, train=True, seed=0, device=CPU, clone=True, **aug)
        out["ffcv", name] = torch.cat([x for x, _ in ffcv])
    return out


@pytest.mark.parametrize("kind", ["tensor", "torch", "ffcv"])
def test_flip_rate_and_translate_range_agree_across_backends(augmented, kind):
    flipped, dy, dx = _augmentation_draws(augmented[kind, "shift_flip"], p=2)
    n = len(flipped)
    assert abs(flipped.float().mean().item() - 0.5) < 0.05  # binomial sd 0.009 for 3,000 images
    for d in (dy, dx):
        assert sorted(d.unique().tolist()) == [-2, -1, 0, 1, 2]  # exactly the range [-p, p]
        freq = torch.bincount(d + 2, minlength=5).float() / n
        assert (freq - 0.2).abs().max() < 0.04, freq  # uniform: sd 0.007 per value


@pytest.mark.parametrize("kind", ["tensor", "torch", "ffcv"])
def test_cutout_covers_the_same_area_on_every_backend(augmented, kind):
    zero = (augmented[kind, "cutout"][:, 0] == 0).float()
    # Clipped cutout: centre uniform over the image, square clipped at the borders. Expected side per axis:
    side = np.mean([min(c - 3 + 6, SIDE) - max(c - 3, 0) for c in range(SIDE)])
    expected = (side / SIDE) ** 2  # 0.1296; a square kept inside the image (FFCV's Cutout) would give 0.16
    assert abs(zero.mean().item() - expected) < 0.01
    # One square per image, never more than 6 x 6.
    assert zero.sum((1, 2)).max().item() <= 36 and (zero.sum((1, 2)) >= 9).all()


def test_ffcv_leaves_torch_thread_count_alone(files):
    # FFCV itself sets torch's intra-op threads to its worker count (and to 1 on import): the model's compute
    # speed would silently depend on data.num_workers.
    from visionlaunch.ffcv_builders import FfcvLoader

    if (os.cpu_count() or 1) < 2:
        pytest.skip("needs 2 cores to tell 1 thread from 2")
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        loader = FfcvLoader(files["rgb_beton"], 100, train=True, seed=0, device=CPU, num_workers=2, flip=True)
        assert sum(len(y) for _, y in loader) == 700
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(saved)
