"""MNIST from the four official IDX files (gzipped or not), parsed and checked here."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import torch

from visionlaunch.datasets.files import download_with_torchvision, file_digest, read_maybe_gzip
from visionlaunch.datasets.imageset import DatasetNotFound, ImageSet
from visionlaunch.errors import VisionlaunchError

FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# The official md5 sums of the .gz files (the ones torchvision checks).
MD5 = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
IMAGES_MAGIC, LABELS_MAGIC = 2051, 2049
CLASSES = [str(d) for d in range(10)]


def search_dirs(root: Path) -> list[Path]:
    # torchvision's layout first, so a torchvision download is found without moving anything.
    return [root / "MNIST" / "raw", root / "mnist" / "raw", root / "mnist"]


def _find(root: Path, split: str) -> list[Path] | None:
    for folder in search_dirs(root):
        # Prefer .gz: it is what the official md5 sums cover.
        found = [next((c for c in (folder / f"{b}.gz", folder / b) if c.is_file()), None) for b in FILES[split]]
        if all(found):
            return found
    return None


def locate(root: Path, split: str, download: bool) -> list[Path]:
    """The [images, labels] files of `split` under `root`, downloading them first when asked and absent."""
    files = _find(root, split)
    if files is None and download:
        download_with_torchvision("MNIST", "MNIST", root, split, root / "MNIST" / "raw")
        files = _find(root, split)
    if files is None:
        where = ", ".join(str(d) for d in search_dirs(root))
        names = " and ".join(f"{b}.gz" for b in FILES[split])
        raise DatasetNotFound(
            f"MNIST {split} files not found: looked for {names} (gzipped or not) in {where}. Put the four "
            f"official MNIST files in {root / 'mnist' / 'raw'}, point data.root (or $VISIONLAUNCH_DATA) at the "
            "folder that holds them, or set data.download=true on a machine with network access.")
    return files


def parse_idx(data: bytes, path: Path, magic: int, item_shape: tuple[int, ...]) -> np.ndarray:
    """Parse one IDX file (unsigned bytes), checking magic number, item shape and that the size matches."""
    what = "images" if magic == IMAGES_MAGIC else "labels"
    ndim = 1 + len(item_shape)
    header = 4 + 4 * ndim
    if len(data) < header:
        raise VisionlaunchError(
            f"{path} is truncated: {len(data)} bytes, shorter than the {header}-byte header of an MNIST {what} "
            "file. Delete it and download or copy it again.")
    found_magic = struct.unpack(">I", data[:4])[0]
    if found_magic != magic:
        raise VisionlaunchError(
            f"{path} is not an MNIST {what} file: its magic number is {found_magic}, expected {magic} "
            f"(unsigned bytes, {ndim} dimensions). Check that the file names were not swapped and that the file "
            "is an official MNIST IDX file.")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    if tuple(dims[1:]) != item_shape:
        raise VisionlaunchError(
            f"{path}: each item is {'x'.join(map(str, dims[1:]))}, expected {'x'.join(map(str, item_shape))} "
            "for MNIST. Use the official MNIST files.")
    expected = header + int(np.prod(dims))
    unzipped = " (after gunzip)" if path.suffix == ".gz" else ""
    if len(data) < expected:
        raise VisionlaunchError(
            f"{path} is truncated: its header announces {dims[0]} {what} ({expected} bytes) but the file has "
            f"only {len(data)} bytes{unzipped}. Delete it and download or copy it again.")
    if len(data) > expected:
        raise VisionlaunchError(
            f"{path} has {len(data) - expected} unexpected bytes after the {dims[0]} {what} its header "
            f"announces ({expected} bytes expected{unzipped}). The file is damaged; replace it with the official one.")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def _check_md5(path: Path) -> None:
    expected = MD5.get(path.name)
    if expected is None:  # uncompressed files have no official checksum; structure checks still apply
        return
    actual = file_digest(path)
    if actual != expected:
        raise VisionlaunchError(
            f"{path} has md5 {actual}, but the official MNIST file has md5 {expected}. The file is damaged or "
            "is not the official one: delete it and download or copy it again, or set data.verify=false if you "
            "changed it on purpose.")


def read(files: list[Path], split: str, verify: bool = True) -> ImageSet:
    images_path, labels_path = files
    if verify:
        _check_md5(images_path)
        _check_md5(labels_path)
    images = parse_idx(read_maybe_gzip(images_path), images_path, IMAGES_MAGIC, (28, 28))
    labels = parse_idx(read_maybe_gzip(labels_path), labels_path, LABELS_MAGIC, ())
    if len(images) != len(labels):
        raise VisionlaunchError(
            f"MNIST {split}: {images_path} holds {len(images)} images but {labels_path} holds {len(labels)} labels; "
            "they must match. One of the two files is not from the same official split; replace both.")
    if len(labels) and int(labels.max()) > 9:
        bad = int(np.argmax(labels > 9))
        raise VisionlaunchError(
            f"{labels_path}: label {int(labels[bad])} at position {bad} is outside 0..9. The file is damaged; "
            "replace it with the official one.")
    return ImageSet(
        images=torch.from_numpy(images.copy()).unsqueeze(1),  # copy: frombuffer arrays are read-only
        labels=torch.from_numpy(labels.astype(np.int64)),
        classes=list(CLASSES),
        name="mnist",
        source=f"MNIST IDX files {images_path.name}, {labels_path.name} in {images_path.parent}",
    )
