"""CIFAR-10 and CIFAR-100 from the canonical python pickles (cifar-10-batches-py/, cifar-100-python/)."""

from __future__ import annotations

import codecs
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from visionlaunch.datasets.files import download_with_torchvision, file_digest
from visionlaunch.datasets.imageset import DatasetNotFound, ImageSet
from visionlaunch.errors import VisionlaunchError

try:  # numpy >= 2 moved the array reconstructor; the pickles name the old module
    from numpy._core.multiarray import _reconstruct
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct


@dataclass(frozen=True)
class CifarFormat:
    title: str
    folder: str
    train: tuple[tuple[str, str], ...]  # (file name, md5)
    test: tuple[tuple[str, str], ...]
    meta: tuple[str, str]
    label_key: str
    names_key: str
    num_classes: int
    torchvision_class: str
    coarse_key: str | None = None  # CIFAR-100's superclass labels and their names in meta
    coarse_names_key: str | None = None
    num_superclasses: int = 0


# The md5 sums are torchvision's (CIFAR10/CIFAR100.train_list, test_list, meta); a test checks they still agree.
FORMATS = {
    "cifar10": CifarFormat(
        title="CIFAR-10", folder="cifar-10-batches-py",
        train=(("data_batch_1", "c99cafc152244af753f735de768cd75f"),
               ("data_batch_2", "d4bba439e000b95fd0a9bffe97cbabec"),
               ("data_batch_3", "54ebc095f3ab1f0389bbae665268c751"),
               ("data_batch_4", "634d18415352ddfa80567beed471001a"),
               ("data_batch_5", "482c414d41f54cd18b22e5b47cb7c3cb")),
        test=(("test_batch", "40351d587109b95175f43aff81a1287e"),),
        meta=("batches.meta", "5ff9c542aee3614f3951f8cda6e48888"),
        label_key="labels", names_key="label_names", num_classes=10, torchvision_class="CIFAR10"),
    "cifar100": CifarFormat(
        title="CIFAR-100", folder="cifar-100-python",
        train=(("train", "16019d7e3df5f24257cddd939b257f8d"),),
        test=(("test", "f0ef6b0ae62326f3e7ffdfab6717acfc"),),
        meta=("meta", "7973b15100ade9c7d40fb424638fde48"),
        label_key="fine_labels", names_key="fine_label_names", num_classes=100, torchvision_class="CIFAR100",
        coarse_key="coarse_labels", coarse_names_key="coarse_label_names", num_superclasses=20),
}
ROWS = {"train": 50_000, "test": 10_000}  # both datasets; classes are balanced within each split


# The only globals a CIFAR pickle needs. Anything else means the file is not one, and refusing it also keeps
# unpickling from running arbitrary code.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,  # how Python 3 protocol-2 pickles write bytes
}


class _CifarUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"unexpected object {module}.{name} in a CIFAR pickle") from None


def _text(value) -> str:
    return value.decode("latin1") if isinstance(value, bytes) else str(value)


def unpickle(path: Path) -> dict[str, object]:
    """Load a CIFAR pickle written by Python 2 (str keys) or 3 (bytes or str keys), keys as str."""
    try:
        with open(path, "rb") as f:
            obj = _CifarUnpickler(f, encoding="latin1").load()
    except Exception as exc:
        raise VisionlaunchError(
            f"{path} could not be read as a CIFAR python pickle ({type(exc).__name__}: {exc}); it is probably "
            "truncated or damaged. Delete the folder and download or copy it again.") from exc
    if not isinstance(obj, dict):
        raise VisionlaunchError(f"{path} holds a {type(obj).__name__}, expected the dict of a CIFAR pickle. "
                                "Replace it with the canonical file.")
    return {_text(k): v for k, v in obj.items()}


def _split_files(fmt: CifarFormat, split: str) -> tuple[tuple[str, str], ...]:
    return (fmt.train if split == "train" else fmt.test) + (fmt.meta,)


def locate(name: str, root: Path, split: str, download: bool) -> list[Path]:
    """The batch files of `split` plus the meta file, downloading them first when asked and absent."""
    fmt = FORMATS[name]
    folder = root / fmt.folder

    def missing() -> list[str]:
        return [f for f, _ in _split_files(fmt, split) if not (folder / f).is_file()]

    if missing() and download:
        download_with_torchvision(fmt.torchvision_class, fmt.title, root, split, folder)
    if absent := missing():
        raise DatasetNotFound(
            f"{fmt.title} {split} files not found: {', '.join(absent)} missing from {folder}. Put the extracted "
            f"canonical python version ({fmt.folder}/ from the official tarball) under {root}, point data.root "
            "(or $VISIONLAUNCH_DATA) at the folder that holds it, or set data.download=true on a machine with "
            "network access.")
    return [folder / f for f, _ in _split_files(fmt, split)]


def _wrong_dataset_hint(found: dict, fmt: CifarFormat, key: str) -> str:
    """When a file holds the other CIFAR's keys, say so: a CIFAR-10 batch copied into cifar-100-python/ is a common
    mix-up, and "expected key 'fine_labels'" alone does not explain it."""
    for name, other in FORMATS.items():
        other_key = other.label_key if key == "labels" else other.names_key
        if other is not fmt and other_key in found:
            return (f" It has {other_key!r}: it is a {other.title} file, which belongs in {other.folder}/ and is "
                    f"read with data.name={name}.")
    return ""


def _class_names(path: Path, fmt: CifarFormat) -> tuple[list[str], list[str] | None]:
    """The class names, and the superclass names where the format has them (None when absent)."""
    meta = unpickle(path)
    names = meta.get(fmt.names_key)
    if not isinstance(names, (list, tuple)) or len(names) != fmt.num_classes:
        found = "no such key" if names is None else f"a {type(names).__name__}"
        if isinstance(names, (list, tuple)):
            found = len(names)
        raise VisionlaunchError(
            f"{path}: expected key {fmt.names_key!r} with {fmt.num_classes} class names, found {found} "
            f"(keys: {sorted(meta)}).{_wrong_dataset_hint(meta, fmt, 'names')} Replace it with the canonical "
            f"{fmt.title} meta file.")
    coarse = meta.get(fmt.coarse_names_key) if fmt.coarse_names_key else None
    if not isinstance(coarse, (list, tuple)) or len(coarse) != fmt.num_superclasses:
        coarse = None
    return [_text(n) for n in names], None if coarse is None else [_text(n) for n in coarse]


def _labels(batch: dict, key: str, n: int, path: Path, fmt: CifarFormat, limit: int) -> np.ndarray:
    labels = np.asarray(batch[key])
    if labels.ndim != 1 or len(labels) != n or not np.issubdtype(labels.dtype, np.integer):
        raise VisionlaunchError(
            f"{path}: {key!r} must be {n} integer labels (one per image), found "
            f"{labels.shape} of {labels.dtype}. Replace it with the canonical {fmt.title} file.")
    if len(labels) and (labels.min() < 0 or labels.max() >= limit):
        bad = int(np.argmax((labels < 0) | (labels >= limit)))
        raise VisionlaunchError(
            f"{path}: label {int(labels[bad])} at position {bad} of {key!r} is outside 0..{limit - 1}. "
            f"Replace it with the canonical {fmt.title} file.")
    return labels.astype(np.int64)


def _read_batch(path: Path, fmt: CifarFormat) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(data, labels, coarse labels or None): the structure every reading needs, checked with or without verify."""
    batch = unpickle(path)
    data, labels = batch.get("data"), batch.get(fmt.label_key)
    if data is None or labels is None:
        raise VisionlaunchError(
            f"{path}: expected keys 'data' and {fmt.label_key!r} of a {fmt.title} batch, found {sorted(batch)}."
            f"{_wrong_dataset_hint(batch, fmt, 'labels')} Replace it with the canonical {fmt.title} file.")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        desc = f"{data.dtype} array {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise VisionlaunchError(
            f"{path}: 'data' is a {desc}, expected a uint8 array of shape (N, 3072) (32x32 RGB, channel-major). "
            f"Replace it with the canonical {fmt.title} file.")
    labels = _labels(batch, fmt.label_key, len(data), path, fmt, fmt.num_classes)
    coarse = None
    if fmt.coarse_key and batch.get(fmt.coarse_key) is not None:
        coarse = _labels(batch, fmt.coarse_key, len(data), path, fmt, fmt.num_superclasses)
    return data, labels, coarse


def _superclass_of(labels: np.ndarray, coarse: np.ndarray, num_classes: int) -> np.ndarray | None:
    """Each class's superclass, when every class occurs and always with the same coarse label; else None."""
    first = np.full(num_classes, -1)
    first[labels[::-1]] = coarse[::-1]  # reversed: the first occurrence is written last and wins
    if (first < 0).any() or (first[labels] != coarse).any():
        return None
    return first


def _content_problem(fmt: CifarFormat, split: str, labels: np.ndarray, coarse: np.ndarray | None,
                     superclasses: list[str] | None) -> str | None:
    """What keeps these labels from being the official split's, or None. Keys, dtype, shape and label range were
    already checked while reading; this adds the row count, images per class and the superclass structure."""
    n = ROWS[split]
    if len(labels) != n:
        return f"it holds {len(labels):,} images, the official {split} split has {n:,}"
    per_class = n // fmt.num_classes
    counts = np.bincount(labels, minlength=fmt.num_classes)
    if (off := np.flatnonzero(counts != per_class)).size:
        return (f"{off.size} classes do not have {per_class} images each (class {off[0]} has {counts[off[0]]}); "
                f"the official {split} split is balanced")
    if not fmt.coarse_key:
        return None
    if coarse is None:
        return f"the {fmt.coarse_key!r} (superclass labels) are missing"
    if superclasses is None:
        return f"the meta file lacks {fmt.coarse_names_key!r} with {fmt.num_superclasses} superclass names"
    per_group = n // fmt.num_superclasses
    counts = np.bincount(coarse, minlength=fmt.num_superclasses)
    if (off := np.flatnonzero(counts != per_group)).size:
        return f"superclass {off[0]} has {counts[off[0]]} images, the official split has {per_group} in each"
    for c in range(fmt.num_classes):
        if len(groups := np.unique(coarse[labels == c])) > 1:
            return (f"class {c} appears with superclass labels {', '.join(map(str, groups[:4]))}; in "
                    f"{fmt.title} every class belongs to exactly one superclass")
    return None


def read(name: str, files: list[Path], split: str, verify: bool = True) -> ImageSet:
    """Read one split. With `verify`, a file whose md5 is the official one is read as is; any other file must pass
    a content check (ROWS images, balanced classes, consistent superclasses) and is then recorded in
    ImageSet.unofficial, so the caller can say so. Without `verify` only the structure needed to read is checked."""
    fmt = FORMATS[name]
    unofficial = []
    if verify:
        for path, (_, official) in zip(files, _split_files(fmt, split)):
            if (actual := file_digest(path)) != official:
                unofficial.append((str(path), actual, official))
    *batch_paths, meta_path = files
    classes, superclasses = _class_names(meta_path, fmt)
    data, labels, coarse = zip(*(_read_batch(p, fmt) for p in batch_paths))
    data, labels = np.concatenate(data), np.concatenate(labels)
    coarse = None if any(c is None for c in coarse) else np.concatenate(coarse)
    if unofficial and (problem := _content_problem(fmt, split, labels, coarse, superclasses)):
        listed = "; ".join(f"{p} has md5 {actual}, the official file {official}" for p, actual, official in unofficial)
        raise VisionlaunchError(
            f"{listed}. A file that is not the official one is accepted when its content is {fmt.title}'s, but here "
            f"{problem}. Replace the folder with the canonical {fmt.title} files (download them again, or set "
            "data.download=true after deleting it), or set data.verify=false to read files you built yourself in "
            "the same format.")
    groups = _superclass_of(labels, coarse, fmt.num_classes) if superclasses and coarse is not None else None
    return ImageSet(
        images=torch.from_numpy(data.reshape(-1, 3, 32, 32)),  # rows are R, G, B planes: already CHW
        labels=torch.from_numpy(labels),
        classes=classes,
        name=name,
        source=f"{fmt.title} python pickles {', '.join(p.name for p in files)} in {files[0].parent}",
        superclasses=superclasses if groups is not None else None,
        superclass_of=None if groups is None else groups.tolist(),
        unofficial=tuple(unofficial),
    )


def unofficial_note(sets: list[ImageSet]) -> str | None:
    """One NOTE line for the files of `sets` that passed the content check without being the official files."""
    entries = list(dict.fromkeys(u for s in sets for u in s.unofficial))  # meta is shared by both splits
    if not entries:
        return None
    title = FORMATS[sets[0].name].title  # only the CIFAR reader records unofficial files
    folder = Path(entries[0][0]).parent
    files = ", ".join(f"{Path(p).name} (md5 {actual})" for p, actual, _ in entries)
    official = ", ".join(official for _, _, official in entries)
    one = len(entries) == 1
    return (f"NOTE: {files} in {folder} {'is' if one else 'are'} not the official {title} file{'' if one else 's'} "
            f"(official md5 {official}); {'its' if one else 'their'} content passed the check (image count, "
            f"uint8 32x32 RGB, labels, images per class{', superclasses' if title == 'CIFAR-100' else ''}), "
            f"so {'it is' if one else 'they are'} read as {title}.")
