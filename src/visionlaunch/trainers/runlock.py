"""One training process per run folder: an exclusive `flock` on a lock file beside the folder.

`runs/.<name>.lock` is locked by the main process before it looks into `runs/<name>` (resume, restart, overwrite)
and held until training ends; the other ranks follow the main process's decision. The kernel releases a flock
when its process dies however it dies (SIGKILL, OOM, a node reboot of a requeued SLURM job), so a lock is never
left stuck: the next `train.resume=auto` simply takes it. The file is removed when the lock is released.
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
        self._made: list[Path] = []

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, log=None) -> RunLock:
        """`log` gets the note of a file system without locks (the run then goes on unguarded)."""
        # The folders missing above the lock file, deepest first: made now, removed again on release when empty.
        self._made = [folder for folder in (self.path.parent, *self.path.parent.parents) if not folder.exists()]
        with contextlib.suppress(OSError):  # a folder that cannot be made is reported below, by os.open
            self.path.parent.mkdir(parents=True, exist_ok=True)
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
                holder = os.pread(fd, 200, 0).decode(errors="replace").strip()  # its line, written below
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
                    f"the run folder {self.run_dir} is in use by another training process"
                    f"{f' ({holder})' if holder else ''}: two processes would train into one folder and overwrite "
                    "each other's checkpoints and metrics. Wait for it to end (or stop it), or choose another "
                    "output.name. Nothing was changed. (The lock is "
                    f"{self.path}; it is released when that process exits, even if it is killed.)") from None
            # A releaser unlinks the file after locking it: if ours was unlinked meanwhile, it locks nothing.
            with contextlib.suppress(FileNotFoundError):
                if os.path.samestat(os.fstat(fd), os.stat(self.path)):
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

    def _remove_made(self) -> None:
        for folder in self._made:
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

