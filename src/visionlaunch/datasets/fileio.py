"""Small file helpers for the readers: md5 sums and gzip-or-plain reads (atomic writes: visionlaunch.atomic)."""

from __future__ import annotations

import gzip
import hashlib
import zlib
from pathlib import Path

from visionlaunch.errors import VisionlaunchError


def md5_file(path: Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
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
