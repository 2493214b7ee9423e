"""ImageFolder: `train/<class>/<image>` and `test/<class>/<image>` in a folder or an archive (tar in its compressions,
or zip). ImageNet's layout, `val/<class>/<image>` beside train/, is read too: val/ is the test split when there is no
test/. An optional class-name file gives the class folders display names (`class_names`).

The files are found by the one walker (entries.py) and decoded by the one decoder (decode.py) that `predict` uses
too. An archive is streamed member by member (no extraction to disk). Only the requested split is decoded; every
image of both splits is first opened just far enough to read its size and colour mode, so that train and test always
agree on shape (every image one size; grayscale only when every image of both splits is). Whatever the walker skips
inside train/ or test/ (a link loop, a FIFO, a folder that cannot be listed, an archive member that is a link or too
large; hidden names aside) is refused: the dataset would silently lack it.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from visionlaunch.datasets.decode import decode_image, image_header, with_channels
from visionlaunch.datasets.entries import Entry, is_archive, is_hidden, walk
from visionlaunch.datasets.imageset import DatasetNotFound, ImageSet
from visionlaunch.datasets.mixed_size import decode_squares, stored_size
from visionlaunch.errors import VisionlaunchError
from visionlaunch.progress import progress_bar

SPLITS = ("train", "test")
TEST_ALIAS = "val"  # the labelled evaluation split of ImageNet's layout: the test split when there is no test/
FOLDERS = SPLITS + (TEST_ALIAS,)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm")


def locate(root: Path, path: str | os.PathLike | None) -> Path:
    """The folder or archive named by `path` (absolute, or relative to `root`)."""
    if not path:
        raise VisionlaunchError(
            "imagefolder needs data.path: a folder or an archive (.tar, .tar.gz, .zip, ...) holding "
            "train/<class>/<image> and test/<class>/<image>, absolute or relative to the data root.")
    p = Path(path).expanduser()
    p = p if p.is_absolute() else root / p
    if not p.exists():
        raise DatasetNotFound(
            f"ImageFolder data not found at {p} (data.path={str(path)!r}, data root {root}). Give data.path as an "
            "absolute path or relative to the data root (data.root or $VISIONLAUNCH_DATA).")
    if not p.is_dir() and not p.is_file():  # a FIFO would block the reader, a device never end
        raise VisionlaunchError(
            f"ImageFolder data.path {p} is neither a folder nor a file (a FIFO, socket or device). Point data.path "
            "at a folder holding train/ and test/, or at an archive of them.")
    if p.is_file() and not is_archive(p):
        raise VisionlaunchError(
            f"ImageFolder data.path {p} is a file but not an archive (.tar, .tar.gz, .tgz, .tar.bz2, .tar.xz or "
            ".zip). Point data.path at a folder holding train/ and test/, or at such an archive.")
    return p


def scan(path: Path, progress: bool = False) -> list[Entry] | None:
    """The entries of a folder, walked once for every reader of the same run (`entries=` below); None for an
    archive, whose members are read as they are walked."""
    return None if path.is_file() else list(walk(path, wanted=_is_candidate_image, progress=progress))


def source_files(path: Path, entries: list[Entry] | None = None) -> list[Path]:
    """The files whose size and mtime fingerprint the dataset (for the cache). `entries`: the folder's `scan`."""
    if path.is_file():
        return [path]
    return [e.payload for e in (walk(path) if entries is None else entries) if e.kind == "file"]


def _is_candidate_image(parts: tuple[str, ...]) -> bool:
    # An image the layout may use: under train/ or test/ at depth 0 or 1. Others are never read into memory.
    return parts[-1].lower().endswith(IMAGE_EXTENSIONS) and any(p in FOLDERS for p in parts[:2])


@dataclass(slots=True)
class _Image:
    split: str
    cls: str
    display: str
    payload: bytes | str | Path


def _collect(entries: list[Entry], where: Path) -> tuple[list[_Image], dict[str, set[str]]]:
    # Top-level folders (a file at the top, like a README, says nothing about the layout); a skipped one counts, so
    # that an unreadable train/ is named as such, not as missing.
    tops = {e.parts[0] for e in entries if len(e.parts) > 1 or e.kind != "file"}
    tops = {t for t in tops if not is_hidden(t)}
    if not tops & set(FOLDERS) and len(tops) != 1:
        raise VisionlaunchError(
            f"{where}: expected folders train/ and test/ at the top (or inside a single top-level folder; val/ may "
            f"stand for test/), found {', '.join(sorted(tops)[:10]) or 'nothing'}. Lay the images out as "
            "train/<class>/<image> and test/<class>/<image>.")
    depth = 0 if tops & set(FOLDERS) else 1  # 1: train/ and test/ sit inside one top-level folder
    present = {e.parts[depth] for e in entries if len(e.parts) > depth and (not depth or e.parts[0] in tops)}
    test_folder = TEST_ALIAS if TEST_ALIAS in present and "test" not in present else "test"
    split_of = {"train": "train", test_folder: "test"}
    images: list[_Image] = []
    class_dirs: dict[str, set[str]] = {}  # the class folders of each split found
    for e in entries:
        if depth and e.parts[0] not in tops:  # beside the top-level folder: a file, a hidden or ignored folder
            continue
        parts = e.parts[depth:]
        if not parts or parts[0] not in split_of or any(is_hidden(p) for p in parts):
            continue
        if e.kind == "skipped":
            raise VisionlaunchError(
                f"{e.display} is {e.why}. Every file under train/ and test/ of an ImageFolder dataset is read, and "
                "the dataset would silently lack this one: fix it, or remove it from the dataset.")
        split = split_of[parts[0]]
        classes = class_dirs.setdefault(split, set())
        if e.kind == "folder":
            if len(parts) == 2:
                classes.add(parts[1])
            continue
        if not parts[-1].lower().endswith(IMAGE_EXTENSIONS):
            continue  # README, .txt notes and the like are not images
        if len(parts) == 2:
            unlabelled = " If test/ is an unlabelled test set (ImageNet's), move it away: val/ is then the test " \
                "split." if parts[0] == "test" and TEST_ALIAS in present else ""
            raise VisionlaunchError(
                f"{e.display} lies directly in {parts[0]}/, outside any class folder. Move it into "
                f"{parts[0]}/<class>/ (the folder name is the class).{unlabelled}")
        classes.add(parts[1])
        images.append(_Image(split, parts[1], e.display, e.payload))
    for split in SPLITS:
        if split not in class_dirs:
            raise VisionlaunchError(
                f"{where} has no {split}/ folder{' (nor val/)' if split == 'test' else ''}"
                f"{' inside its top-level folder' if depth else ''}. An ImageFolder dataset needs both "
                "train/<class>/<image> and test/<class>/<image> (or val/<class>/<image>).")
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


def _scan_headers(images: list[_Image], progress: bool) -> tuple[tuple[int, int], bool]:
    """Open every image's header (no pixel decoding): their one size (width, height), which every image must share
    (the model takes one input shape), and whether all of them are single-channel."""
    first, gray = None, True
    for im in progress_bar(images, desc="checking images", unit=" img", disable=not progress, leave=False):
        size, channels = image_header(im.payload, im.display)
        if first is None:
            first = (size, im.display)
        elif size != first[0]:
            (w, h), ((ew, eh), name) = size, first
            raise VisionlaunchError(
                f"{im.display} is {w}x{h} pixels (width x height), but every image must have the same size and "
                f"{name} is {ew}x{eh}. Resize the dataset to one size (e.g. {ew}x{eh}) before training.")
        gray = gray and channels == 1
    return first[0], gray


def _decode(images: list[_Image], size: tuple[int, int], gray: bool, progress: bool, split: str) -> np.ndarray:
    """Decode every image to (N, C, H, W): C = 1 when all images (of both splits) are single-channel, else 3."""
    w, h = size
    out = np.empty((len(images), 1 if gray else 3, h, w), dtype=np.uint8)
    for i, im in enumerate(progress_bar(images, desc=f"decoding {split} images", unit=" img",
                                        disable=not progress)):
        pixels = with_channels(decode_image(im.payload, im.display), 1 if gray else 3)
        if pixels.shape[:2] != (h, w):  # a header that does not tell the truth
            raise VisionlaunchError(f"{im.display} decodes to {pixels.shape[1]}x{pixels.shape[0]} pixels, but its "
                                    f"header says {w}x{h}: it is damaged. Remove or replace it.")
        out[i] = pixels.transpose(2, 0, 1)
    return out


def read(path: Path, split: str, progress: bool = True, image_size: int | None = None,
         max_upscale: float = 4.0, entries: list[Entry] | None = None) -> ImageSet:
    if entries is None:  # not scanned already
        entries = list(walk(path, wanted=_is_candidate_image, progress=progress))
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


def class_names(path: Path, classes: list[str]) -> list[str]:
    """Display names of the class folders `classes`, from the text file `path` (data.class_names): one class a
    line, its folder name, whitespace, then its name, as ImageNet's LOC_synset_mapping.txt (`n01440764 tench, Tinca
    tinca`); blank lines and lines starting with # are skipped, lines for other folders ignored. Every class folder
    must be named; a name that several folders share gets the folder name added, so that every name is unique."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise VisionlaunchError(
            f"data.class_names: cannot read {path} as UTF-8 text ({exc}). Give a text file of '<class folder> "
            "<name>' lines, absolute or relative to the data root.") from None
    found = {}
    for line in text.splitlines():
        fields = line.split(None, 1)  # the folder name, then the rest of the line
        if fields and not fields[0].startswith("#"):
            found[fields[0]] = fields[1].strip() if len(fields) > 1 else fields[0]
    missing = [c for c in classes if c not in found]
    if missing:
        raise VisionlaunchError(
            f"data.class_names: {path} names no class for the folder{'s' if len(missing) > 1 else ''} "
            f"{', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''} ({len(missing)} of {len(classes)}). "
            "Add a '<class folder> <name>' line for each, or remove data.class_names.")
    names = [found[c] for c in classes]
    shared = {n for n in names if names.count(n) > 1}
    return [f"{n} ({c})" if n in shared else n for n, c in zip(names, classes)]
