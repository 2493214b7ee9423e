"""Atomic file writes, used for every file visionlaunch produces (caches, weights, run files, figures)."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path


# The umask, read once at import (os.umask can only be read by setting it), so files get the usual permissions.
_UMASK = os.umask(0o022)
os.umask(_UMASK)
_FILE_MODE = 0o666 & ~_UMASK


@contextlib.contextmanager
def atomic_write(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path` in one step, on failure it is removed:
    readers never see a half-written file, and two processes writing one file (DDP ranks) each replace it whole."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except FileExistsError as exc:  # mkdir of a folder on the way that is a file
        raise NotADirectoryError(errno.ENOTDIR, f"{exc.filename} is a file, not a folder", str(path)) from exc
    except OSError as exc:  # name the file that was to be written, not the temporary one
        raise OSError(exc.errno, exc.strerror, str(path)) from exc
    os.close(fd)
    os.chmod(tmp, _FILE_MODE)  # mkstemp makes the file private (0600); the result should look like any other file
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    with atomic_write(path) as tmp:
        tmp.write_text(text)


def _failed_write_errno(folder: Path) -> int:
    """The likely cause of a write that failed without saying why (torch reports a short write as a RuntimeError
    such as 'unexpected pos 704 vs 598'): a full disk, the file-size limit, else an I/O error."""
    import resource
    import shutil

    try:
        if shutil.disk_usage(folder).free < (1 << 20):
            return errno.ENOSPC
    except OSError:
        pass
    if resource.getrlimit(resource.RLIMIT_FSIZE)[0] != resource.RLIM_INFINITY:
        return errno.EFBIG
    return errno.EIO


def is_write_failure(exc: BaseException) -> bool:
    """An exception from torch or safetensors that means the bytes did not reach the file."""
    if isinstance(exc, OSError):
        return True
    text = str(exc)
    if type(exc).__name__ == "SafetensorError":
        return "I/O error" in text or "os error" in text
    return isinstance(exc, RuntimeError) and any(
        s in text for s in ("inline_container", "PytorchStreamWriter", "file write failed", "unexpected pos"))


def as_os_error(exc: BaseException, path: Path) -> OSError:
    """An OSError naming `path` for a failed write (the original when it already is one with a file name)."""
    if isinstance(exc, OSError) and exc.filename is not None:
        return exc
    told = re.search(r"os error (\d+)", str(exc))  # safetensors passes the errno on in its text
    if isinstance(exc, OSError) and exc.errno:
        code = exc.errno
    else:
        code = int(told.group(1)) if told else _failed_write_errno(Path(path).parent)
    return OSError(code, os.strerror(code), str(path))  # torch's own text ("unexpected pos ...") says nothing more


def atomic_torch_save(obj, path: Path) -> None:
    """torch.save through a temporary file. A failed write (disk full, file-size limit) raises an OSError that
    names `path`, and leaves whatever `path` held before unchanged."""
    import torch

    try:
        with atomic_write(path) as tmp:
            torch.save(obj, tmp)
    except Exception as exc:
        if not is_write_failure(exc):
            raise
        raise as_os_error(exc, path) from exc
