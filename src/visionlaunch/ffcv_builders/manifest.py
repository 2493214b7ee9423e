"""What a `.beton` holds and where it came from, in a JSON manifest beside it (`<name>.beton.json`).

FFCV's own format has no room for our metadata (its reader takes everything after the allocation table pointer
as allocation entries), so the record lives next to the file: dataset, split, count, image shape, encoding, a
digest of the source samples, and the size and SHA-256 of the beton itself. A beton is used only when its
manifest matches it byte for byte, which refuses a truncated file, another program's file at our path, and a
file written from data that has changed since (stale). A file over FULL_CHECK_BYTES is read whole only when its
size, modification time or ends differ from the manifest's.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from visionlaunch.datasets.files import file_digest
from visionlaunch.errors import VisionlaunchError

FORMAT = "visionlaunch-ffcv-v1"


def source_digest(images: np.ndarray, labels: np.ndarray) -> str:
    """SHA-256 of the samples as written: uint8 (N, H, W, C) images and int64 labels, with their shape."""
    h = hashlib.sha256(f"{FORMAT}|{tuple(images.shape)}|{len(labels)}|".encode())
    h.update(memoryview(np.ascontiguousarray(images)).cast("B"))
    h.update(memoryview(np.ascontiguousarray(labels, dtype=np.int64)).cast("B"))
    return h.hexdigest()


def manifest_path(beton: Path) -> Path:
    return Path(str(beton) + ".json")


@dataclass
class BetonManifest:
    dataset: str
    split: str
    count: int
    shape: list[int]  # H, W, C
    num_classes: int
    encoding: str  # "raw" or "jpeg"
    jpeg_quality: int | None
    source_sha256: str
    beton_bytes: int
    beton_sha256: str
    format: str = FORMAT
    # data.image_size: the training view is cropped from images of at most max_resolution px (their stored size)
    image_size: int | None = None
    max_resolution: int | None = None
    # A file over FULL_CHECK_BYTES whose size, modification time and ends (header, metadata, allocation table) are
    # as written is not read whole again at every start (None: an older manifest, always read whole)
    beton_mtime_ns: int | None = None
    beton_ends_sha256: str | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1) + "\n"


# Up to this size a beton is read whole for its SHA-256 at every check. A larger one (a dataset bigger than memory:
# reading it whole at every start would take minutes and evict the page cache) is trusted when its size, its
# modification time and the SHA-256 of its ends still match the manifest, else read whole.
FULL_CHECK_BYTES = 1 << 30
ENDS_BYTES = 4 << 20


def ends_digest(beton: Path) -> str:
    """SHA-256 of the first and last ENDS_BYTES of the file: FFCV's header, field and sample metadata at the start,
    its allocation table at the end."""
    h = hashlib.sha256()
    with open(beton, "rb") as f:
        h.update(f.read(ENDS_BYTES))
        f.seek(max(0, f.seek(0, 2) - ENDS_BYTES))
        h.update(f.read(ENDS_BYTES))
    return h.hexdigest()


def _unchanged_since_written(beton: Path, manifest: BetonManifest) -> bool:
    if manifest.beton_bytes <= FULL_CHECK_BYTES or manifest.beton_ends_sha256 is None:
        return False
    return beton.stat().st_mtime_ns == manifest.beton_mtime_ns and ends_digest(beton) == manifest.beton_ends_sha256


def _rewrite_hint(beton: Path) -> str:
    return (f"Write it again with `visionlaunch prepare ffcv --config <your preset> --overwrite` (or delete {beton} "
            "and let training write it).")


def check_beton(beton: Path, *, dataset: str | None = None, split: str | None = None,
                source_sha256: str | None = None, explain=None) -> BetonManifest:
    """The manifest of `beton` after checking the file against it (size, SHA-256) and, when given, against the
    expected dataset, split and source digest. Raises a VisionlaunchError that says what differs: for a stale file,
    `explain(beton, written_digest)` may say what changed in the source."""
    beton = Path(beton)
    if not beton.is_file():
        raise VisionlaunchError(f"the FFCV file {beton} does not exist. {_rewrite_hint(beton)}")
    path = manifest_path(beton)
    if not path.is_file():
        raise VisionlaunchError(
            f"{beton} has no manifest ({path.name}): it was not written by visionlaunch, or its conversion was "
            f"interrupted, so nothing says what it holds. {_rewrite_hint(beton)}")
    try:
        manifest = BetonManifest(**json.loads(path.read_text()))
    except (ValueError, TypeError) as exc:
        raise VisionlaunchError(f"the manifest {path} cannot be read ({exc}). {_rewrite_hint(beton)}") from None
    if manifest.format != FORMAT:
        raise VisionlaunchError(f"{path} is format {manifest.format!r}, this version reads {FORMAT!r}. "
                                f"{_rewrite_hint(beton)}")
    size = beton.stat().st_size
    if size != manifest.beton_bytes:
        raise VisionlaunchError(
            f"{beton} is {size:,} bytes but was written as {manifest.beton_bytes:,}: it is truncated or was "
            f"replaced. {_rewrite_hint(beton)}")
    if not _unchanged_since_written(beton, manifest) and file_digest(beton, "sha256") != manifest.beton_sha256:
        raise VisionlaunchError(
            f"{beton} does not match its manifest (SHA-256 differs): the file was modified or is another "
            f"dataset's. {_rewrite_hint(beton)}")
    for key, want in (("dataset", dataset), ("split", split)):
        if want is not None and getattr(manifest, key) != want:
            raise VisionlaunchError(
                f"{beton} holds {key} {getattr(manifest, key)!r}, not {want!r}: a foreign file at this path. "
                f"{_rewrite_hint(beton)}")
    if source_sha256 is not None and manifest.source_sha256 != source_sha256:
        change = explain(beton, manifest.source_sha256) if explain is not None else None
        if change:
            raise VisionlaunchError(
                f"{beton} is stale: the {manifest.dataset} {manifest.split} files changed since it was written: "
                f"{change}. {_rewrite_hint(beton)}")
        raise VisionlaunchError(
            f"{beton} is stale: it was written from other samples than the current {manifest.dataset} "
            f"{manifest.split} split (the source files, data.val_size, data.split_seed or a subset changed). "
            f"{_rewrite_hint(beton)}")
    return manifest
