"""Per-channel normalisation: the published constants for the standard datasets, measured ones otherwise."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from visionlaunch.datasets.imageset import ImageSet
from visionlaunch.datasets.source import decode_or_stand_in
from visionlaunch.errors import VisionlaunchError

# The smallest std normalisation divides by: one grey level of a uint8 image. A channel with less spread (pure red
# images have a red channel of std 0) would be divided by (almost) zero; at this floor it stays finite.
STD_FLOOR = 1 / 255

# The constants everyone uses, so runs compare with published numbers (the sample uses full MNIST's, on purpose).
PUBLISHED = {
    "mnist": ((0.1307,), (0.3081,)),
    "mnist_sample": ((0.1307,), (0.3081,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


def measure_stats(images: torch.Tensor, chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean and (population) std per channel of uint8 images on [0, 1], from a histogram of the 256 byte values
    per channel: exact, and far faster than float arithmetic on every pixel."""
    if len(images) == 0:
        raise VisionlaunchError("cannot compute normalisation statistics of an empty training set; "
                                "check data.train_subset and data.val_size.")
    channels = images.shape[1]
    hist = torch.zeros(channels, 256, dtype=torch.int64)
    for start in range(0, len(images), chunk):
        part = images[start:start + chunk].cpu()
        for c in range(channels):
            hist[c] += torch.bincount(part[:, c].reshape(-1), minlength=256)
    return _stats_from_histogram(hist)


# Out of core, the statistics come from this many training images drawn at random (seeded): enough for three
# decimals, and bounded, where decoding every image of a large dataset would cost as much as an epoch.
STATS_SAMPLE = 2000


def _stats_from_histogram(hist: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    values = torch.arange(256, dtype=torch.float64) / 255
    n = hist[0].sum().double()
    mean = (hist * values).sum(1) / n
    var = (hist * values.square()).sum(1) / n - mean.square()
    return tuple(mean.tolist()), tuple(var.clamp_min(0).sqrt().tolist())


def measure_source_stats(source, limit: int = STATS_SAMPLE, seed: int = 0):
    """`measure_stats` of an indexed source: every image when it holds at most `limit`, else `limit` of them drawn
    at random (seeded), each decoded once."""
    n = len(source)
    if n == 0:
        return measure_stats(torch.empty(0, 1, 1, 1, dtype=torch.uint8))  # its error message
    pick = range(n) if n <= limit else np.sort(np.random.default_rng(seed).choice(n, limit, replace=False))
    hist = torch.zeros(source.shape[0], 256, dtype=torch.int64)
    warned: set[int] = set()
    for i in pick:  # an unreadable file is named here first, and its stand-in counted (source.py's rule)
        pixels = torch.from_numpy(np.require(decode_or_stand_in(source, int(i), warned)[0], requirements=("C", "W")))
        for c in range(hist.shape[0]):
            hist[c] += torch.bincount(pixels[..., c].reshape(-1), minlength=256)
    return _stats_from_histogram(hist)


def normalization_stats(train, log: Callable[[str], None] = print) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The published constants of a standard dataset, else the training images' own (an ImageSet's, or at most
    STATS_SAMPLE images of an indexed source), each std at least STD_FLOOR (a NOTE on `log` says which channels
    were raised)."""
    published = PUBLISHED.get(train.name)
    if published is not None and len(published[0]) == train.shape[0]:
        return published
    mean, std = measure_stats(train.images) if isinstance(train, ImageSet) else measure_source_stats(train)
    flat = [c for c, s in enumerate(std) if s < STD_FLOOR]
    if flat:
        log(f"NOTE: channel{'s' if len(flat) > 1 else ''} {', '.join(map(str, flat))} of the {train.name} training "
            f"images {'vary' if len(flat) > 1 else 'varies'} by less than one grey level (std "
            f"{', '.join(f'{std[c]:.4f}' for c in flat)}): normalisation divides {'them' if len(flat) > 1 else 'it'} "
            f"by {STD_FLOOR:.4f} (one grey level) instead of by (almost) zero. A constant channel tells the classes "
            "nothing; training learns from the others.")
    return mean, tuple(max(s, STD_FLOOR) for s in std)


def normalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float],
              dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(x - mean) / std per channel of an NCHW batch. uint8 is scaled to [0, 1] first; float is taken as [0, 1]."""
    if len(mean) != images.shape[1]:
        raise VisionlaunchError(
            f"normalisation has {len(mean)} mean and {len(std)} std values but the images have {images.shape[1]} "
            "channel(s); give one mean and one std per channel.")
    compute = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype  # full precision, then cast
    return normalize_with(images, *normalization_tensors(mean, std, images.device, compute), dtype)


def normalization_tensors(mean: Sequence[float], std: Sequence[float], device: torch.device | str = "cpu",
                          dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Checked mean and std as (1, C, 1, 1) tensors on `device`, for `normalize_with`. Made once per run: on a
    GPU each torch.tensor(..., device=cuda) is a blocking copy that stalls the queue of kernels."""
    if len(mean) != len(std):
        raise VisionlaunchError(f"normalisation has {len(mean)} mean but {len(std)} std values; give one mean and "
                                "one std per channel.")
    if any(s <= 0 for s in std):
        raise VisionlaunchError(f"normalisation std values must be positive, got {tuple(std)}.")
    return (torch.tensor(mean, dtype=dtype, device=device).view(1, -1, 1, 1),
            torch.tensor(std, dtype=dtype, device=device).view(1, -1, 1, 1))


def normalize_with(images: torch.Tensor, m: torch.Tensor, s: torch.Tensor,
                   dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """`normalize` with the tensors of `normalization_tensors` (their dtype is the one computed in), unchecked:
    per batch, with constants measured on the same data."""
    if images.dtype == torch.uint8:
        # The conversion made a new tensor, so in-place steps save memory without touching the input.
        return images.to(m.dtype).div_(255).sub_(m).div_(s).to(dtype)
    return ((images.to(m.dtype) - m) / s).to(dtype)
