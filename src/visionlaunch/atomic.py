"""Atomic file writes, used for every file visionlaunch produces (caches, weights, run files, figures, and the files
named by --out).

What a path names decides how it is written (write_target), one rule for every command:
- a new name or a regular file: atomically, through a temporary file beside it renamed over it at the end; a
  symbolic link to a regular file replaces that file, and the link stays;
- a character device (/dev/null) or a FIFO, or a link through /proc such as /dev/stdout: written directly, as every
  Unix tool does: such a node cannot be replaced by a file, and must never be;
- anything else (a folder, a socket, a block device, a dangling link): refused, naming the path.
Nothing that is not a regular file is ever renamed over.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

from visionlaunch.errors import VisionlaunchError


# The umask, read once at import (os.umask can only be read by setting it), so files get the usual permissions.
_UMASK = os.umask(0o022)
os.umask(_UMASK)
_FILE_MODE = 0o666 & ~_UMASK


def _through_proc(path: Path) -> bool:
    """Whether `path` resolves through /proc (/dev/stdout -> /proc/self/fd/1): such a link names an open file of
    this process, whatever file (or pipe) it happens to point at, and is written through, never replaced."""
    current = os.path.abspath(path)
    for _ in range(40):  # the kernel's own limit on links followed
        head, tail = os.path.split(current)
        head = os.path.realpath(head)
        if head == "/proc" or head.startswith("/proc/"):
            return True
        current = os.path.join(head, tail)
        if not os.path.islink(current):
            return False
        current = os.path.join(head, os.readlink(current))
    return True


def write_target(path: Path) -> tuple[bool, Path]:
    """(atomic, the file to write) for a file visionlaunch is about to write at `path` (the rule above)."""
    path = Path(path)
    try:
        info = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            raise VisionlaunchError(
                f"{path} is a dangling link (to {os.readlink(path)}, which does not exist), and visionlaunch never "
                "replaces a link with a file. Remove the link, or give another file name.") from None
        return True, path  # a new name (a missing folder on the way is made, or named, by the write)
    except OSError:
        return True, path  # the write itself names what is wrong (permissions, a file on the way, ...)
    if stat.S_ISCHR(info.st_mode) or stat.S_ISFIFO(info.st_mode) or _through_proc(path):
        return False, path
    if stat.S_ISREG(info.st_mode):
        return True, Path(os.path.realpath(path)) if os.path.islink(path) else path
    what = ("a folder" if stat.S_ISDIR(info.st_mode) else "a socket" if stat.S_ISSOCK(info.st_mode) else
            "a block device" if stat.S_ISBLK(info.st_mode) else "not a regular file")
    raise VisionlaunchError(
        f"{path} is {what}, and visionlaunch writes only a regular file (replaced whole), a new file, or straight "
        "into a character device or FIFO (such as /dev/null or a pipe). Nothing was written. Give a file name.")


def writes_directly(path: Path) -> bool:
    """Whether `path` is a device, FIFO or /dev/stdout-like target (written directly, nothing placed beside it)."""
    return not write_target(path)[0]


@contextlib.contextmanager
def atomic_write(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path` in one step, on failure it is removed:
    readers never see a half-written file, and two processes writing one file (DDP ranks) each replace it whole.
    A character device, FIFO or /dev/stdout-like `path` is yielded itself, to be written directly (write_target)."""
    atomic, path = write_target(path)
    if not atomic:
        try:
            yield path
        except OSError as exc:  # a write into a device (ENOSPC from /dev/full) does not say where
            if exc.filename is None and exc.errno is not None:
                raise OSError(exc.errno, exc.strerror, str(path)) from exc
            raise
        return
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
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.filename is None and exc.errno is not None:  # write() names no file
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
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
