"""Seeded, class-stratified selections: the hold-out of the training set for validation, and the subsets of quick
runs (data.train_subset / data.test_subset). Stratified, because datasets are often stored class by class (an
ImageFolder always is): the first N images of one would be a single class. They apply to an in-memory ImageSet and
to an indexed source (source.py) alike."""

from __future__ import annotations

import hashlib
import math
import numbers

import torch

from visionlaunch.datasets.imageset import ImageSet
from visionlaunch.datasets.source import subset
from visionlaunch.errors import VisionlaunchError


def stratified_indices(labels: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
    """`count` positions drawn at random with each class's share as close as possible to its share of `labels`.

    Per-class counts are the floors of the exact quotas, the leftover going to the largest remainders (ties to
    the lower class), so the total is exactly `count`. Returned sorted.
    """
    labels = torch.as_tensor(labels).cpu()
    classes, sizes = torch.unique(labels, return_counts=True)
    quotas = sizes.double() * count / len(labels)
    take = quotas.floor().long()
    leftover = count - int(take.sum())
    order = sorted(range(len(classes)), key=lambda i: (-(quotas[i] - take[i]).item(), i))
    for i in order[:leftover]:
        take[i] += 1
    picked = []
    for cls, k in zip(classes.tolist(), take.tolist()):
        members = torch.nonzero(labels == cls).flatten()
        picked.append(members[torch.randperm(len(members), generator=generator)[:k]])
    return torch.cat(picked).sort().values if picked else torch.empty(0, dtype=torch.long)


def _val_count(val_size: int | float, n: int) -> int:
    if isinstance(val_size, bool) or not isinstance(val_size, numbers.Real) or math.isnan(val_size):
        problem = f"is {val_size!r}"
    elif val_size == 0:
        return 0
    # A whole float >= 1 (e.g. 5000.0 from YAML) is a count, as the config also reads it.
    elif isinstance(val_size, numbers.Integral) or (val_size >= 1 and float(val_size).is_integer()):
        count = int(val_size)
        if 0 < count < n:
            return count
        problem = f"asks for {count} images but the training set has {n}"
    elif 0 < val_size < 1:
        if n >= 2:
            # At least one image on each side: a fraction never silently empties either set.
            return min(max(round(val_size * n), 1), n - 1)
        problem = f"cannot split a training set of {n} image(s)"
    else:
        problem = f"is {val_size!r}"
    raise VisionlaunchError(
        f"data.val_size {problem}: expected a count of images to hold out (0 for none, at most {n - 1}) or a "
        f"fraction strictly between 0 and 1, leaving at least one training image. Set data.val_size accordingly.")


def train_val_split(train: ImageSet, val_size: int | float, seed: int) -> tuple[ImageSet, ImageSet]:
    """Split `train` into (train, val): disjoint, together all of `train`, the same for the same seed."""
    count = _val_count(val_size, len(train))
    generator = torch.Generator().manual_seed(int(seed))
    val_index = stratified_indices(train.labels, count, generator)
    keep = torch.ones(len(train), dtype=torch.bool)
    keep[val_index] = False
    rest, val = subset(train, keep), subset(train, val_index)
    rest.source = f"{train.source} [training part: {len(rest)} of {len(train)}, val split seed {seed}]"
    val.source = f"{train.source} [validation part: {len(val)} of {len(train)}, val split seed {seed}]"
    return rest, val


def stratified_subset(ds: ImageSet, count: int | None, seed: int, split: str) -> ImageSet:
    """`count` images of `ds` drawn with each class's share kept (stratified_indices), the same for the same
    seed; all of `ds` when `count` is None or not smaller. Kept in dataset order."""
    if count is None or count >= len(ds):
        return ds
    # A stream of its own per split, unrelated to the val split's (which draws with `seed` itself).
    digest = hashlib.sha256(f"visionlaunch-subset:{split}:{int(seed)}".encode()).digest()
    generator = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)
    picked = subset(ds, stratified_indices(ds.labels, count, generator))
    picked.source = f"{ds.source} [{split} subset: {count} of {len(ds)}, class-stratified, seed {seed}]"
    return picked


def class_coverage_warning(ds: ImageSet, what: str) -> str | None:
    """A warning when `ds` holds fewer classes than the dataset has (a subset too small, a tiny val split)."""
    if not len(ds) or len(ds.classes) < 2:
        return None
    present = int(torch.unique(torch.as_tensor(ds.labels)).numel())
    if present == len(ds.classes):
        return None
    consequence = ("every image has the same label, so its accuracy says nothing (100% is trivially reached)"
                   if present == 1 else "its accuracy does not cover the missing classes")
    return (f"WARNING: the {what} set holds images of only {present} of {len(ds.classes)} classes ({len(ds)} "
            f"images): {consequence}. Use a larger data.train_subset / data.test_subset / data.val_size.")
