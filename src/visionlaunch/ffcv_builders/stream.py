"""A `.beton` written from an indexed source (datasets/source.py) without holding the split in memory: FFCV's
writer workers decode one sample at a time each (writer.publish), so memory is one page and one sample per worker
whatever the number of images.

What a source-written file was made from is its index, not its pixels: for an ImageFolder, every file's path,
size and modification time, the labels, and which of them the split selects (subset, validation split). Its
SHA-256 is the manifest's source digest, so decoding nothing tells whether the file is still current; the index
itself is kept beside the beton (`<name>.beton.index.npz`), so that a folder that changed since is described:
which files were added, removed or modified.

Array-backed sources (MNIST, CIFAR: held in memory anyway) are gathered and written as arrays, so their files are
the same whether the run reads them in memory or out of core.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from visionlaunch.atomic import atomic_write
from visionlaunch.datasets.folder_index import FolderSource
from visionlaunch.datasets.source import ArraySource, CenterCrop, Subset, decode_or_stand_in, decoded_bytes
from visionlaunch.errors import VisionlaunchError
from visionlaunch.ffcv_builders import require_ffcv
from visionlaunch.ffcv_builders.manifest import FORMAT, BetonManifest
from visionlaunch.ffcv_builders.photos import decode_photo
from visionlaunch.ffcv_builders.writer import (check_channels, check_encoding, image_field, publish,
                                               write_beton, writer_workers)


def _parts(ds):
    """(base source, positions into it, centre-crop size or None) of a split: a CenterCrop of a Subset of a base."""
    crop = None
    if isinstance(ds, CenterCrop):
        crop, ds = ds.size, ds.base
    if isinstance(ds, Subset):
        return ds.base, ds.index, crop
    return ds, np.arange(len(ds), dtype=np.int64), crop


def is_folder_backed(ds) -> bool:
    return isinstance(_parts(ds)[0], FolderSource)


def array_samples(ds) -> tuple[np.ndarray, np.ndarray]:
    """An array-backed split's samples as uint8 (N, H, W, C) and int64 labels."""
    return np.stack([ds.decode(i) for i in range(len(ds))]), np.asarray(ds.labels, dtype=np.int64)


class FolderIndex:
    """What a folder-backed split is made of: the base folder's file index (paths, sizes, modification times,
    labels), the positions the split selects, and how a sample is viewed (`view`)."""

    def __init__(self, ds, view: str):
        base, self.selection, _ = _parts(ds)
        self.prefix, self.paths, self.offsets = base.prefix, base._paths, base._offsets
        self.sizes, self.labels, self.classes = base.file_sizes, base.labels, list(base.classes)
        self.mtimes = base.mtimes()
        self.view = view

    def digest(self) -> str:
        h = hashlib.sha256(f"{FORMAT}|folder|{self.view}|{'/'.join(self.classes)}|{self.prefix}|".encode())
        for a in (self.paths, self.offsets, self.sizes, self.mtimes, self.labels, self.selection):
            h.update(len(a).to_bytes(8, "little"))
            h.update(memoryview(np.ascontiguousarray(a)).cast("B"))
        return h.hexdigest()

    def save(self, beton: Path, digest: str) -> None:
        with atomic_write(index_path(beton)) as tmp, open(tmp, "wb") as f:
            np.savez(f, prefix=np.array(self.prefix), paths=self.paths, offsets=self.offsets, sizes=self.sizes,
                     mtimes=self.mtimes, labels=self.labels, selection=self.selection, classes=np.array(self.classes),
                     view=np.array(self.view), digest=np.array(digest))

    def _files(self, prefix, paths, offsets, sizes, mtimes, labels) -> dict[str, tuple[int, int, int]]:
        return {prefix + os.fsdecode(paths[offsets[i]:offsets[i + 1]].tobytes()): (int(sizes[i]), int(mtimes[i]),
                                                                                    int(labels[i]))
                for i in range(len(offsets) - 1)}

    def describe_change(self, beton: Path, written_digest: str) -> str | None:
        """What differs between the index the beton was written from and this one (None: unknown)."""
        try:
            with np.load(index_path(beton)) as old:
                if str(old["digest"]) != written_digest:
                    return None  # the saved index belongs to another version of the file
                before = self._files(str(old["prefix"]), old["paths"], old["offsets"], old["sizes"], old["mtimes"],
                                     old["labels"])
                old_classes, old_selection, old_view = list(old["classes"]), old["selection"], str(old["view"])
        except (OSError, KeyError, ValueError):
            return None
        now = self._files(self.prefix, self.paths, self.offsets, self.sizes, self.mtimes, self.labels)
        changes = []

        def named(what: str, names: list[str]) -> None:
            if names:
                changes.append(f"{len(names)} file{'s' if len(names) > 1 else ''} {what} (first: {sorted(names)[0]})")

        named("added", [p for p in now if p not in before])
        named("removed", [p for p in before if p not in now])
        named("modified (size or modification time)",
              [p for p, v in now.items() if p in before and before[p][:2] != v[:2]])
        if old_classes != self.classes:
            changes.append(f"the classes changed from {len(old_classes)} to {len(self.classes)} folders")
        if not changes and not np.array_equal(old_selection, self.selection):
            changes.append("the same files, but another selection of them (data.val_size, data.split_seed, "
                           "data.train_subset or data.test_subset changed)")
        if not changes and old_view != self.view:
            changes.append(f"the images are stored differently ({old_view} then, {self.view} now)")
        return "; ".join(changes) or None


def index_path(beton: Path) -> Path:
    return Path(str(beton) + ".index.npz")


class SourceSamples:
    """What FFCV's writer workers index: sample i of the split as (uint8 H x W x C image, label). `photo`
    (max_side, image_size, max_upscale) reads the photo at its own aspect ratio (photos.py) instead of the
    source's fixed-size view. An unreadable image is named and replaced by the next sample that decodes
    (source.decode_or_stand_in); other refusals raise a VisionlaunchError (writer._worker passes it on)."""

    def __init__(self, ds, photo: tuple[int, int, float] | None = None):
        self.ds, self.photo, self.labels = ds, photo, np.asarray(ds.labels, dtype=np.int64)
        self.warned: set[int] = set()
        if photo is not None:
            self.base, self.index, _ = _parts(ds)

    def __len__(self) -> int:
        return len(self.labels)

    def decode(self, i: int) -> np.ndarray:
        if self.photo is not None:
            k = int(self.index[i])
            return decode_photo(self.base.payload(k), self.base.display(k), *self.photo)
        return np.ascontiguousarray(self.ds.decode(i))

    def __getitem__(self, i: int):
        image, decoded = decode_or_stand_in(self, i, self.warned)
        return image, int(self.labels[decoded])


def write_source(ds, path: Path, *, dataset: str, split: str, encoding: str = "raw", jpeg_quality: int = 90,
                 num_workers: int = 2, progress: bool = True, image_size: int | None = None,
                 max_side: int | None = None, max_upscale: float = 4.0, index: FolderIndex | None = None,
                 log=print) -> BetonManifest:
    """Write the split `ds` (an indexed source) to `path`, streaming; with `max_side`, the photos of a
    folder-backed split at their own aspect ratio, the longer side at most max_side px. `index`: the split's
    FolderIndex when the caller has it already."""
    base = _parts(ds)[0]
    num_classes = len(ds.classes)
    if isinstance(base, ArraySource):
        images, labels = array_samples(ds)
        return write_beton(images, labels, path, num_classes=num_classes, dataset=dataset, split=split,
                           encoding=encoding, jpeg_quality=jpeg_quality, num_workers=num_workers, progress=progress,
                           image_size=image_size, log=log)
    if not isinstance(base, FolderSource):
        raise VisionlaunchError(f"cannot write {dataset} {split} to an FFCV file: {type(base).__name__} is not a "
                                "source this version converts (an ImageFolder folder, MNIST or CIFAR).")
    check_encoding(encoding, jpeg_quality)
    c, h, w = ds.shape
    check_channels(encoding, c, dataset)
    labels = np.asarray(ds.labels, dtype=np.int64)
    if len(labels) == 0 or labels.min() < 0 or labels.max() >= num_classes:
        raise VisionlaunchError(f"{dataset} {split}: nothing to write, or labels outside 0..{num_classes - 1}.")
    require_ffcv("writing FFCV .beton files")
    from ffcv.fields import IntField

    index = index or FolderIndex(ds, view_of(ds, max_side))
    digest = index.digest()
    photo = (max_side, image_size, max_upscale) if max_side else None
    if photo:  # each stored photo at most max_side on its longer side; 4:3 on average is a fair guess of the area
        shape, need = [max_side, max_side, 3], len(labels) * max_side * max_side * 3 * 3 // 4
    else:
        shape, need = [h, w, c], decoded_bytes(ds)
    path = Path(path)
    manifest = dict(dataset=dataset, split=split, count=len(labels), shape=shape, num_classes=num_classes,
                    encoding=encoding, jpeg_quality=int(jpeg_quality) if encoding == "jpeg" else None,
                    source_sha256=digest, image_size=image_size, max_resolution=max_side)
    fields = {"image": image_field(c, (h, w, c), encoding, jpeg_quality), "label": IntField()}
    written = publish(path, fields, SourceSamples(ds, photo), workers=writer_workers(num_workers, len(labels)),
                      need=need if encoding == "raw" else need // 4, desc=f"{dataset} {split} -> {path.name}",
                      progress=progress, manifest=manifest, log=log)
    index.save(path, digest)
    return written


def view_of(ds, max_side: int | None) -> str:
    """How the samples of a folder-backed split are stored: photos (aspect kept), or the source's fixed view."""
    crop = _parts(ds)[2]
    c, h, w = ds.shape
    return f"photos up to {max_side} px" if max_side else f"{c}x{h}x{w}" + (f" centre crop {crop}" if crop else "")
