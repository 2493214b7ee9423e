"""`load_dataset`: one entry point from a dataset name and split to an ImageSet, through the cache.

Decode once: the cache keeps decoded uint8 tensors on disk, keyed by dataset, split and a fingerprint of the
source files. The fingerprint is each source file's resolved path, size and mtime (plus a format version), so
replacing or editing a source file makes a new key and the data is read again. A cache file that cannot be read is
ignored with a warning and rebuilt; a cache that cannot be written only costs speed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import warnings
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path

import torch

from visionlaunch.atomic import atomic_torch_save
from visionlaunch.datasets import cifar, imagefolder, mnist
from visionlaunch.datasets.entries import seekable
from visionlaunch.datasets.folder_index import FolderSource
from visionlaunch.datasets.imageset import ImageSet
from visionlaunch.datasets.source import ArraySource
from visionlaunch.errors import VisionlaunchError, describe_load_failure, describe_os_error

DATASET_NAMES = ("mnist", "mnist_sample", "cifar10", "cifar100", "imagefolder")
SPLITS = ("train", "test")


def load_dataset(name: str, split: str, *, root: Path, path: str | None = None, download: bool = False,
                 verify: bool = True, cache_dir: Path | None = None, progress: bool = True,
                 image_size: int | None = None, max_upscale: float = 4.0, scanned=None) -> ImageSet:
    """One split of a dataset as uint8 tensors; `cache_dir=None` reads the sources every time. Raises
    DatasetNotFound when the files are absent (a caller may fall back), VisionlaunchError when they are wrong.
    `scanned`: an ImageFolder folder's imagefolder.scan, when the caller has walked it already."""
    if name not in DATASET_NAMES:
        raise VisionlaunchError(f"unknown dataset {name!r} (data.name); valid names: {', '.join(DATASET_NAMES)}.")
    if split not in SPLITS:
        raise VisionlaunchError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}.")
    if path is not None and name != "imagefolder":
        raise VisionlaunchError(
            f"data.path={path!r} only applies to data.name=imagefolder, but data.name is {name!r}. Remove "
            "data.path, or use data.root to say where the dataset's folder lives.")
    root = Path(root)
    try:
        if name == "mnist_sample":
            # Imported here, so that `python -m visionlaunch.datasets.mnist_sample` does not find itself imported.
            from visionlaunch.datasets.mnist_sample import load_mnist_sample

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
            files = imagefolder.source_files(location, scanned)
            source_key = str(location)
            build = partial(imagefolder.read, location, split, progress=progress, scanned=scanned)
            if image_size:  # its own cache entry per stored size and upscale limit, beside the original-size one
                source_key += f"@{image_size}px-up{max_upscale:g}"
                build = partial(build, image_size=image_size, max_upscale=max_upscale)
            verify = True  # no checksums exist for a user's folder: every structure check always runs
        if cache_dir is None:
            return build()
        return cached(Path(cache_dir), name, split, source_key, files, build, verified=verify)
    except OSError as exc:  # a file or folder of the dataset that cannot be read (permissions, a folder, ...)
        raise VisionlaunchError(f"cannot read the {name} dataset: {describe_os_error(exc)}") from exc


def open_source(name: str, split: str, *, root: Path, path: str | None = None, progress: bool = True,
                image_size: int | None = None, max_upscale: float = 4.0, estimate: bool = False,
                scanned=None, **read):
    """One split as an indexed source (source.py) that decodes a sample when asked: for an ImageFolder an index of
    its files (or of a seekable archive's members: an uncompressed .tar, a .zip), nothing decoded; the canonical
    datasets, small enough to hold, over their arrays (`load_dataset`); a compressed tar, which can only be read
    from its start, read into memory (its source cannot be read out of core).
    `estimate`: an ImageFolder index good for planning only (FolderSource). `scanned`: the folder's
    imagefolder.scan, when the caller has walked it already."""
    try:
        location = imagefolder.locate(Path(root), path) if name == "imagefolder" else None
        if location is None or (location.is_file() and not seekable(location)):
            data = load_dataset(name, split, root=Path(root), path=path, progress=progress, image_size=image_size,
                                max_upscale=max_upscale, **read)
            return ArraySource(data, streams=location is None)
        return FolderSource(location, split, image_size=image_size, max_upscale=max_upscale, progress=progress,
                            estimate=estimate, scanned=scanned)
    except OSError as exc:
        raise VisionlaunchError(f"cannot read the imagefolder dataset: {describe_os_error(exc)}") from exc


# --- the cache ---------------------------------------------------------------------------------------------

FORMAT_VERSION = 2  # bump when readers change what they produce, so old caches are not reused


def _digest(text: str, n: int) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:n]


def cache_path(cache_dir: Path, name: str, split: str, source_key: str, files: Iterable[str | Path]) -> Path:
    # name-split-<where>-<what>: <where> (the source location) lets a rebuild delete the entry it replaces. <what>
    # hashes one line per file as it goes: the lines of a million files joined would be hundreds of MiB.
    what = hashlib.sha256(f"visionlaunch-cache-v{FORMAT_VERSION}".encode())
    for f in files:
        st = os.stat(f)
        what.update(f"\n{os.path.realpath(f)}\t{st.st_size}\t{st.st_mtime_ns}".encode())
    where = _digest(os.path.realpath(source_key), 8)
    return Path(cache_dir) / f"{name}-{split}-{where}-{what.hexdigest()[:16]}.pt"


def _read_cache(path: Path, name: str, need_verified: bool) -> ImageSet | None:
    if not path.is_file():
        return None
    try:
        entry = torch.load(path, map_location="cpu", weights_only=True)
        if entry.get("version") != FORMAT_VERSION or entry.get("name") != name:
            raise ValueError(f"format version {entry.get('version')} / name {entry.get('name')!r} do not match")
        if need_verified and not entry["verified"]:
            return None  # built with verify=False: read (and check) the sources again; not an error
        return ImageSet(**{field.name: entry[field.name] for field in dataclasses.fields(ImageSet)})
    except Exception as exc:  # truncated file, foreign pickle, wrong dtypes: all mean "rebuild"
        reason = describe_load_failure(exc) if not isinstance(exc, ValueError) else str(exc)
        warnings.warn(f"ignoring unreadable dataset cache file {path} ({reason}); "
                      "reading the dataset again and rewriting it", RuntimeWarning, stacklevel=3)
        return None


def _write_cache(path: Path, data: ImageSet, verified: bool) -> None:
    # Every field, the content check's `unofficial` included, so its NOTE survives the cache.
    entry = {"version": FORMAT_VERSION, "verified": verified, **vars(data)}
    try:
        atomic_torch_save(entry, path)
    except OSError as exc:  # a full disk or a file-size limit included: the cache only saves time
        warnings.warn(f"could not write dataset cache file {path} ({exc.strerror}); continuing without the cache",
                      RuntimeWarning, stacklevel=3)
        return
    # Entries for earlier versions of the same source are dead weight now.
    stem = path.name.rsplit("-", 1)[0]
    for old in path.parent.glob(f"{stem}-*.pt"):
        if old != path:
            old.unlink(missing_ok=True)


def cached(cache_dir: Path, name: str, split: str, source_key: str, files: Iterable[str | Path],
           build: Callable[[], ImageSet], *, verified: bool) -> ImageSet:
    """The cached ImageSet for these source files, else `build()`, stored. `verified`: whether `build` checks
    checksums; a cache built unverified is not used by a verified load."""
    path = cache_path(cache_dir, name, split, source_key, files)
    data = _read_cache(path, name, need_verified=verified)
    if data is None:
        data = build()
        _write_cache(path, data, verified)
    return data
