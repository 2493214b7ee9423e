"""Where dataset files live and how the readers get at them: the data root and the cache folder, downloads through
torchvision (with advice when offline), md5 sums and gzip-or-plain reads. Atomic writes: visionlaunch.atomic; walking
folders and archives: entries.py; decoding images: decode.py."""

from __future__ import annotations

import gzip
import hashlib
import os
import zlib
from pathlib import Path

from visionlaunch.datasets.imageset import DatasetNotFound
from visionlaunch.errors import VisionlaunchError


def resolve_data_root(root: str | os.PathLike | None) -> Path:
    """The data root: the explicit argument, else $VISIONLAUNCH_DATA, else ./data (as an absolute path)."""
    if root is None or str(root) == "":
        root = os.environ.get("VISIONLAUNCH_DATA") or "data"
    return Path(os.path.abspath(Path(root).expanduser()))


def default_cache_dir() -> Path:
    env = os.environ.get("VISIONLAUNCH_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "visionlaunch"


def file_digest(path: Path, algorithm: str = "md5") -> str:
    digest = hashlib.new(algorithm, usedforsecurity=False)  # not hashlib.file_digest: that needs Python 3.11
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def read_maybe_gzip(path: Path) -> bytes:
    """The file's bytes, gunzipped when its name ends in .gz; a damaged gzip stream is a clear error."""
    data = Path(path).read_bytes()
    if Path(path).suffix != ".gz":
        return data
    try:
        return gzip.decompress(data)
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise VisionlaunchError(
            f"{path} is not a complete gzip file ({exc}); it is probably truncated or damaged by an interrupted "
            "download or copy. Delete it and download or copy it again.") from exc


def download_with_torchvision(dataset: str, what: str, root: Path, split: str, target: Path) -> None:
    """Download `split` of torchvision's `dataset` class into `root`; a failure leaves the files absent, so it is a
    DatasetNotFound (a caller may still fall back) with advice."""
    from torchvision import datasets

    try:
        getattr(datasets, dataset)(str(root), train=split == "train", download=True)
    except Exception as exc:  # network, HTTP, DNS and checksum failures all surface here as different types
        # torchvision's messages span lines (one per mirror tried); keep the paragraph to one line.
        detail = " ".join(str(exc).split())
        detail = detail if len(detail) <= 300 else detail[:297] + "..."
        raise DatasetNotFound(
            f"Downloading {what} into {root} failed ({type(exc).__name__}: {detail}). This machine probably has no "
            f"network access, or the server refused. Fetch the files on a machine with network access and put "
            f"them in {target}, or point data.root (or $VISIONLAUNCH_DATA) at a folder that already holds them."
        ) from exc
