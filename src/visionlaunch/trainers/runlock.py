"""One training process per run folder: an exclusive `flock` on a lock file beside the folder.

`runs/.<name>.lock` is locked by the main process before it looks into `runs/<name>` (resume, restart, overwrite)
and held until training ends; the other ranks follow the main process's decision. The kernel releases a flock
when its process dies however it dies (SIGKILL, OOM, a node reboot of a requeued SLURM job), so a lock is never
left stuck: the next `train.resume=auto` simply takes it. The file sits beside the run folder, not in it, so that
it exists before the folder does and survives `output.overwrite=true`; it is removed when the lock is released.
On Linux, flock on NFS (v4, or v3 with lockd) is a byte-range lock that every client sees; on a file system
without locks (Lustre mounted with noflock) the run goes on unguarded, with a note.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import os
import platform
from pathlib import Path

from visionlaunch.errors import VisionlaunchError
from visionlaunch.runfolder import lock_path


class RunLock:
    """`acquire()` takes the lock or raises VisionlaunchError naming the process that holds it; `release()`
    (idempotent) gives it back and removes the file (and the output folder it had to create, if still empty)."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.path = lock_path(self.run_dir)
        self._fd: int | None = None
        self._made: list[Path] = []  # folders created for the lock file, removed again when left empty

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, log=None) -> RunLock:
        """`log` gets a note when the file system has no locks (Lustre mounted with noflock, NFS without lockd):
        the run then goes on unguarded rather than not at all."""
        if self.held:
            return self
        self._make_parent()
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError as exc:
                self._remove_made()
                raise VisionlaunchError(
                    f"cannot write the run folder {self.run_dir}: {self.run_dir.parent} is not a writable folder "
                    f"({exc.strerror}: {self.path}). Set output.dir to a folder you can write to (e.g. "
                    "output.dir=$HOME/runs).") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                holder = _read_holder(fd)
                os.close(fd)
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    with contextlib.suppress(OSError):
                        os.unlink(self.path)
                    self._remove_made()
                    if log is not None:
                        log(f"NOTE: cannot lock {self.run_dir} ({exc.strerror}): this file system has no file "
                            "locks, so a second process training into the same folder would not be stopped.")
                    return self
                raise VisionlaunchError(
                    f"the run folder {self.run_dir} is in use by another training process{holder}: two processes "
                    "would train into one folder and overwrite each other's checkpoints and metrics. Wait for it "
                    "to end (or stop it), or choose another output.name. Nothing was changed. (The lock is "
                    f"{self.path}; it is released when that process exits, even if it is killed.)") from None
            # A releaser unlinks the file after locking it: if ours was unlinked meanwhile, it locks nothing.
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, (f"pid {os.getpid()} on {platform.node()}, since "
                      f"{dt.datetime.now().isoformat(timespec='seconds')}\n").encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.path)  # while still locked: see the check in acquire()
        os.close(self._fd)
        self._fd = None
        self._remove_made()

    def _make_parent(self) -> None:
        missing = []
        folder = self.path.parent
        while not folder.exists() and folder != folder.parent:
            missing.append(folder)
            folder = folder.parent
        for folder in reversed(missing):
            try:
                folder.mkdir()
            except FileExistsError:
                continue
            except OSError:
                break  # reported by acquire() when it cannot create the lock file
            self._made.append(folder)

    def _remove_made(self) -> None:
        for folder in reversed(self._made):
            with contextlib.suppress(OSError):
                folder.rmdir()  # only when empty: a run folder made meanwhile keeps it
        self._made.clear()

    def __del__(self) -> None:  # a Trainer built but never fitted (tests, notebooks) gives its folder back
        with contextlib.suppress(Exception):
            self.release()

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    try:
        text = os.pread(fd, 200, 0).decode(errors="replace").strip()
    except OSError:
        return ""
    return f" ({text})" if text else ""
