"""Write samples to a `.beton`: validated first, written and fsynced under a temporary name (a dying worker
stops it), then its manifest (naming the beton's size and SHA-256) atomically, and only then the beton renamed into
place. An interrupted conversion leaves no file, or one its manifest does not describe: never loaded as good; the
temporary file it leaves is removed by the next conversion of the same file.

`publish` is the engine for any indexable samples (arrays here, an indexed source in stream.py): FFCV's writer
workers call `samples[i]` themselves, so a source is decoded in parallel, one sample at a time per worker.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import glob
import os
import queue
import shutil
import signal
import tempfile
from multiprocessing import Process, Queue, Value
from pathlib import Path

import numpy as np

from visionlaunch.atomic import atomic_write, atomic_write_text
from visionlaunch.datasets.files import file_digest
from visionlaunch.datasets.imageset import ImageSet
from visionlaunch.errors import VisionlaunchError
from visionlaunch.ffcv_builders import require_ffcv
from visionlaunch.ffcv_builders.manifest import BetonManifest, ends_digest, manifest_path, source_digest
from visionlaunch.heap import release_free_memory
from visionlaunch.progress import progress_bar

PAGE_SIZE = 1 << 21  # FFCV's smallest page (2 MiB): each worker leaves one part-filled page, so small is lean


# Checked before any FFCV worker starts: an exception inside a DatasetWriter worker is printed and then the writer
# waits forever, so every mistake must be caught here, in the calling process, with a clear message.
def validate_samples(images, labels, num_classes: int, what: str = "dataset") -> tuple[np.ndarray, np.ndarray]:
    """Return (images, labels) as C-contiguous numpy arrays: uint8 (N, H, W, C) with C 1 or 3, int64 (N,) in
    0..num_classes-1. Anything else raises a VisionlaunchError naming what was wrong."""
    images = np.asarray(images)
    labels = np.asarray(labels)
    if images.dtype != np.uint8:
        raise VisionlaunchError(
            f"{what}: images must be uint8 (values 0..255), got {images.dtype}. Convert them first, e.g. "
            "(x * 255).round().clip(0, 255).astype(np.uint8) for floats on [0, 1].")
    if images.ndim != 4 or images.shape[3] not in (1, 3):
        raise VisionlaunchError(
            f"{what}: images must be an (N, H, W, C) array with C = 1 (grayscale) or 3 (RGB), got shape "
            f"{images.shape}. A torch NCHW batch converts with images.permute(0, 2, 3, 1).")
    if images.shape[0] == 0 or images.shape[1] == 0 or images.shape[2] == 0:
        raise VisionlaunchError(f"{what}: there is nothing to write (images of shape {images.shape}).")
    if labels.ndim != 1 or len(labels) != len(images):
        raise VisionlaunchError(
            f"{what}: labels must be one integer per image ({len(images)}), got shape {labels.shape}.")
    if not np.issubdtype(labels.dtype, np.integer):
        raise VisionlaunchError(f"{what}: labels must be integers, got {labels.dtype}.")
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= num_classes:
        bad = int(np.flatnonzero((labels < 0) | (labels >= num_classes))[0])
        raise VisionlaunchError(
            f"{what}: labels must lie in 0..{num_classes - 1} (one per class), but sample {bad} has label "
            f"{int(labels[bad])} (range found: {low}..{high}). Fix the labels or the class list.")
    return np.ascontiguousarray(images), np.ascontiguousarray(labels, dtype=np.int64)


class _Samples:
    """The indexable dataset FFCV's workers read (inherited through fork, not pickled)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        return self.images[i], int(self.labels[i])


def _check_space(path: Path, need: int) -> None:
    free = shutil.disk_usage(path.parent).free
    if free < need:
        raise VisionlaunchError(
            f"not enough disk space to write {path}: it needs about {need / 2**20:,.0f} MiB and {path.parent} has "
            f"{free / 2**20:,.0f} MiB free. Free some space or choose another folder (data.ffcv_dir / --out).")


def writer_workers(num_workers: int, n: int) -> int:
    """Writer processes for n samples: each holds one page (PAGE_SIZE) and its sample in memory."""
    return max(1, min(int(num_workers), n // 100 + 1))


def _worker(failures: Queue, parent: int, todo: Queue, metadata_sm, metadata_type, fields, allocator, done,
            allocations: Queue, samples) -> None:
    """One writer process: FFCV's indexed-dataset worker loop (handle_sample fills its pages), its record of
    where each sample went sent to the parent as a numpy table chunk by chunk, then None when it is done (FFCV
    keeps a Python tuple per sample in the worker until the end; kept here, the small tables would pin the
    worker's heap as it grows). A VisionlaunchError (an unreadable image, a bad sample) or a failed write (a full
    disk, a file size limit) is passed to the parent as a message, without a traceback, and the worker exits with
    FAILED."""
    from ffcv.types import ALLOC_TABLE_TYPE
    from ffcv.writer import handle_sample

    _die_with_parent(parent)
    try:
        metadata = np.frombuffer(metadata_sm.buf, dtype=metadata_type)
        names = metadata_type.names
        with allocator:  # leaving it writes the last, part-filled page
            while (chunk := todo.get()) is not None:
                for dest, source in chunk:
                    handle_sample(samples[source], dest, names, metadata, allocator, fields)
                # Complete: a retry only ever revisits the sample being written. (A sample's page is written
                # later, but the parent publishes nothing before every worker has left this block.)
                allocations.put(np.array(allocator.allocations, dtype=ALLOC_TABLE_TYPE))
                allocator.allocations.clear()
                with done.get_lock():
                    done.value += len(chunk)
                release_free_memory()
        allocations.put(None)
    except (VisionlaunchError, OSError) as exc:
        failures.put((isinstance(exc, OSError), str(exc)))
        failures.close()
        failures.join_thread()  # the message is in the pipe before the process ends
        os._exit(FAILED)


FAILED = 3


def _die_with_parent(parent: int) -> None:
    """Linux: this worker is killed when the converting process `parent` dies (a SIGKILL, the OOM killer), instead
    of writing on into a file nobody will publish."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # it died before the request was made
        os._exit(FAILED)


def _write(tmp: Path, fields: dict, samples, workers: int, desc: str, progress: bool) -> None:
    """FFCV's DatasetWriter, with its wait loop replaced: FFCV's waits forever once a worker has died (an error,
    a full disk); this one notices the dead worker, stops the others and raises. `samples[i]` -> (image, label) is
    called in the worker processes (inherited through fork), so it may decode files: memory is one page and one
    sample per worker, plus the allocation table (24 bytes a sample) and the metadata (about 20 bytes a sample)."""
    from ffcv.writer import DatasetWriter
    from ffcv.memory_allocator import MemoryAllocator

    writer = DatasetWriter(str(tmp), fields, page_size=PAGE_SIZE, num_workers=workers)
    writer.num_samples = n = len(samples)
    writer.prepare()
    todo: Queue = Queue()
    for start in range(0, n, CHUNK):  # ranges, not a list of n (destination, source) tuples held here
        todo.put(_Chunk(start, min(start + CHUNK, n)))
    for _ in range(workers):
        todo.put(None)
    allocations: Queue = Queue()
    failures: Queue = Queue()
    done = Value(ctypes.c_uint64, 0)
    allocator = MemoryAllocator(str(tmp), writer.data_region_start, writer.page_size)
    args = (failures, os.getpid(), todo, writer.metadata_sm, writer.metadata_type, writer.fields, allocator, done,
            allocations, samples)
    procs = [Process(target=_worker, args=args, daemon=True) for _ in range(workers)]
    _compile_before_fork(fields)
    release_free_memory()  # what this process freed (a folder's index being built) is not copied into the workers
    # The allocation table (24 bytes a sample) waits on disk, in a nameless file beside the beton, not in memory;
    # opened last, so that the `finally` below, which closes it, covers everything after it.
    table = tempfile.TemporaryFile(dir=tmp.parent)
    try:
        for p in procs:
            p.start()
        finished = 0
        with progress_bar(total=n, desc=desc, unit="img", disable=not progress, leave=False) as bar:
            while finished < workers:  # a worker sends its chunks' allocation tables, then None when it is done
                with contextlib.suppress(queue.Empty):
                    part = allocations.get(timeout=0.1)
                    if part is None:
                        finished += 1
                    else:
                        table.write(part.tobytes())
                bar.update(done.value - bar.n)
                # A worker that exited cleanly has sent its None already; one that died never will.
                failed = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
                if failed:
                    try:
                        write_failed, reason = failures.get(timeout=1)
                    except queue.Empty:
                        raise VisionlaunchError(
                            f"an FFCV writer worker died (exit status {failed[0]}) while writing {desc}: see its "
                            "message above. A full disk or a file size limit is the usual cause; check the free "
                            f"space of {tmp.parent} and run the conversion again. Nothing was published.") from None
                    if write_failed:
                        raise VisionlaunchError(
                            f"writing {desc} failed: {reason}. Check the free space of {tmp.parent} (and any file "
                            "size limit) and run the conversion again. Nothing was published.")
                    raise VisionlaunchError(f"{reason} Converting {desc} stopped at this sample (every sample "
                                            "must be readable); nothing was published.")
            bar.update(n - bar.n)
        for p in procs:
            p.join()
        _finish(writer, table)
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()
        table.close()
        for q in (todo, allocations, failures):  # after a failure the queues hold unread items: do not wait at exit
            q.cancel_join_thread()
            q.close()
        writer.metadata_sm.close()
        with contextlib.suppress(FileNotFoundError):
            writer.metadata_sm.unlink()


def _compile_before_fork(fields: dict) -> None:
    """FFCV's image field looks its mode up in a numba typed dict, compiled at the first lookup: done once here,
    the workers inherit the compiled code instead of each compiling it (about 25 MiB of each worker's memory)."""
    from ffcv.fields import RGBImageField
    from ffcv.fields.rgb_image import IMAGE_MODES

    if any(isinstance(field, RGBImageField) for field in fields.values()):
        IMAGE_MODES["jpg"]


def _finish(writer, table) -> None:
    """FFCV's DatasetWriter.finalize for an allocation table gathered in the file `table`: the samples' metadata
    into its region, the table at the end (its rows in the order the workers sent them: FFCV reads them in any
    order), then the header that points at it."""
    with open(writer.fname, "r+b") as f:
        f.seek(writer.metadata_start)
        f.write(writer.metadata_sm.buf)
        writer.header["alloc_table_ptr"] = f.seek(0, os.SEEK_END)
        table.seek(0)
        shutil.copyfileobj(table, f, 1 << 20)
        f.seek(0)
        f.write(writer.header.tobytes())


CHUNK = 100  # samples per work item: consecutive samples stay together in the file (locality for the order)


class _Chunk:
    """One work item of FFCV's writer workers: samples start..stop-1, each written at its own index."""

    def __init__(self, start: int, stop: int):
        self.start, self.stop = start, stop

    def __len__(self) -> int:
        return self.stop - self.start

    def __iter__(self):
        return ((i, i) for i in range(self.start, self.stop))


@contextlib.contextmanager
def _conversion_lock(path: Path, log):
    """Held while `path` is written: a second conversion of the same file waits; and a temporary file beside it
    (`.NAME.*.tmp`) found while holding the lock was left by a conversion that was killed: it is named and
    removed. A POSIX record lock (lockf): it belongs to this process alone (not to the forked writer workers) and
    the kernel releases it when the process dies, however it dies."""
    lock = path.parent / f".{path.name}.converting"  # not ".lock": that spelling is the run folder's own lock
    with open(lock, "a") as f:
        try:
            fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            log(f"ffcv: waiting for another process that is writing {path} ({lock} is locked)")
            fcntl.lockf(f, fcntl.LOCK_EX)
        try:
            for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
                size = stale.stat().st_size
                log(f"ffcv: removing {stale} ({size / 2**20:,.1f} MiB), left by a conversion that was interrupted; "
                    f"converting {path.name} again")
                stale.unlink(missing_ok=True)
            yield
        finally:
            fcntl.lockf(f, fcntl.LOCK_UN)


def publish(path: Path, fields: dict, samples, *, workers: int, need: int, desc: str, progress: bool,
            manifest: dict, log=print) -> BetonManifest:
    """Write `samples` to `path` under a temporary name (fsynced), then its manifest (the `manifest` fields plus
    the beton's size and SHA-256), then rename the beton into place: an interrupted conversion publishes nothing
    that looks complete, and a leftover temporary file is removed by the next conversion."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _check_space(path, need + (workers + 1) * PAGE_SIZE)
    with _conversion_lock(path, log), atomic_write(path) as tmp:
        try:
            _write(tmp, fields, samples, workers, desc, progress)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        except OSError as exc:  # e.g. the disk filled while the header or allocation table was written
            raise VisionlaunchError(f"writing {path} failed: {exc}. Check the free space of {path.parent} and run "
                                    "the conversion again. Nothing was published.") from None
        info = tmp.stat()  # nothing writes to it after this: the rename keeps its modification time
        written = BetonManifest(**manifest, beton_bytes=info.st_size, beton_sha256=file_digest(tmp, "sha256"),
                                beton_mtime_ns=info.st_mtime_ns, beton_ends_sha256=ends_digest(tmp))
        atomic_write_text(manifest_path(path), written.to_json())
    return written


def image_field(channels: int, shape, encoding: str, jpeg_quality: int):
    """The FFCV field for uint8 images of `channels` (1: a uint8 array of `shape`, since FFCV's RGBImageField
    refuses (H, W, 1); 3: RGB, raw or JPEG, any size)."""
    from ffcv.fields import NDArrayField, RGBImageField

    if channels == 1:
        return NDArrayField(dtype=np.dtype("uint8"), shape=tuple(shape))
    return RGBImageField(write_mode="jpg" if encoding == "jpeg" else "raw", jpeg_quality=int(jpeg_quality))


def check_encoding(encoding: str, jpeg_quality: int) -> None:
    if encoding not in ("raw", "jpeg"):
        raise VisionlaunchError(f"FFCV encoding must be 'raw' or 'jpeg', got {encoding!r}.")
    if not 1 <= int(jpeg_quality) <= 100:
        raise VisionlaunchError(f"JPEG quality must lie in 1..100, got {jpeg_quality}.")


def check_channels(encoding: str, channels: int, dataset: str) -> None:
    if encoding == "jpeg" and channels == 1:
        raise VisionlaunchError(
            f"JPEG encoding (data.ffcv_encoding=jpeg) needs 3-channel images, but {dataset} is grayscale: FFCV's "
            "JPEG field stores RGB only. Use data.ffcv_encoding=raw (grayscale is stored raw, as a uint8 array).")


def write_beton(images, labels, path, *, num_classes: int, dataset: str, split: str, encoding: str = "raw",
                jpeg_quality: int = 90, num_workers: int = 2, progress: bool = True, image_size: int | None = None,
                max_resolution: int | None = None, log=print) -> BetonManifest:
    """Write uint8 (N, H, W, C) images (C = 1 or 3) and integer labels to the FFCV file `path` and its manifest
    (returned). Bad input (dtype, shape, label range, encoding) raises before any worker starts."""
    check_encoding(encoding, jpeg_quality)
    images, labels = validate_samples(images, labels, num_classes, what=f"{dataset} {split}")
    check_channels(encoding, images.shape[3], dataset)
    require_ffcv("writing FFCV .beton files")
    from ffcv.fields import IntField

    image = image_field(images.shape[3], images.shape[1:], encoding, jpeg_quality)
    if max_resolution is not None:
        image.max_resolution = max_resolution
    path = Path(path)
    workers = writer_workers(num_workers, len(labels))
    # JPEG output is smaller than raw; raw is an upper bound worth checking before minutes of work.
    need = images.nbytes if encoding == "raw" else images.nbytes // 4
    manifest = dict(dataset=dataset, split=split, count=len(labels), shape=list(images.shape[1:]),
                    num_classes=num_classes, encoding=encoding,
                    jpeg_quality=int(jpeg_quality) if encoding == "jpeg" else None,
                    source_sha256=source_digest(images, labels), image_size=image_size, max_resolution=max_resolution)
    return publish(path, {"image": image, "label": IntField()}, _Samples(images, labels), workers=workers, need=need,
                   desc=f"{dataset} {split} -> {path.name}", progress=progress, manifest=manifest, log=log)


def imageset_arrays(ds: ImageSet) -> tuple[np.ndarray, np.ndarray]:
    """An ImageSet's samples in the layout FFCV stores: uint8 (N, H, W, C), int64 labels."""
    return ds.images.permute(0, 2, 3, 1).contiguous().numpy(), ds.labels.numpy()


def write_imageset(ds: ImageSet, path, *, split: str, dataset: str | None = None, **kwargs) -> BetonManifest:
    images, labels = imageset_arrays(ds)
    return write_beton(images, labels, path, num_classes=len(ds.classes), dataset=dataset or ds.name, split=split,
                       **kwargs)
