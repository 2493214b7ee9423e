"""Small file helpers shared by the readers and the cache: md5 sums, atomic writes, gzip-or-plain reads."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import os
import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path

from visionlaunch.errors import VisionlaunchError


def _umask() -> int:
    # Read once at import (os.umask can only be read by setting it), so files get the usual permissions.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()


def md5_file(path: Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def atomic_write(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path` in one step, on failure it is removed.

    Readers never see a half-written file, and two processes writing the same file (e.g. DDP ranks filling the
    cache) each replace it whole.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    os.chmod(tmp, _FILE_MODE)  # mkstemp makes the file private (0600); the result should look like any other file
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


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
