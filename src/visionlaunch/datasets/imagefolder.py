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
from array import array
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import chain
from pathlib import Path

import numpy as np
import torch

from visionlaunch.datasets.decode import decode_image, image_header, with_channels
from visionlaunch.datasets.entries import Entry, Member, is_archive, is_hidden, read_member, seekable, walk
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


def scan(path: Path, progress: bool = False) -> FolderScan | None:
    """A folder's walk (or a seekable archive's, its members located), kept for every reader of the same run
    (`scanned=` below); None for a compressed tar, whose members are read as they are walked."""
    if path.is_file() and not seekable(path):
        return None
    return FolderScan(path, progress, located=path.is_file())


def source_files(path: Path, scanned: FolderScan | None = None) -> Iterator[str | Path]:
    """The files whose size and mtime fingerprint the dataset (for the cache), in walk order. `scanned`: the
    folder's `scan`."""
    if path.is_file():
        return iter([path])
    scanned = FolderScan(path) if scanned is None else scanned
    return (scanned.display(k) for k in range(len(scanned)))


def _is_candidate_image(parts: tuple[str, ...]) -> bool:
    # An image the layout may use: under train/ or test/ at depth 0 or 1. Others are never read into memory.
    return parts[-1].lower().endswith(IMAGE_EXTENSIONS) and any(p in FOLDERS for p in parts[:2])


class FolderScan:
    """What one walk of a folder or an archive found, kept compact: a folder of a million files must not become a
    million Python objects (their memory would be the peak of a run that reads the data out of core). A file is
    its folder's number and its name's bytes, about 30 bytes; the folders themselves and the walker's other entries
    (folders, skipped entries) are kept as they are. An archive's members are kept as read (their bytes and names),
    or `located` (a seekable archive read out of core): where each lies in the archive, three numbers."""

    def __init__(self, path: Path, progress: bool = False, located: bool = False):
        self.path, self.archive = Path(path), Path(path).is_file()
        self.located = located and self.archive
        self.dirs: list[tuple[str, ...]] = []  # the parts of each folder that holds files
        self.dir_paths: list[str] = []  # how to name each (a folder's path; an archive's members keep their own)
        self.others: list[Entry] = []  # folders and skipped entries
        self.payloads: list[bytes] = []  # an archive's members, as read
        self.displays: list[str] = []  # an archive's member names, as `archive:member`
        self._at, self._size, self._method = array("q"), array("q"), bytearray()  # located members
        self._inline: dict[int, bytes] = {}  # located zip members of another method, read by the walk
        self._dir = array("i")  # per file: its folder's number
        self._image = bytearray()  # per file: 1 when its name is an image's
        self._names, self._ends = bytearray(), array("q", [0])
        numbers: dict[tuple[str, ...], int] = {}
        last, number = None, -1
        for e in walk(self.path, wanted=_is_candidate_image, progress=progress, located=self.located):
            if e.kind != "file":
                self.others.append(e)
                continue
            parent, name = e.parts[:-1], e.parts[-1]
            if parent != last:
                number = numbers.get(parent, -1)
                if number < 0:
                    number = numbers[parent] = len(self.dirs)
                    self.dirs.append(parent)
                    self.dir_paths.append("" if self.archive else os.path.dirname(e.display))
                last = parent
            self._dir.append(number)
            self._image.append(name.lower().endswith(IMAGE_EXTENSIONS))
            self._names += os.fsencode(name)
            self._ends.append(len(self._names))
            if self.located:  # a member not wanted (not an image of the layout) comes as b"": never read
                member = e.payload if isinstance(e.payload, Member) else Member(-1, len(e.payload))
                if e.payload and not isinstance(e.payload, Member):  # a zip method read_member cannot read
                    self._inline[len(self._at)] = e.payload
                self._at.append(member.offset)
                self._size.append(member.size)
                self._method.append(member.method)
            elif self.archive:
                self.payloads.append(e.payload)
                self.displays.append(e.display)

    def __len__(self) -> int:
        return len(self._dir)

    def name(self, k: int) -> str:
        return os.fsdecode(bytes(self._names[self._ends[k]:self._ends[k + 1]]))

    def display(self, k: int) -> str:
        """How file `k` is named; for a folder, its path."""
        if self.located:
            return f"{self.path}:{'/'.join(self.dirs[self._dir[k]] + (self.name(k),))}"
        return self.displays[k] if self.archive else os.path.join(self.dir_paths[self._dir[k]], self.name(k))

    def payload(self, k: int) -> bytes | str:
        """What the decoder reads for file `k`: an archive member's bytes (a located one read now), a file's path."""
        if self.located:
            return self._inline[k] if k in self._inline else read_member(self.path, self.member(k))
        return self.payloads[k] if self.archive else self.display(k)

    def member(self, k: int) -> Member:
        """Where a located member's bytes lie in the archive."""
        return Member(self._at[k], self._size[k], self._method[k])

    def image(self, k: int, split: str, cls: str) -> _Image:
        return _Image(split, cls, self.display(k), self.payload(k))

    def folder_of(self) -> np.ndarray:
        """Each file's folder number (int32)."""
        return np.frombuffer(self._dir, dtype=np.int32) if len(self._dir) else np.zeros(0, dtype=np.int32)

    def is_image(self) -> np.ndarray:
        """Whether each file's name is an image's (bool)."""
        return np.frombuffer(bytes(self._image), dtype=np.uint8).astype(bool)


@dataclass
class Layout:
    """The ImageFolder layout of a scan: the classes, and per split the files in reading order (class, then name)
    with their labels."""
    classes: list[str]
    files: dict[str, np.ndarray]  # split -> int64 file numbers of the scan
    labels: dict[str, np.ndarray]  # split -> int64 class indices

    def images(self, scanned: FolderScan, split: str):
        """The split's images as _Image, one at a time."""
        return (scanned.image(int(k), split, self.classes[int(c)])
                for k, c in zip(self.files[split], self.labels[split]))


@dataclass(slots=True)
class _Image:
    split: str
    cls: str
    display: str
    payload: bytes | str | Path


def layout(scanned: FolderScan, where: Path) -> Layout:
    """The ImageFolder layout checks over a scan, and each split's files sorted by class, then name: the order never
    depends on the archive or the file system. Folder by folder (a few thousand), not file by file, except for
    arrays over the files."""
    dirs, others = scanned.dirs, scanned.others
    # Top-level folders (a file at the top, like a README, says nothing about the layout); a skipped one counts, so
    # that an unreadable train/ is named as such, not as missing.
    tops = {e.parts[0] for e in others} | {d[0] for d in dirs if d}
    tops = {t for t in tops if not is_hidden(t)}
    if not tops & set(FOLDERS) and len(tops) != 1:
        raise VisionlaunchError(
            f"{where}: expected folders train/ and test/ at the top (or inside a single top-level folder; val/ may "
            f"stand for test/), found {', '.join(sorted(tops)[:10]) or 'nothing'}. Lay the images out as "
            "train/<class>/<image> and test/<class>/<image>.")
    depth = 0 if tops & set(FOLDERS) else 1  # 1: train/ and test/ sit inside one top-level folder
    inside = [(n, d) for n, d in enumerate(dirs) if not depth or (d and d[0] in tops)]
    present = {e.parts[depth] for e in others if len(e.parts) > depth and (not depth or e.parts[0] in tops)}
    present |= {d[depth] for _, d in inside if len(d) > depth}
    folder_of = scanned.folder_of()
    for n, d in inside:  # files beside the split folders count among the names found there
        if len(d) == depth:
            present |= {scanned.name(int(k)) for k in np.flatnonzero(folder_of == n)}
    test_folder = TEST_ALIAS if TEST_ALIAS in present and "test" not in present else "test"
    split_of = {"train": "train", test_folder: "test"}

    def in_split(parts: tuple[str, ...]) -> tuple[str, ...] | None:
        """`parts` from the split folder on, or None when outside train/ and test/ (or hidden)."""
        rel = parts[depth:]
        if not rel or rel[0] not in split_of or any(is_hidden(p) for p in rel):
            return None
        return rel

    class_dirs: dict[str, set[str]] = {}  # the class folders of each split found
    for e in others:
        rel = in_split(e.parts) if not depth or e.parts[0] in tops else None
        if rel is None:
            continue
        if e.kind == "skipped":
            raise VisionlaunchError(
                f"{e.display} is {e.why}. Every file under train/ and test/ of an ImageFolder dataset is read, and "
                "the dataset would silently lack this one: fix it, or remove it from the dataset.")
        class_dirs.setdefault(split_of[rel[0]], set())
        if len(rel) == 2:  # a class folder
            class_dirs[split_of[rel[0]]].add(rel[1])
    groups: dict[tuple[str, str], int] = {}  # (split, class) -> group number
    group_of_dir = np.full(len(dirs), -1, dtype=np.int64)  # -1 outside the splits, -2 a split folder itself
    for n, d in inside:
        rel = in_split(d)
        if rel is None:
            continue
        class_dirs.setdefault(split_of[rel[0]], set())
        group_of_dir[n] = -2 if len(rel) == 1 else groups.setdefault((split_of[rel[0]], rel[1]), len(groups))
    file_group = group_of_dir[folder_of] if len(folder_of) else np.zeros(0, dtype=np.int64)
    is_image = scanned.is_image()
    loose = np.flatnonzero((file_group == -2) & is_image)
    if len(loose):
        k = int(loose[0])
        folder_name = dirs[folder_of[k]][depth]
        unlabelled = " If test/ is an unlabelled test set (ImageNet's), move it away: val/ is then the test " \
            "split." if folder_name == "test" and TEST_ALIAS in present else ""
        raise VisionlaunchError(
            f"{scanned.display(k)} lies directly in {folder_name}/, outside any class folder. Move it into "
            f"{folder_name}/<class>/ (the folder name is the class).{unlabelled}")
    usable = (file_group >= 0) & is_image
    counts = np.bincount(file_group[usable], minlength=len(groups))
    for (split, cls), g in groups.items():
        if counts[g]:
            class_dirs[split].add(cls)
    for split in SPLITS:
        if split not in class_dirs:
            raise VisionlaunchError(
                f"{where} has no {split}/ folder{' (nor val/)' if split == 'test' else ''}"
                f"{' inside its top-level folder' if depth else ''}. An ImageFolder dataset needs both "
                "train/<class>/<image> and test/<class>/<image> (or val/<class>/<image>).")
    per_class = Counter()
    for (split, cls), g in groups.items():
        per_class[(split, cls)] += int(counts[g])
    classes = _check_classes(per_class, class_dirs, where)
    index = {c: i for i, c in enumerate(classes)}
    label_of = np.array([index[cls] for _, cls in groups], dtype=np.int64)
    train_group = np.array([split == "train" for split, _ in groups], dtype=bool)
    files, labels = {}, {}
    for split in SPLITS:
        ks = np.flatnonzero(usable)
        ks = ks[train_group[file_group[ks]] == (split == "train")]
        ls = label_of[file_group[ks]]
        by_class = np.argsort(ls, kind="stable")
        ks, ls = ks[by_class], ls[by_class]
        starts = np.flatnonzero(np.diff(ls)) + 1
        for a, b in zip([0, *starts], [*starts, len(ks)]):  # within a class, by name, one class at a time
            names = [scanned.display(int(k)) for k in ks[a:b]]
            ks[a:b] = ks[a:b][sorted(range(b - a), key=names.__getitem__)]
        files[split], labels[split] = ks.astype(np.int64), ls
    return Layout(classes, files, labels)


def _check_classes(counts: Counter, class_dirs: dict[str, set[str]], where: Path) -> list[str]:
    """The classes (sorted class folders), after checking that no class folder is empty and that both splits have the
    same. `counts`: images per (split, class)."""
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


def _scan_headers(images: Iterable[_Image], total: int, progress: bool) -> tuple[tuple[int, int], bool]:
    """Open the `total` images' headers (no pixel decoding): their one size (width, height), which every image must
    share (the model takes one input shape), and whether all of them are single-channel."""
    first, gray = None, True
    for im in progress_bar(images, total=total, desc="checking images", unit=" img", disable=not progress,
                           leave=False):
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
         max_upscale: float = 4.0, scanned: FolderScan | None = None) -> ImageSet:
    # A seekable archive is located, then only the split's members are read: the test split of a run that reads
    # the training split out of core must not hold every training image's bytes.
    scanned = FolderScan(path, progress, located=seekable(path)) if scanned is None else scanned
    found = layout(scanned, path)
    wanted = list(found.images(scanned, split))
    source = f"ImageFolder {'archive' if path.is_file() else 'folder'} {path} ({split}/, {len(found.classes)} classes"
    if image_size:  # photos of any size, each decoded to one stored square
        pixels, note = decode_squares(wanted, image_size, max_upscale, progress=progress,
                                      desc=f"decoding {split} images")
        side = stored_size(image_size)
        source += f", mixed sizes stored as {side}x{side} RGB{'; ' + note if note else ''}"
    else:  # the headers of both splits first (the other split's first), so train and test always agree on shape
        other = SPLITS[1 - SPLITS.index(split)]
        size, gray = _scan_headers(chain(found.images(scanned, other), wanted),
                                   len(found.files[other]) + len(wanted), progress)
        pixels = _decode(wanted, size, gray, progress, split)
    return ImageSet(images=torch.from_numpy(pixels), labels=torch.from_numpy(found.labels[split].copy()),
                    classes=found.classes, name="imagefolder", source=source + ")")


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
