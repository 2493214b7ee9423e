"""An ImageFolder split as an indexed source (source.py): the files of the split, found by the one walker
(entries.py) and the ImageFolder reader's layout checks (imagefolder.py), held as numpy arrays, and one file decoded
per `decode(i)` by the one decoder (decode.py), as the in-memory reader decodes it: the same pixels, sample for
sample.

The index is three arrays, whatever the number of files: every path's bytes (less the folder's own path, kept
once) in one uint8 buffer with int64 offsets into it, the labels (int64) and the file sizes (int64). Nothing else
per sample is kept, so DataLoader workers share the index instead of copying it (source.py says why).
"""

from __future__ import annotations

import os
from itertools import chain, islice
from pathlib import Path

import numpy as np

from visionlaunch.datasets import imagefolder as folder
from visionlaunch.datasets.decode import decode_image, with_channels
from visionlaunch.datasets.entries import Member, read_member, seekable
from visionlaunch.datasets.mixed_size import decode_squares, stored_size
from visionlaunch.errors import VisionlaunchError


class FolderSource:
    """`split` of the ImageFolder folder (or seekable archive: an uncompressed .tar or a .zip) `path`, sorted like the
    in-memory reader (class, then file name). An archive's index holds where each member lies in it, and a member is
    read from there when it is decoded.
    `estimate=True` (images of one size): the shape is read from one header, as if colour, without checking every
    header: enough to plan the memory, not to decode. `scanned`: the folder's imagefolder.scan, when the caller has
    walked it already."""

    name = "imagefolder"
    unofficial = ()

    def __init__(self, path: Path, split: str, *, image_size: int | None = None, max_upscale: float = 4.0,
                 progress: bool = True, estimate: bool = False,
                 scanned: folder.FolderScan | None = None):
        self.archive = path if path.is_file() else None
        if self.archive and not seekable(path):
            raise ValueError(f"{path} is a compressed archive: read it with load_dataset (it is read into memory)")
        if scanned is None or (self.archive and not scanned.located):
            scanned = folder.FolderScan(path, progress, located=bool(self.archive))
        found = folder.layout(scanned, path)
        self.classes = found.classes
        self.split_counts = {s: len(found.files[s]) for s in folder.SPLITS}
        files = found.files[split]
        # Straight into the arrays: a list of a million path bytes or sizes would be the peak of building the index.
        # Each name is kept without the folder's (or archive's) own path, which every name begins with: a few tens
        # of bytes a file (27 MiB a million files under /data/imagenet/).
        self.prefix = f"{path}{':' if self.archive else os.sep}"
        if not all(scanned.display(int(k)).startswith(self.prefix) for k in files):
            self.prefix = ""
        paths, cut = bytearray(), len(self.prefix)
        self._offsets = np.zeros(len(files) + 1, dtype=np.int64)
        self.file_sizes = np.empty(len(files), dtype=np.int64)  # an archive member's: the bytes stored
        self._at = np.empty(len(files) if self.archive else 0, dtype=np.int64)  # where a member lies in the archive
        self._method = np.empty(len(files) if self.archive else 0, dtype=np.uint8)  # its zip compression
        for j, k in enumerate(files):
            file = scanned.display(int(k))
            paths += os.fsencode(file[cut:])
            self._offsets[j + 1] = len(paths)
            if self.archive:
                member = scanned.member(int(k))
                if member.offset < 0:  # read by the walk: a zip compression read_member does not know
                    raise VisionlaunchError(
                        f"{file} is compressed with a zip method other than stored or deflated, the two read out of "
                        "core. Extract the archive and pass the folder, or set data.residency=memory.")
                self._at[j], self.file_sizes[j], self._method[j] = member.offset, member.size, member.method
            else:
                self.file_sizes[j] = os.stat(file).st_size
        self._paths = np.frombuffer(paths, dtype=np.uint8)
        self.labels = found.labels[split]
        self.split, self.image_size, self.max_upscale = split, image_size, max_upscale
        self.estimated = estimate and not image_size
        self.source = (f"ImageFolder {'archive' if self.archive else 'folder'} {path} ({split}/, "
                       f"{len(self.classes)} classes, read out of core: each image decoded when used")
        if image_size:  # every photo becomes a stored square (mixed_size.py)
            side = stored_size(image_size)
            self.shape, self._size, self._gray = (3, side, side), None, False
            self.source += f", mixed sizes as {side}x{side} RGB)"
        else:  # one size for all: the headers of both splits say which, as the in-memory reader checks
            other = folder.SPLITS[1 - folder.SPLITS.index(split)]  # in the in-memory reader's order
            checked = chain(found.images(scanned, other), found.images(scanned, split))
            total = 1 if estimate else len(found.files[other]) + len(files)
            self._size, self._gray = folder._scan_headers(islice(checked, total), total, progress and not estimate)
            self._gray = self._gray and not estimate
            w, h = self._size
            self.shape = (1 if self._gray else 3, h, w)
            self.source += ")"

    def __len__(self) -> int:
        return len(self.labels)

    def split_bytes(self, split: str) -> int:
        """Decoded bytes of `split` of the same folder (each image stored in this split's shape)."""
        c, h, w = self.shape
        return self.split_counts[split] * c * h * w

    def display(self, i: int) -> str:
        """How image `i` is named: its path, or `archive:member`."""
        return self.prefix + os.fsdecode(self._paths[self._offsets[i]:self._offsets[i + 1]].tobytes())

    def payload(self, i: int) -> str | bytes:
        """What the decoder reads for image `i`: its file's path, or the archive member's bytes (read now). A str,
        not a Path: pathlib interns every part of every path it parses, and a million file names churn the
        interpreter's table of interned strings until it grows (7.5 MiB in each process that reads them)."""
        if self.archive:
            return read_member(self.archive, Member(int(self._at[i]), int(self.file_sizes[i]), int(self._method[i])))
        return self.display(i)

    def mtimes(self) -> np.ndarray:
        """Each image's modification time (ns), int64: its file's, or the archive's for all of its members."""
        if self.archive:
            return np.full(len(self), self.archive.stat().st_mtime_ns, dtype=np.int64)
        return np.fromiter((os.stat(self.display(i)).st_mtime_ns for i in range(len(self))), dtype=np.int64,
                           count=len(self))

    def decode(self, i: int) -> np.ndarray:
        """Image `i` as uint8 (H, W, C): what the in-memory reader stores for it."""
        if self.estimated:
            raise RuntimeError("an estimating FolderSource cannot decode: open it with estimate=False")
        path, payload = self.display(i), self.payload(i)
        if self.image_size:  # the stored square, with the same upscale check
            item = folder._Image(self.split, self.classes[self.labels[i]], path, payload)
            return decode_squares([item], self.image_size, self.max_upscale, progress=False)[0][0].transpose(1, 2, 0)
        pixels = with_channels(decode_image(payload, path), self.shape[0])
        if pixels.shape[:2] != self.shape[1:]:  # changed since the headers were read
            raise VisionlaunchError(f"{path} is now {pixels.shape[1]}x{pixels.shape[0]} pixels (width x height), but "
                                    f"every image of the dataset is {self.shape[2]}x{self.shape[1]}: the folder "
                                    "changed during the run. Restore the image, or start the run again.")
        return pixels
