"""`load_dataset`: one entry point from a dataset name and split to an ImageSet, through the cache."""

from __future__ import annotations

from functools import partial
from pathlib import Path

from visionlaunch.datasets import cifar, imagefolder, mnist
from visionlaunch.datasets.cache import cached
from visionlaunch.datasets.imageset import ImageSet
from visionlaunch.datasets.embedded_sample import load_mnist_sample
from visionlaunch.errors import VisionlaunchError, describe_os_error

DATASET_NAMES = ("mnist", "mnist_sample", "cifar10", "cifar100", "imagefolder")
SPLITS = ("train", "test")


def load_dataset(name: str, split: str, *, root: Path, path: str | None = None, download: bool = False,
                 verify: bool = True, cache_dir: Path | None = None, progress: bool = True,
                 image_size: int | None = None, max_upscale: float = 4.0) -> ImageSet:
    """Load one split of a dataset as uint8 tensors.

    Raises DatasetNotFound when the files are absent (so a caller may fall back), VisionlaunchError when they
    are present but wrong. `cache_dir=None` reads the sources every time.
    """
    if name not in DATASET_NAMES:
        raise VisionlaunchError(f"unknown dataset {name!r} (data.name); valid names: {', '.join(DATASET_NAMES)}.")
    if split not in SPLITS:
        raise VisionlaunchError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}.")
    if path is not None and name != "imagefolder":
        raise VisionlaunchError(
            f"data.path={path!r} only applies to data.name=imagefolder, but data.name is {name!r}. Remove "
            "data.path, or use data.root to say where the dataset's folder lives.")
    if image_size is not None and name != "imagefolder":
        raise VisionlaunchError(f"image_size (data.image_size) applies to imagefolder only, not {name!r}.")
    try:
        return _load(name, split, Path(root), path, download, verify, cache_dir, progress, image_size, max_upscale)
    except OSError as exc:  # a file or folder of the dataset that cannot be read (permissions, a folder, ...)
        raise VisionlaunchError(f"cannot read the {name} dataset: {describe_os_error(exc)}") from exc


def _load(name: str, split: str, root: Path, path: str | None, download: bool, verify: bool,
          cache_dir: Path | None, progress: bool, image_size: int | None = None,
          max_upscale: float = 4.0) -> ImageSet:
    if name == "mnist_sample":
        return load_mnist_sample(split)  # already small and fast to read: nothing to cache
    if name == "mnist":
        files = mnist.locate(root, split, download)
        source_key = str(files[0].parent)
        build = partial(mnist.read, files, split, verify=verify)
    elif name in ("cifar10", "cifar100"):
        files = cifar.locate(name, root, split, download)
        source_key = str(files[0].parent)
        build = partial(cifar.read, name, files, split, verify=verify)
    else:
        location = imagefolder.locate(root, path)
        files = imagefolder.source_files(location)
        source_key = str(location)
        build = partial(imagefolder.read, location, split, progress=progress)
        if image_size:  # its own cache entry per stored size and upscale limit, beside the original-size one
            source_key += f"@{image_size}px-up{max_upscale:g}"
            build = partial(build, image_size=image_size, max_upscale=max_upscale)
        verify = True  # no checksums exist for a user's folder: every structure check always runs
    if cache_dir is None:
        return build()
    return cached(Path(cache_dir), name, split, source_key, files, build, verified=verify)
