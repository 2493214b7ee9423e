"""Decode once: decoded uint8 tensors on disk, keyed by dataset, split and a fingerprint of the source files.

The fingerprint is each source file's resolved path, size and mtime (plus a format version), so replacing or
editing a source file makes a new key and the data is read again. A cache file that cannot be read is ignored
with a warning and rebuilt; a cache that cannot be written only costs speed.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from visionlaunch.atomic import atomic_torch_save
from visionlaunch.datasets.imageset import ImageSet
from visionlaunch.errors import describe_load_failure

FORMAT_VERSION = 2  # bump when readers change what they produce, so old caches are not reused


def _digest(text: str, n: int) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:n]


def fingerprint(files: list[Path]) -> str:
    lines = [f"visionlaunch-cache-v{FORMAT_VERSION}"]
    for f in files:
        st = os.stat(f)
        lines.append(f"{os.path.realpath(f)}\t{st.st_size}\t{st.st_mtime_ns}")
    return _digest("\n".join(lines), 16)


def cache_path(cache_dir: Path, name: str, split: str, source_key: str, files: list[Path]) -> Path:
    # name-split-<where>-<what>: <where> (the source location) lets a rebuild delete the entry it replaces.
    return Path(cache_dir) / f"{name}-{split}-{_digest(os.path.realpath(source_key), 8)}-{fingerprint(files)}.pt"


def _load(path: Path, name: str, need_verified: bool) -> ImageSet | None:
    if not path.is_file():
        return None
    try:
        entry = torch.load(path, map_location="cpu", weights_only=True)
        if entry.get("version") != FORMAT_VERSION or entry.get("name") != name:
            raise ValueError(f"format version {entry.get('version')} / name {entry.get('name')!r} do not match")
        if need_verified and not entry["verified"]:
            return None  # built with verify=False: read (and check) the sources again; not an error
        return ImageSet(images=entry["images"], labels=entry["labels"], classes=list(entry["classes"]),
                        name=entry["name"], source=entry["source"], superclasses=entry["superclasses"],
                        superclass_of=entry["superclass_of"], unofficial=entry["unofficial"])
    except Exception as exc:  # truncated file, foreign pickle, wrong dtypes: all mean "rebuild"
        reason = describe_load_failure(exc) if not isinstance(exc, ValueError) else str(exc)
        warnings.warn(f"ignoring unreadable dataset cache file {path} ({reason}); "
                      "reading the dataset again and rewriting it", RuntimeWarning, stacklevel=3)
        return None


def _save(path: Path, data: ImageSet, verified: bool) -> None:
    entry = {"version": FORMAT_VERSION, "name": data.name, "source": data.source, "classes": list(data.classes),
             "images": data.images, "labels": data.labels, "verified": verified,
             "superclasses": data.superclasses, "superclass_of": data.superclass_of,
             "unofficial": [list(u) for u in data.unofficial]}  # the content check's result, so its NOTE survives
    try:
        atomic_torch_save(entry, path)
    except OSError as exc:  # a full disk or a file-size limit included: the cache only saves time
        warnings.warn(f"could not write dataset cache file {path} ({exc.strerror}); continuing without the cache",
                      RuntimeWarning, stacklevel=3)
        return
    # Entries for earlier versions of the same source are dead weight now.
    stem = path.name.rsplit("-", 1)[0]
    for old in path.parent.glob(f"{stem}-*.pt"):
        if old != path:
            old.unlink(missing_ok=True)


def cached(cache_dir: Path, name: str, split: str, source_key: str, files: list[Path],
           build: Callable[[], ImageSet], *, verified: bool) -> ImageSet:
    """Return the cached ImageSet for these source files, or build it, store it and return it.

    `verified` says whether `build` checks checksums; a cache built unverified is not used by a verified load.
    """
    path = cache_path(cache_dir, name, split, source_key, files)
    data = _load(path, name, need_verified=verified)
    if data is None:
        data = build()
        _save(path, data, verified)
    return data
