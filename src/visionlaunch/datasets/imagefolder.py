"""ImageFolder: `train/<class>/<image>` and `test/<class>/<image>` in a folder or a tar archive.

An archive is streamed member by member (no extraction to disk). Only the requested split is decoded; every image
of both splits is first opened just far enough to read its size and colour mode, so that train and test always
agree on shape (every image one size; grayscale only when every image of both splits is).
"""

from __future__ import annotations

import errno
import os
import stat
import tarfile
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from visionlaunch.datasets.files import BAD_IMAGE, open_image, unreadable_image
from visionlaunch.datasets.imageset import DatasetNotFound, ImageSet
from visionlaunch.datasets.mixed_size import decode_squares, stored_size
from visionlaunch.errors import VisionlaunchError, describe_os_error
from visionlaunch.progress import progress_bar

SPLITS = ("train", "test")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm")
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz")
GRAY_MODES = ("1", "L", "LA")  # single-channel content; anything else is read as RGB
# 16-bit grayscale (e.g. 16-bit PNG or TIFF): scaled to 8 bits (v x 255 / 65535, rounded), not clipped at 255.
WIDE_GRAY_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_IGNORED_TOP = ("__MACOSX",)  # resource forks that macOS adds to archives


def locate(root: Path, path: str | os.PathLike | None) -> Path:
    """The folder or archive named by `path` (absolute, or relative to `root`)."""
    if not path:
        raise VisionlaunchError(
            "imagefolder needs data.path: a folder or a .tar/.tar.gz/.tgz archive holding train/<class>/<image> "
            "and test/<class>/<image>, absolute or relative to the data root.")
    p = Path(path).expanduser()
    p = p if p.is_absolute() else root / p
    if not p.exists():
        raise DatasetNotFound(
            f"ImageFolder data not found at {p} (data.path={str(path)!r}, data root {root}). Give data.path as an "
            "absolute path or relative to the data root (data.root or $VISIONLAUNCH_DATA).")
    if p.is_file() and not p.name.lower().endswith(ARCHIVE_SUFFIXES):
        raise VisionlaunchError(
            f"ImageFolder data.path {p} is a file but not a .tar, .tar.gz or .tgz archive. Point data.path at a "
            "folder holding train/ and test/, or at such an archive.")
    return p


@dataclass
class _Entry:
    parts: tuple[str, ...]  # path inside the dataset, split into components
    display: str  # how to name it in an error: a file path, or "archive.tar.gz:member"
    payload: bytes | Path | None  # bytes from an archive, a path in a folder, None for a directory


def source_files(path: Path) -> list[Path]:
    """The files whose size and mtime fingerprint the dataset (for the cache)."""
    if path.is_file():
        return [path]
    return [e.payload for e in _walk(path) if e.payload is not None]


def _walk(root: Path):
    """An entry for everything under the folder `root` but hidden names, sorted by name.

    Links are followed, so a dataset made of links to images stored elsewhere works. A link back to a folder that
    contains it (`..`, `.`, a cycle through several links) would make the tree endless: it stops with an error
    naming the link, as do a folder reached twice (its images would count twice), a dangling link, a link loop
    and anything that is neither a file nor a folder (a FIFO would block the reader forever)."""
    def visit(folder: Path, rel: tuple[str, ...], ancestors: frozenset):
        try:
            with os.scandir(folder) as listing:
                children = sorted(listing, key=lambda entry: entry.name)
        except OSError as exc:  # never skipped: its images would silently be missing
            raise VisionlaunchError(f"cannot list the ImageFolder folder {describe_os_error(exc)}") from None
        for entry in children:
            if entry.name.startswith("."):
                continue
            path, parts = Path(entry.path), rel + (entry.name,)
            try:
                info = path.stat()  # through links
            except OSError as exc:
                if not entry.is_symlink():
                    raise VisionlaunchError(f"cannot read the ImageFolder file {describe_os_error(exc)}") from None
                what = "a link loop" if exc.errno == errno.ELOOP else \
                    f"a dangling link: it points to {os.readlink(path)}, which does not exist"
                raise VisionlaunchError(f"{path} is {what}. Remove the link or restore what it points to; "
                                        "every file in an ImageFolder dataset must be readable.") from None
            if stat.S_ISDIR(info.st_mode):
                identity = (info.st_dev, info.st_ino)
                if identity in ancestors:
                    raise VisionlaunchError(
                        f"{path} is a link to {os.path.realpath(path)}, a folder that contains the link, so the "
                        "folder tree never ends. Remove the link (or replace it with a copy of the images it "
                        "should add).")
                if identity in walked:  # through links: its images would count twice (maybe in train and test)
                    raise VisionlaunchError(
                        f"{path} and {walked[identity]} are the same folder ({os.path.realpath(path)}), reached "
                        "through a link: its images would count twice, perhaps under two classes or in both "
                        "train/ and test/. Remove one of the links.")
                walked[identity] = path
                yield _Entry(parts, str(path), None)
                yield from visit(path, parts, ancestors | {identity})
            elif stat.S_ISREG(info.st_mode):
                yield _Entry(parts, str(path), path)
            else:
                raise VisionlaunchError(f"{path} is neither a file nor a folder (a FIFO, socket or device). Remove "
                                        "it from the dataset folder.")

    top = root.stat()
    walked: dict[tuple[int, int], Path] = {(top.st_dev, top.st_ino): root}
    yield from visit(root, (), frozenset(walked))


def _is_candidate_image(parts: tuple[str, ...]) -> bool:
    # An image the layout may use: under train/ or test/ at depth 0 or 1. Others are never read into memory.
    return parts[-1].lower().endswith(IMAGE_EXTENSIONS) and any(p in SPLITS for p in parts[:2])


def _archive_entries(path: Path, progress: bool):
    """An entry for every member of the tar archive `path` (the counterpart of _walk)."""
    try:
        # Stream mode: one forward pass over the (compressed) archive, each member read as it goes by.
        with tarfile.open(path, "r|*") as tar, progress_bar(desc=f"reading {path.name}", unit=" files",
                                                            disable=not progress, leave=False) as bar:
            for member in tar:
                parts = tuple(p for p in member.name.split("/") if p not in ("", "."))
                if not parts:
                    continue
                display = f"{path}:{member.name}"
                if member.isdir():
                    yield _Entry(parts, display, None)
                elif member.isfile():
                    data = tar.extractfile(member).read() if _is_candidate_image(parts) else b""
                    yield _Entry(parts, display, data)
                    bar.update()
                elif member.issym() or member.islnk():
                    if _is_candidate_image(parts):  # a stream cannot go back to a link's target: never skip it
                        raise VisionlaunchError(
                            f"{display} is a {'symbolic' if member.issym() else 'hard'} link (to "
                            f"{member.linkname}), not an image. Create the archive with the images themselves "
                            "(GNU tar: --dereference and --hard-dereference).")
    # TypeError/ValueError: what tarfile itself raises on some garbage headers (a Python bug, not ours).
    except (tarfile.TarError, EOFError, OSError, zlib.error, TypeError, ValueError) as exc:
        raise VisionlaunchError(
            f"{path} could not be read as a tar archive ({type(exc).__name__}: {exc}); it is probably truncated "
            "or damaged. Copy or create it again (e.g. `tar czf data.tar.gz train test`).") from exc


@dataclass
class _Image:
    split: str
    cls: str
    display: str
    payload: bytes | Path


def _collect(entries: list[_Entry], where: Path) -> tuple[list[_Image], dict[str, set[str]]]:
    # Top-level folders (a file at the top, like a README, says nothing about the layout).
    tops = {e.parts[0] for e in entries if len(e.parts) > 1 or e.payload is None}
    tops = {t for t in tops if not t.startswith(".") and t not in _IGNORED_TOP}
    if not tops & set(SPLITS) and len(tops) != 1:
        raise VisionlaunchError(
            f"{where}: expected folders train/ and test/ at the top (or inside a single top-level folder), found "
            f"{', '.join(sorted(tops)[:10]) or 'nothing'}. Lay the images out as train/<class>/<image> and "
            "test/<class>/<image>.")
    depth = 0 if tops & set(SPLITS) else 1  # 1: train/ and test/ sit inside one top-level folder
    images: list[_Image] = []
    class_dirs: dict[str, set[str]] = {}  # the class folders of each split found
    for e in entries:
        if depth and e.parts[0] not in tops:  # beside the top-level folder: a file, a hidden or ignored folder
            continue
        parts = e.parts[depth:]
        if not parts or parts[0] not in SPLITS or any(p.startswith(".") for p in parts):
            continue
        split = parts[0]
        classes = class_dirs.setdefault(split, set())
        if e.payload is None:  # a directory
            if len(parts) == 2:
                classes.add(parts[1])
            continue
        if not parts[-1].lower().endswith(IMAGE_EXTENSIONS):
            continue  # README, .txt notes and the like are not images
        if len(parts) == 2:
            raise VisionlaunchError(
                f"{e.display} lies directly in {split}/, outside any class folder. Move it into "
                f"{split}/<class>/ (the folder name is the class).")
        classes.add(parts[1])
        images.append(_Image(split, parts[1], e.display, e.payload))
    for split in SPLITS:
        if split not in class_dirs:
            raise VisionlaunchError(
                f"{where} has no {split}/ folder{' inside its top-level folder' if depth else ''}. An ImageFolder "
                "dataset needs both train/<class>/<image> and test/<class>/<image>.")
    return images, class_dirs


def _check_classes(images: list[_Image], class_dirs: dict[str, set[str]], where: Path) -> list[str]:
    counts = Counter((im.split, im.cls) for im in images)
    for split in SPLITS:
        empty = sorted(c for c in class_dirs[split] if counts[(split, c)] == 0)
        if empty:
            raise VisionlaunchError(
                f"{where}: class folder{'s' if len(empty) > 1 else ''} {', '.join(f'{split}/{c}/' for c in empty)} "
                f"hold{'' if len(empty) > 1 else 's'} no images (looked for {', '.join(IMAGE_EXTENSIONS)}). Add "
                "images or remove the empty folder.")
    train, test = sorted(class_dirs["train"]), sorted(class_dirs["test"])
    if not train and not test:
        raise VisionlaunchError(
            f"{where}: train/ and test/ hold no class folders, so there is nothing to learn from. Lay the images out "
            "as train/<class>/<image> and test/<class>/<image> (the folder name is the class).")
    if train != test:
        only_train = sorted(set(train) - set(test))
        only_test = sorted(set(test) - set(train))
        raise VisionlaunchError(
            f"{where}: train/ and test/ must hold the same class folders. Only in train/: "
            f"{', '.join(only_train) or 'none'}; only in test/: {', '.join(only_test) or 'none'}. Add or rename "
            "folders so both splits list the same classes.")
    return train


def _eight_bit(pil: Image.Image, gray: bool, display: str) -> np.ndarray:
    """(H, W) or (H, W, 3) uint8 pixels. 16-bit grayscale is scaled, not clipped (PIL's convert('L') saturates
    every value above 255); other wide modes (32-bit integers, floats) have no agreed range and are refused."""
    if pil.mode in WIDE_GRAY_MODES:
        wide = np.asarray(pil).astype(np.int64)
        if wide.size and (wide.min() < 0 or wide.max() > 65535):
            raise VisionlaunchError(
                f"{display} holds {pil.mode!r} pixels from {wide.min()} to {wide.max()}, outside the 16-bit range "
                "0..65535 this reader scales to 8 bits. Convert it to an 8-bit (or 16-bit) PNG.")
        return ((wide * 255 + 32767) // 65535).astype(np.uint8)
    if pil.mode == "F":
        raise VisionlaunchError(
            f"{display} holds floating-point pixels (mode 'F'), which have no fixed range to map to 8 bits. Convert "
            "it to an 8-bit (or 16-bit) image.")
    target = "L" if gray else "RGB"
    return np.asarray(pil if pil.mode == target else pil.convert(target))


def _scan_headers(images: list[_Image], progress: bool) -> tuple[tuple[int, int], bool]:
    """Open every image's header (no pixel decoding): their one size (width, height), which every image must share
    (the model takes one input shape), and whether all of them are single-channel."""
    first, gray = None, True
    for im in progress_bar(images, desc="checking images", unit=" img", disable=not progress, leave=False):
        try:
            with open_image(im.payload) as pil:
                size, mode = pil.size, pil.mode
        except BAD_IMAGE as exc:
            raise unreadable_image(im.display, exc) from exc
        if first is None:
            first = (size, im.display)
        elif size != first[0]:
            (w, h), ((ew, eh), name) = size, first
            raise VisionlaunchError(
                f"{im.display} is {w}x{h} pixels (width x height), but every image must have the same size and "
                f"{name} is {ew}x{eh}. Resize the dataset to one size (e.g. {ew}x{eh}) before training.")
        gray = gray and mode in GRAY_MODES + WIDE_GRAY_MODES
    return first[0], gray


def _decode(images: list[_Image], size: tuple[int, int], gray: bool, progress: bool, split: str) -> np.ndarray:
    """Decode every image to (N, C, H, W): C = 1 when all images (of both splits) are single-channel, else 3."""
    w, h = size
    out = np.empty((len(images), 1 if gray else 3, h, w), dtype=np.uint8)
    for i, im in enumerate(progress_bar(images, desc=f"decoding {split} images", unit=" img",
                                        disable=not progress)):
        try:
            with open_image(im.payload) as pil:
                pixels = _eight_bit(pil, gray, im.display)
        except BAD_IMAGE as exc:
            raise unreadable_image(im.display, exc) from exc
        out[i] = pixels.transpose(2, 0, 1) if pixels.ndim == 3 else pixels  # gray broadcasts over 1 or 3 channels
    return out


def read(path: Path, split: str, progress: bool = True, image_size: int | None = None,
         max_upscale: float = 4.0) -> ImageSet:
    entries = list(_archive_entries(path, progress) if path.is_file() else _walk(path))
    images, class_dirs = _collect(entries, path)
    classes = _check_classes(images, class_dirs, path)
    index = {c: i for i, c in enumerate(classes)}
    # Sorted by split, class, then name: the order never depends on the archive or the file system.
    images.sort(key=lambda im: (im.split != "train", index[im.cls], im.display))
    wanted = [im for im in images if im.split == split]
    source = f"ImageFolder {'archive' if path.is_file() else 'folder'} {path} ({split}/, {len(classes)} classes"
    if image_size:  # photos of any size, each decoded to one stored square
        pixels, note = decode_squares(wanted, image_size, max_upscale, progress=progress,
                                      desc=f"decoding {split} images")
        side = stored_size(image_size)
        source += f", mixed sizes stored as {side}x{side} RGB{'; ' + note if note else ''}"
    else:  # the headers of both splits first (the other split's first), so train and test always agree on shape
        size, gray = _scan_headers([im for im in images if im.split != split] + wanted, progress)
        pixels = _decode(wanted, size, gray, progress, split)
    labels = torch.tensor([index[im.cls] for im in wanted], dtype=torch.int64)
    return ImageSet(images=torch.from_numpy(pixels), labels=labels, classes=classes, name="imagefolder",
                    source=source + ")")
